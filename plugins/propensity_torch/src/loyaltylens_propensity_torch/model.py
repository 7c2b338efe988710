"""Train, version, load and serve the propensity model.

Each trained model is a directory ``propensity_vN`` holding ``weights.safetensors`` (plain
tensors: a checkpoint can never run code) and ``card.json`` (metrics, features, scaler,
label definition, training data hash). It is written to a temporary directory and renamed
into place, so a crash mid-training never leaves a half-written version that later loads.
Models from before safetensors (``weights.pt``) still load, with ``weights_only=True``.

Scoring runs the numpy forward pass (``numpy_network``): a run never imports torch.
Training and TorchScript export import it when they start.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence, TYPE_CHECKING

import numpy as np

from loyaltylens_core.kernel.contracts import CustomerFeatures, PropensityScore, ProvidesTrainingExamples, TrainingSet
from loyaltylens_core.kernel.errors import StageError
from loyaltylens_core.sdk.quality import calibrate, plot_reliability
from loyaltylens_core.sdk.model_versions import ModelStore

from . import segments
from .features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, categorical, raw_numeric
from .numpy_network import NumpyTabularTransformer, sigmoid


if TYPE_CHECKING:
    from loyaltylens_core import StageContext

    from loyaltylens_propensity_torch import TorchPropensitySettings

ABSENT_TIER = ("tier may be left out of an endpoint request (clients of the reference endpoint send six "
               "features): the score is then the mean of the scores for the four tiers")
WEIGHTS = "weights.safetensors"
LEGACY_WEIGHTS = "weights.pt"

VERSION_PATTERN = re.compile(r"^propensity_v(\d+)$")
LABEL_DEFINITION = "redeemed any offer in the {horizon} days after as_of"


def split_of(customer_id: str) -> str:
    """Stable train/val/test assignment by customer (loyaltylens_core.sdk.quality)."""
    from loyaltylens_core.sdk.quality import customer_split

    return customer_split(customer_id)


class TorchPropensityModel:
    # Scoring is a numpy forward pass of a fraction of a millisecond: the service may call
    # it on its event loop.
    nonblocking = True

    def __init__(self, settings: TorchPropensitySettings, context: StageContext,
                 model_dir: Path | None = None, segment: str | None = None) -> None:
        self.settings = settings
        self.context = context
        self.model_dir = Path(model_dir or settings.model_dir or context.data_dir / "models")
        # A segment's own model ("tier=gold"), or None for the global one. The global model
        # routes each customer to the model of its segment (``segment_by``) when one serves.
        self.segment = segment
        self.segment_models: dict[str, TorchPropensityModel] = {}
        # Versions and the champion (`loyaltylens models / promote / rollback`).
        self.models = ModelStore(self.model_dir, VERSION_PATTERN, "propensity_v")
        self.network: NumpyTabularTransformer | None = None
        self.card: dict[str, Any] = {}
        self.version = ""
        self._memo: dict[tuple[Any, ...], float] = {}
        self._mean = np.zeros(len(NUMERIC_FEATURES))
        self._std = np.ones(len(NUMERIC_FEATURES))

    # --- versions -------------------------------------------------------------------

    def versions(self) -> list[str]:
        return self.models.versions()

    def _next_version(self) -> str:
        return self.models.next_version()

    def prepare(self) -> None:
        if self.network is not None:
            return
        if self.settings.version and self.segment is None:
            self.load(self.settings.version)
        elif serving := self.models.serving():  # the champion, else the newest
            self.load(serving)
        elif getattr(self.context, "read_only", False):
            raise StageError(
                f"no trained propensity model in {self.model_dir} and this process may not train one",
                "run `loyaltylens train` first",
            )
        else:
            self.train()
        if self.segment is None and self.settings.segment_by:
            self._route_to(segments.load_serving(self))

    def _route_to(self, models: dict[str, TorchPropensityModel]) -> None:
        self.segment_models = models
        self._memo = {}  # scores memoised before may be another model's

    def segment_stores(self) -> dict[str, ModelStore]:
        """Each trained segment's versions ("tier=gold" -> its ModelStore), for `loyaltylens
        models`, and `promote` / `rollback --segment` (capability SegmentedModels)."""
        return segments.stores(self)

    def serving_segment_models(self) -> dict[str, TorchPropensityModel]:
        """The segment models routed to now, by segment ("tier=gold")."""
        if self.network is None:
            self.prepare()
        return {model.segment or "": model for model in self.segment_models.values()}

    @property
    def served_version(self) -> str:
        """The version a score names: a segment model's carries its segment
        ("tier=gold/propensity_v2"), so reports never mix it up with the global v2."""
        return f"{self.segment}/{self.version}" if self.segment else self.version

    def load(self, version: str) -> None:
        directory = self.model_dir / version
        card_path = directory / "card.json"
        weights_path = directory / WEIGHTS
        if not weights_path.is_file():
            weights_path = directory / LEGACY_WEIGHTS
        if not card_path.is_file() or not weights_path.is_file():
            available = ", ".join(self.versions()) or "none"
            raise StageError(
                f"propensity model {version!r} not found in {self.model_dir}",
                f"available: {available}; run `loyaltylens train` to make one",
            )
        try:
            card = json.loads(card_path.read_text())
            hp = card["hyperparameters"]
            state = _read_state(weights_path)
            network = NumpyTabularTransformer(state, hp["heads"], hp["layers"])
            network.logits(np.zeros((1, len(NUMERIC_FEATURES))), np.zeros((1, len(CATEGORICAL_FEATURES)), dtype=np.int64))
        except pickle.UnpicklingError as exc:
            # torch wraps both cases in "Weights only load failed"; a pickled object is
            # the one that names a global it refused to import.
            if "unsupported global" in str(exc).lower():
                raise StageError(
                    f"refused to load {weights_path}: it holds pickled objects, not plain weights",
                    "only weights_only checkpoints are loaded; retrain with `loyaltylens train`",
                ) from None
            raise StageError(
                f"propensity model {weights_path} is corrupt (unreadable pickle)",
                "delete it and run `loyaltylens train`",
            ) from None
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is one clear line
            raise StageError(
                f"propensity model {weights_path} is corrupt ({type(exc).__name__})",
                "delete it and run `loyaltylens train`",
            ) from None
        self.network = network
        self.state = state
        self._memo: dict[tuple[Any, ...], float] = {}  # feature values -> score, for this model
        self.card = card
        self.version = card["model_version"]
        self._mean = np.array(card["scaler"]["mean"])
        self._std = np.array(card["scaler"]["std"])

    # --- training -------------------------------------------------------------------

    def _training_set(self) -> TrainingSet:
        store = self.context.component("feature_store")
        if not isinstance(store, ProvidesTrainingExamples):
            raise StageError(
                "the selected feature store cannot provide training examples",
                "train with a feature store that has training_examples(), e.g. duckdb",
            )
        return store.training_examples(self.settings.horizon_days)

    def train(self) -> dict[str, Any]:
        """Train a new version from the feature store's point-in-time examples; with
        ``segment_by``, one more per segment large enough (``min_segment_size``)."""
        data = self._training_set()
        card = self.fit(data)
        if self.settings.segment_by:
            card["segments"] = segments.train_all(self, data, card["model_version"])
            self._route_to(segments.load_serving(self))
            for row in card["segments"]:  # what scores each segment from now on
                scorer = self.segment_models.get(row["segment"].partition("=")[2])
                row["scored_by"] = scorer.served_version if scorer else "global"
        return card

    def fit(self, data: TrainingSet, extra_card: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train, evaluate and save one version on ``data`` (all examples, or a segment's)."""
        import torch

        from .network import TabularTransformer

        from loyaltylens_core.sdk import quality

        s = self.settings
        labels = np.array(data.labels, dtype=np.float32)
        idx = quality.evaluation_rows([f.customer_id for f in data.features], [f.as_of for f in data.features])
        if min(len(idx[name]) for name in ("train", "val", "test")) == 0:
            raise StageError(f"too few training examples ({len(labels)}) to split", "use more customers")
        raw = raw_numeric(data.features)
        self._mean = raw[idx["train"]].mean(axis=0)
        self._std = raw[idx["train"]].std(axis=0) + 1e-6
        numeric = torch.from_numpy(((raw - self._mean) / self._std).astype(np.float32))
        cats = torch.from_numpy(categorical(data.features))
        target = torch.from_numpy(labels)

        threads = torch.get_num_threads()
        torch.set_num_threads(max(threads, os.cpu_count() or 1))
        torch.manual_seed(self.context.seed)
        network = TabularTransformer(s.d_model, s.heads, s.layers)
        optimiser = torch.optim.AdamW(network.parameters(), lr=s.learning_rate, weight_decay=1e-4)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        generator = torch.Generator().manual_seed(self.context.seed)
        best_auc, best_state = -1.0, None
        history = []
        try:
            title = f"Training propensity model ({self.segment})" if self.segment else "Training propensity model"
            with self.context.progress.task(title, total=s.epochs) as advance:
                for epoch in range(s.epochs):
                    network.train()
                    order = idx["train"][torch.randperm(len(idx["train"]), generator=generator).numpy()]
                    total = 0.0
                    for start in range(0, len(order), s.batch_size):
                        batch = order[start : start + s.batch_size]
                        optimiser.zero_grad()
                        loss = loss_fn(network(numeric[batch], cats[batch]), target[batch])
                        loss.backward()
                        optimiser.step()
                        total += float(loss.detach()) * len(batch)
                    val_auc = quality.auc(labels[idx["val"]],
                                          self._raw_scores(network, numeric[idx["val"]], cats[idx["val"]]))
                    history.append({"epoch": epoch + 1, "train_loss": total / len(order), "val_auc": val_auc})
                    if val_auc > best_auc:
                        best_auc = val_auc
                        best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
                    advance(1)
        finally:
            torch.set_num_threads(threads)
        assert best_state is not None
        network.load_state_dict(best_state)
        # Calibrated on the validation customers' earlier snapshots; judged on the rest.
        evaluation = quality.evaluate_model(data, self._raw_scores(network, numeric, cats), idx, s.threshold,
                                            seed=self.context.seed)
        version = self._next_version()
        card = {
            "model_version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "architecture": "tabular-transformer",
            "numeric_features": list(NUMERIC_FEATURES),
            "categorical_features": {k: list(v) for k, v in CATEGORICAL_FEATURES.items()},
            "feature_version": data.features[0].feature_version,
            "label": LABEL_DEFINITION.format(horizon=data.horizon_days),
            "horizon_days": data.horizon_days,
            "training_data_hash": data.data_hash,
            **evaluation,
            "history": history,
            "threshold": s.threshold,
            "hyperparameters": {
                "d_model": s.d_model, "heads": s.heads, "layers": s.layers, "epochs": s.epochs,
                "batch_size": s.batch_size, "learning_rate": s.learning_rate, "seed": self.context.seed,
            },
            "scaler": {"mean": self._mean.tolist(), "std": self._std.tolist()},
            "weights_format": "safetensors (the torch state dict's tensors)",
            "serving": {"absent_tier": ABSENT_TIER},
            "torch_version": torch.__version__,
            **({"segment": self.segment} if self.segment else {}),
            **(extra_card or {}),
        }
        self._save(version, network, card)
        role = self.models.trained(version)  # the first version is the champion; later ones challengers
        if role == "champion" or self.network is None:  # a challenger does not replace what serves here
            self.load(version)
        return {**card, "role": role}

    @staticmethod
    def _raw_scores(network: Any, numeric: Any, cats: Any) -> np.ndarray:
        import torch

        network.eval()
        with torch.inference_mode():
            out: np.ndarray = torch.sigmoid(network(numeric, cats)).numpy().astype(np.float64)
        return out

    def _save(self, version: str, network: Any, card: dict[str, Any]) -> None:
        from safetensors.numpy import save_file

        self.model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.model_dir))
        try:
            save_file({k: v.detach().cpu().numpy() for k, v in network.state_dict().items()}, str(staging / WEIGHTS))
            (staging / "card.json").write_text(json.dumps(card, indent=2))
            plot_reliability(card, staging / "reliability.png")
            os.replace(staging, self.model_dir / version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --- serving --------------------------------------------------------------------

    def _scores(self, features: Sequence[CustomerFeatures]) -> np.ndarray:
        """Scores by the model of each customer's segment (this one when none serves)."""
        if self.network is None:
            self.prepare()
        if not self.segment_models:
            return self.own_scores(features)
        return segments.routed_scores(self, features)

    def scorer_of(self, features: CustomerFeatures) -> TorchPropensityModel:
        """The model that scores this customer: its segment's, else this one."""
        if not self.segment_models:
            return self
        return self.segment_models.get(getattr(features, self.settings.segment_by or ""), self)

    def own_scores(self, features: Sequence[CustomerFeatures]) -> np.ndarray:
        """This model's scores. Always the numpy forward pass, batches included: torch was
        faster on the network alone (60k vs 40k rows/s) but its OpenMP threads then fought
        numpy's BLAS threads for the 2 cores and a whole batch ran 20% slower (measured)."""
        if self.network is None:
            self.prepare()
        assert self.network is not None
        numeric = (raw_numeric(features) - self._mean) / self._std
        raw = sigmoid(self.network.logits(numeric, categorical(features)).astype(np.float64))
        return calibrate(raw, self.card.get("calibration"))

    @staticmethod
    def _memo_key(f: CustomerFeatures) -> tuple[Any, ...]:
        return (f.recency_days, f.frequency_30d, f.monetary_90d, f.offer_redemption_rate,
                f.engagement_score, f.channel_preference, f.tier)

    def _remember(self, keys: Sequence[tuple[Any, ...]], scores: Sequence[float]) -> None:
        limit = self.settings.score_cache_size
        if not limit:
            return
        memo = self._memo
        for key, score in zip(keys, scores):
            memo[key] = score
        while len(memo) > limit:  # oldest first: dicts keep insertion order
            memo.pop(next(iter(memo)))

    def predict(self, features: CustomerFeatures) -> PropensityScore:
        """One customer's score. Scores are memoised by the exact feature values (a score
        depends on nothing else for a loaded model), so a customer whose features were
        scored before, here or in a predict_many, costs a dict lookup."""
        key = self._memo_key(features)
        score = self._memo.get(key)
        if score is None:
            score = float(self._scores([features])[0])
            self._remember([key], [score])
        scorer = self.scorer_of(features)
        return PropensityScore(
            customer_id=features.customer_id,
            score=score,
            label=int(score >= self.settings.threshold),
            model_version=scorer.served_version,
            segment=scorer.segment,
        )

    def predict_many(self, features: Sequence[CustomerFeatures], chunk: int = 8192) -> list[PropensityScore]:
        out: list[PropensityScore] = []
        threshold = self.settings.threshold
        for start in range(0, len(features), chunk):
            part = features[start : start + chunk]
            scores = self._scores(part).tolist()
            if len(self._memo) < self.settings.score_cache_size:
                self._remember([self._memo_key(f) for f in part], scores)
            if not self.segment_models:
                for f, score in zip(part, scores):
                    out.append(PropensityScore(
                        customer_id=f.customer_id, score=score, label=int(score >= threshold),
                        model_version=self.version,
                    ))
                continue
            for f, score in zip(part, scores):
                scorer = self.scorer_of(f)
                out.append(PropensityScore(
                    customer_id=f.customer_id, score=score, label=int(score >= threshold),
                    model_version=scorer.served_version, segment=scorer.segment,
                ))
        return out

    # --- export (for deploy targets) ------------------------------------------------

    def torch_network(self) -> Any:
        """The loaded weights as the torch module (for export and for checking the numpy
        forward pass against it)."""
        import torch

        from .network import TabularTransformer

        if self.network is None:
            self.prepare()
        hp = self.card["hyperparameters"]
        network = TabularTransformer(hp["d_model"], hp["heads"], hp["layers"])
        network.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state.items()})
        return network.eval()

    def export(self, out_dir: Path) -> dict[str, Any]:
        """Write ``model.pt`` (TorchScript: raw features in, probability out) and
        ``spec.json`` (feature order, category maps, version) into ``out_dir``.

        TorchScript because the SageMaker PyTorch container loads it with
        ``torch.jit.load``; ``torch.jit`` is deprecated in torch 2.13 but still works.
        """
        if self.network is None:
            self.prepare()
        import warnings

        import torch

        from .network import ServingModule

        serving = ServingModule(self.torch_network(), self._mean.tolist(), self._std.tolist(),
                                self.card.get("calibration")).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(serving)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        scripted.save(str(out_dir / "model.pt"))
        spec = {
            "model_version": self.served_version,
            **({"segment": self.segment} if self.segment else {}),
            "numeric_features": list(NUMERIC_FEATURES),
            "categorical_features": {k: list(v) for k, v in CATEGORICAL_FEATURES.items()},
            "threshold": self.settings.threshold,
            "format": "torchscript",
            "absent_tier": ABSENT_TIER,
        }
        (out_dir / "spec.json").write_text(json.dumps(spec, indent=2))
        return spec


def _read_state(path: Path) -> dict[str, np.ndarray]:
    """Plain arrays from a checkpoint: safetensors without torch, or a legacy torch state
    dict loaded with ``weights_only=True`` (a pickled object is refused, never run)."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("not a state dict")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
