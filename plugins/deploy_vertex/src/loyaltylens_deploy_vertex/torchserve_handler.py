"""TorchServe handler for a LoyaltyLens propensity model (packed into model.mar as handler.py).

Vertex AI's prebuilt PyTorch containers serve model.mar with TorchServe. The request is
``{"instances": [feature objects]}`` and the answer ``{"predictions": [...]}``. TorchServe
hands the handler either the raw request (``[{"body": {...}}]``) or, with its JSON
envelope, the instances themselves; both are accepted. Scoring is the same
``inference.py`` the SageMaker archive runs, shipped beside this file.
"""

import json
import sys

_model = None
_inference = None


def _initialise(context):
    global _model, _inference
    model_dir = context.system_properties.get("model_dir")
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)
    import inference

    _inference = inference
    _model = inference.model_fn(model_dir)


def _bad_request(message):
    try:
        from ts.utils.util import PredictionException

        return PredictionException(message, 400)
    except ImportError:
        return ValueError(message)


def _score(instances):
    try:
        reply = _inference.predict_fn({"instances": instances, "single": False}, _model)
    except _inference.BadRequest as exc:
        raise _bad_request(str(exc))
    return reply["predictions"]


def handle(data, context):
    if _model is None:
        _initialise(context)
    if data is None:  # TorchServe's initialisation call
        return None
    requests = [row for row in data if isinstance(row, dict) and ("body" in row or "data" in row)]
    if not requests:  # JSON envelope: these are the instances
        return _score(list(data))
    out = []
    for row in data:
        body = row.get("body") if row.get("body") is not None else row.get("data")
        if isinstance(body, (bytes, bytearray)):
            body = body.decode("utf-8")
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError:
                raise _bad_request("request body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or not body["instances"]:
            raise _bad_request("request must be {\"instances\": [feature objects]}")
        out.append({"predictions": _score(body["instances"])})
    return out
