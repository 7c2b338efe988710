"""SageMaker inference script for a LoyaltyLens propensity model (code/inference.py).

Runs inside the SageMaker PyTorch serving container (and in `deploy_local`). The archive
holds model.pt (TorchScript: raw numeric features + category indices in, probability out)
and spec.json (feature order, category maps, model version).

Request: a JSON object of CustomerFeatures fields, or {"instances": [object, ...]}.
Response: {"propensity_score": float, "model_version": str} for one object, or
{"predictions": [...]} of those for "instances".
"""

import json
import os

import torch

try:  # the container's error type, so the toolkit reports load failures as it should
    from sagemaker_pytorch_serving_container.default_pytorch_inference_handler import ModelLoadError
except ImportError:  # deploy_local, or any server without the toolkit

    class ModelLoadError(Exception):
        pass


try:  # in the container, the toolkit turns this error type into the HTTP status it carries
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:

    class _ToolkitError(Exception):
        def __init__(self, status_code, message, phrase):
            super().__init__(message)
            self.status_code, self.message, self.phrase = status_code, message, phrase


class BadRequest(_ToolkitError, ValueError):
    """A request the model cannot score; servers answer it with 400."""

    def __init__(self, message):
        super().__init__(400, message, "Bad Request")

    def __str__(self):
        return self.message


def model_fn(model_dir):
    path = os.path.join(model_dir, "model.pt")
    try:
        model = torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            "Failed to load {}: it must be a TorchScript module, not a state dict".format(path)
        ) from exc
    model.eval()
    with open(os.path.join(model_dir, "spec.json")) as fh:
        spec = json.load(fh)
    return {"model": model, "spec": spec}


def _row(instance, spec):
    if not isinstance(instance, dict):
        raise BadRequest("each instance must be a JSON object of customer features")
    numeric = []
    for name in spec["numeric_features"]:
        value = instance.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest("feature {!r} must be a number".format(name))
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")) or value < 0:
            raise BadRequest("feature {!r} must be a finite number >= 0".format(name))
        numeric.append(value)
    categorical = []
    for name, values in spec["categorical_features"].items():
        value = instance.get(name)
        if value not in values:
            raise BadRequest("feature {!r} must be one of {}".format(name, ", ".join(values)))
        categorical.append(values.index(value))
    return numeric, categorical


def input_fn(request_body, request_content_type):
    if request_content_type.split(";")[0].strip() != "application/json":
        raise BadRequest("content type must be application/json")
    if isinstance(request_body, (bytes, bytearray)):
        request_body = request_body.decode("utf-8")
    try:
        payload = json.loads(request_body)
    except ValueError:
        raise BadRequest("request body is not valid JSON")
    if isinstance(payload, dict) and "instances" in payload:
        instances, single = payload["instances"], False
        if not isinstance(instances, list) or not instances:
            raise BadRequest("'instances' must be a non-empty list")
    else:
        instances, single = [payload], True
    return {"instances": instances, "single": single}


def predict_fn(input_data, model):
    spec = model["spec"]
    rows = [_row(instance, spec) for instance in input_data["instances"]]
    numeric = torch.tensor([r[0] for r in rows], dtype=torch.float32)
    categorical = torch.tensor([r[1] for r in rows], dtype=torch.long)
    with torch.no_grad():
        scores = model["model"](numeric, categorical).reshape(-1).tolist()
    predictions = [
        {"propensity_score": float(s), "model_version": spec["model_version"]} for s in scores
    ]
    return predictions[0] if input_data["single"] else {"predictions": predictions}


def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
