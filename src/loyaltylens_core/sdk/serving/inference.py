"""SageMaker inference script for a LoyaltyLens propensity model (code/inference.py).

Runs inside the SageMaker PyTorch serving container (and in `deploy_local`). The archive
holds model.pt (TorchScript: raw numeric features + category indices in, probability out)
and spec.json (feature order, category maps, model version).

Request: a JSON object of CustomerFeatures fields, or {"instances": [object, ...]}, or a
bare JSON list of objects (answered like "instances").
Response: {"propensity_score": float, "model_version": str} for one object, or
{"predictions": [...]} of those for "instances" or a list.

``tier`` may be left out, as clients written for the reference endpoint (six features,
no tier) do: the score is then the mean of the scores for every tier, i.e. the tier is
treated as unknown rather than guessed. Every other feature is required.

torch is imported inside the functions that need it, so ``loyaltylens serve`` can reuse
the request parsing below without importing torch.
"""

from __future__ import annotations  # annotations stay strings: the container may run Python 3.8

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

Spec = Dict[str, Any]
Parsed = Tuple[List[float], Dict[str, Optional[int]]]

try:  # the container's error type, so the toolkit reports load failures as it should
    from sagemaker_pytorch_serving_container.default_pytorch_inference_handler import ModelLoadError
except ImportError:  # deploy_local, or any server without the toolkit

    class ModelLoadError(Exception):  # type: ignore[no-redef]
        pass


try:  # in the container, the toolkit turns this error type into the HTTP status it carries
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:

    class _ToolkitError(Exception):  # type: ignore[no-redef]
        def __init__(self, status_code: int, message: str, phrase: str) -> None:
            super().__init__(message)
            self.status_code, self.message, self.phrase = status_code, message, phrase


class BadRequest(_ToolkitError, ValueError):  # type: ignore[misc]  # the toolkit's class is untyped
    """A request the model cannot score; servers answer it with 400."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message, "Bad Request")

    def __str__(self) -> str:
        return str(self.message)


OPTIONAL_CATEGORICAL = ("tier",)
# CustomerFeatures fields a client may send with the features (a row straight from the
# feature store): accepted and ignored. Any other key is a mistake worth a 400.
PASSED_OVER = ("customer_id", "as_of", "feature_version")


def model_fn(model_dir: str) -> Dict[str, Any]:
    import torch

    path = os.path.join(model_dir, "model.pt")
    try:
        model = torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call]
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            "Failed to load {}: it must be a TorchScript module, not a state dict".format(path)
        ) from exc
    model.eval()
    with open(os.path.join(model_dir, "spec.json")) as fh:
        spec = json.load(fh)
    return {"model": model, "spec": spec}


def parse_instance(instance: Any, spec: Spec) -> Parsed:
    """One request row -> (numeric values, {categorical feature: index or None if left out})."""
    if not isinstance(instance, dict):
        raise BadRequest("each instance must be a JSON object of customer features")
    known = set(spec["numeric_features"]) | set(spec["categorical_features"]) | set(PASSED_OVER)
    unknown = sorted(str(k) for k in instance if k not in known)
    if unknown:
        raise BadRequest("unknown feature {!r}; the features are {}".format(
            unknown[0], ", ".join(list(spec["numeric_features"]) + list(spec["categorical_features"]))))
    numeric = []
    for name in spec["numeric_features"]:
        if name not in instance:
            raise BadRequest("feature {!r} is missing".format(name))
        value = instance[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest("feature {!r} must be a number".format(name))
        try:
            value = float(value)
        except OverflowError:  # an integer with hundreds of digits
            raise BadRequest("feature {!r} is too large for a number".format(name))
        if value != value or value in (float("inf"), float("-inf")) or value < 0:
            raise BadRequest("feature {!r} must be a finite number >= 0".format(name))
        numeric.append(value)
    categorical: Dict[str, Optional[int]] = {}
    for name, values in spec["categorical_features"].items():
        if name not in instance or instance[name] is None:
            if name in OPTIONAL_CATEGORICAL:
                categorical[name] = None
                continue
            raise BadRequest("feature {!r} is missing".format(name))
        value = instance[name]
        if value not in values:
            raise BadRequest("feature {!r} must be one of {}".format(name, ", ".join(values)))
        categorical[name] = values.index(value)
    return numeric, categorical


def expand_rows(parsed: Sequence[Parsed], spec: Spec) -> Tuple[List[List[float]], List[List[int]], List[int]]:
    """Rows for the model: an instance whose tier was left out becomes one row per tier.
    Returns (numeric rows, categorical rows, owner of each row)."""
    names = list(spec["categorical_features"])
    numeric_rows: List[List[float]] = []
    categorical_rows: List[List[int]] = []
    owners: List[int] = []
    for owner, (numeric, categorical) in enumerate(parsed):
        choices: List[List[int]] = []
        for n in names:
            index = categorical[n]
            choices.append(list(range(len(spec["categorical_features"][n]))) if index is None else [index])
        combos: List[List[int]] = [[]]
        for options in choices:
            combos = [c + [o] for c in combos for o in options]
        for combo in combos:
            numeric_rows.append(numeric)
            categorical_rows.append(combo)
            owners.append(owner)
    return numeric_rows, categorical_rows, owners


def mean_by_owner(scores: Sequence[float], owners: Sequence[int], count: int) -> List[float]:
    totals, counts = [0.0] * count, [0] * count
    for score, owner in zip(scores, owners):
        totals[owner] += float(score)
        counts[owner] += 1
    return [t / c for t, c in zip(totals, counts)]


def input_fn(request_body: Any, request_content_type: str) -> Dict[str, Any]:
    if request_content_type.split(";")[0].strip() != "application/json":
        raise BadRequest("content type must be application/json")
    if isinstance(request_body, (bytes, bytearray)):
        try:
            request_body = request_body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("request body is not UTF-8 text")
    try:
        payload = json.loads(request_body)
    except ValueError:
        raise BadRequest("request body is not valid JSON")
    except RecursionError:  # arrays or objects nested thousands deep
        raise BadRequest("request body is nested too deeply")
    if isinstance(payload, dict) and "instances" in payload:
        instances, single = payload["instances"], False
        if not isinstance(instances, list) or not instances:
            raise BadRequest("'instances' must be a non-empty list")
    elif isinstance(payload, list):
        if not payload:
            raise BadRequest("the list of rows is empty; send {\"instances\": [...]} with at least one row")
        instances, single = payload, False
    elif isinstance(payload, dict):
        instances, single = [payload], True
    else:
        raise BadRequest("the body must be a JSON object of features or {\"instances\": [...]}")
    return {"instances": instances, "single": single}


def predict_fn(input_data: Dict[str, Any], model: Dict[str, Any]) -> Any:
    import torch

    spec = model["spec"]
    parsed = [parse_instance(instance, spec) for instance in input_data["instances"]]
    numeric_rows, categorical_rows, owners = expand_rows(parsed, spec)
    numeric = torch.tensor(numeric_rows, dtype=torch.float32)
    categorical = torch.tensor(categorical_rows, dtype=torch.long)
    with torch.no_grad():
        raw = model["model"](numeric, categorical).reshape(-1).tolist()
    scores = mean_by_owner(raw, owners, len(parsed))
    predictions = [
        {"propensity_score": float(s), "model_version": spec["model_version"]} for s in scores
    ]
    return predictions[0] if input_data["single"] else {"predictions": predictions}


def output_fn(prediction: Any, accept: str) -> Tuple[str, str]:
    return json.dumps(prediction), "application/json"
