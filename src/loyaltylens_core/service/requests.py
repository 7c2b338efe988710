"""What clients send the service: the request bodies, their OpenAPI schemas, and the
parsing that turns a client's mistake into a 400 naming the field (never a 500).

The schemas here are what ``/openapi.json`` publishes, and the parsers accept exactly
what they describe: the test suite runs schemathesis against the real server to keep
the two in step.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator

from loyaltylens_core.kernel.contracts import (
    CATEGORICAL_FEATURES, CUSTOMER_ID_PATTERN, NUMERIC_FEATURES, CustomerFeatures,
)
from loyaltylens_core.kernel.errors import UsageError

SCORE_SPEC: dict[str, Any] = {
    "numeric_features": list(NUMERIC_FEATURES),
    "categorical_features": {name: list(values) for name, values in CATEGORICAL_FEATURES.items()},
}
# What a row of CustomerFeatures carries besides the model's inputs: a client may send a
# whole contract row, so these are accepted (as strings) and ignored.
IGNORED_SCORE_FIELDS = ("customer_id", "as_of", "feature_version")


def _iso_string_only(kind: type, parse: Callable[[str], Any], fits: Callable[[str], bool], hint: str) -> Any:
    """A validator taking what the schema's ``format`` says: a ``kind`` or an ISO string
    that ``fits``. pydantic alone would take ``0``, ``-1088653`` or ``"1700000000"`` as a
    Unix time."""

    def check(value: Any) -> Any:
        if value is None or isinstance(value, kind):
            return value
        if not isinstance(value, str) or not fits(value):
            raise ValueError(hint)
        try:
            return parse(value)
        except ValueError:
            raise ValueError(hint) from None

    return BeforeValidator(check)


# ``format: date``: YYYY-MM-DD only.
IsoDate = Annotated[dt.date, _iso_string_only(dt.date, dt.date.fromisoformat, lambda text: len(text) == 10,
                                              "a date is YYYY-MM-DD, e.g. 2026-06-29")]
# ``format: date-time``: a date alone is not one.
IsoTime = Annotated[dt.datetime, _iso_string_only(dt.datetime, dt.datetime.fromisoformat, lambda text: len(text) > 10,
                                                  "a time is ISO 8601, e.g. 2026-06-29T14:05:00Z")]
CustomerIdParam = {"pattern": CUSTOMER_ID_PATTERN, "maxLength": 64}


class ErrorBody(BaseModel):
    error: str = Field(examples=["customer 'C999999' not found"])
    hint: str | None = Field(None, examples=["the feature store holds 5000 customers (demo ids C001 to C5000)"])


class OffersRequest(BaseModel):
    customer_ids: list[str] = Field(min_length=1, examples=[["C001", "C002", "nobody"]])
    as_of: IsoDate | None = Field(None, description="Point-in-time features as of this date (default: latest)")
    placement: str | None = Field(None, description="The placement to decide for (default: the configured one)")


def _in_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise ValueError("is outside the years 1-9999 once converted to UTC") from None


class OutcomeIn(BaseModel):
    """One outcome of an offer the service handed out (its ``run_id`` is the impression id)."""

    model_config = {"extra": "forbid"}
    impression_id: str = Field(min_length=1, max_length=128, examples=["d51f5970ab39439caf6e20fb311d48f2"])
    event: Literal["viewed", "clicked", "redeemed", "dismissed"]
    rating: int | None = Field(None, ge=1, le=5)
    time: IsoTime | None = Field(None, description="When it happened (default: now); no offset means UTC")

    @field_validator("time")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        return _in_utc(value)


class FeedbackRequest(BaseModel):
    model_config = {"extra": "forbid"}
    outcomes: list[OutcomeIn] = Field(min_length=1)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def load_json(body: bytes) -> Any:
    """The body as JSON, or a UsageError saying why not (not UTF-8, not JSON, nested
    so deep that parsing it would exhaust the stack)."""
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError("body is not UTF-8 text", "send JSON encoded as UTF-8") from None
    except RecursionError:
        raise UsageError("body is nested too deeply", "send a flat JSON object") from None
    except ValueError:
        raise UsageError("body is not JSON", "send a JSON object (content-type: application/json)") from None


def parse_feedback(body: bytes) -> FeedbackRequest:
    """``{"outcomes": [...]}`` or one outcome object."""
    raw = load_json(body or b"null")
    try:
        return FeedbackRequest.model_validate(
            raw if isinstance(raw, dict) and "outcomes" in raw else {"outcomes": [raw]})
    except ValidationError as exc:
        raise UsageError(_first_error(exc), "see POST /v1/feedback in /docs") from None


def outcome_table(outcomes: list[OutcomeIn]) -> Any:
    import pyarrow as pa

    from loyaltylens_core.kernel.feedback import outcome_schema

    now = dt.datetime.now(dt.timezone.utc)
    return pa.table({
        "impression_id": [o.impression_id for o in outcomes], "event": [o.event for o in outcomes],
        "rating": [o.rating for o in outcomes], "at": [o.time or now for o in outcomes],
    }, schema=outcome_schema())


def score(pipeline: Any, body: bytes, content_type: str) -> dict[str, Any]:
    """/v1/score through the pipeline's own propensity model, parsed by the same rules as
    the model archive's code/inference.py (so a client of one works with the other), and
    then held to the CustomerFeatures contract (``frequency_30d`` a whole number, rates
    within 0..1): a row the contract rejects is a 400 naming the feature."""
    from loyaltylens_core.sdk.serving import inference

    try:
        data = inference.input_fn(body, content_type or "application/json")
        parsed = [inference.parse_instance(i, SCORE_SPEC) for i in data["instances"]]
    except inference.BadRequest as exc:
        raise UsageError(str(exc), "see POST /v1/score in /docs") from None
    for n, instance in enumerate(data["instances"]):
        where = "" if data["single"] else f"instances.{n}."
        for name in IGNORED_SCORE_FIELDS:
            if isinstance(instance, dict) and name in instance and not isinstance(instance[name], str):
                raise UsageError(f"{where}{name}: must be a string (it is accepted and ignored)",
                                 "see POST /v1/score in /docs")
    numeric_rows, categorical_rows, owners = inference.expand_rows(parsed, SCORE_SPEC)
    names = list(SCORE_SPEC["categorical_features"])
    today = dt.date.today()
    features = []
    for row, (numeric, cats) in enumerate(zip(numeric_rows, categorical_rows)):
        instance = data["instances"][owners[row]]
        values = {n: instance[n] for n in SCORE_SPEC["numeric_features"]}  # as sent: 3.5 is not a count
        try:
            features.append(CustomerFeatures(
                customer_id="score-request", as_of=today, feature_version="request", **values,
                **{n: SCORE_SPEC["categorical_features"][n][c] for n, c in zip(names, cats)},
            ))
        except ValidationError as exc:
            where = "" if data["single"] else f"instances.{owners[row]}."
            raise UsageError(f"{where}{_first_error(exc)}", "see POST /v1/score in /docs") from None
    scored = pipeline.predict_many(features)
    scores = inference.mean_by_owner([s.score for s in scored], owners, len(parsed))
    version = scored[0].model_version if scored else ""
    predictions = [{"propensity_score": s, "model_version": version} for s in scores]
    return predictions[0] if data["single"] else {"predictions": predictions}


# --- OpenAPI: what /v1/score and /v1/feedback accept and answer ----------------------

def score_row_schema() -> dict[str, Any]:
    """One row of features, from the CustomerFeatures contract itself (bounds, enums)."""
    contract = CustomerFeatures.model_json_schema()["properties"]
    properties: dict[str, Any] = {}
    for name in NUMERIC_FEATURES:
        spec = {k: v for k, v in contract[name].items() if k in ("type", "minimum", "maximum")}
        properties[name] = spec
    for name, values in CATEGORICAL_FEATURES.items():
        properties[name] = {"type": "string", "enum": list(values)}
    properties["tier"] = {"anyOf": [{"type": "string", "enum": list(CATEGORICAL_FEATURES["tier"])},
                                    {"type": "null"}],
                          "description": "Left out or null: the mean score over every tier"}
    for name in IGNORED_SCORE_FIELDS:
        properties[name] = {"type": "string", "description": "Accepted and ignored"}
    required = list(NUMERIC_FEATURES) + [n for n in CATEGORICAL_FEATURES if n != "tier"]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def score_openapi() -> dict[str, Any]:
    row = score_row_schema()
    many = {"type": "array", "items": row, "minItems": 1}
    prediction = {"type": "object", "required": ["propensity_score", "model_version"],
                  "properties": {"propensity_score": {"type": "number", "minimum": 0, "maximum": 1},
                                 "model_version": {"type": "string"}}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"oneOf": [
                {"title": "One row", **row},
                {"title": "Instances", "type": "object", "required": ["instances"],
                 "properties": {"instances": many}, "additionalProperties": False},
                {"title": "Rows", **many},
            ]},
            "example": {"recency_days": 3, "frequency_30d": 4, "monetary_90d": 320.5, "offer_redemption_rate": 0.4,
                        "channel_preference": "mobile", "engagement_score": 0.7},
        }}},
        "responses": {"200": {"description": "The score, or one per row", "content": {"application/json": {
            "schema": {"oneOf": [prediction, {"type": "object", "required": ["predictions"],
                                              "properties": {"predictions": {"type": "array",
                                                                             "items": prediction}}}]}}}}},
    }


def feedback_openapi() -> dict[str, Any]:
    outcome = OutcomeIn.model_json_schema()
    many = FeedbackRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"oneOf": [_inline(outcome), _inline(many)]},
        "example": {"outcomes": [{"impression_id": "d51f5970ab39439caf6e20fb311d48f2", "event": "redeemed",
                                  "rating": 5}]},
    }}}}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic schema with its ``$defs`` resolved in place (an OpenAPI body schema
    may not carry ``$defs`` of its own)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.rsplit("/", 1)[-1] in defs:
                return resolve(dict(defs[ref.rsplit("/", 1)[-1]]))
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def public_placement(name: str | None) -> str | None:
    """A placement a client may ask for on the offers routes: any configured one, never a
    campaign's own (``campaign:NAME@RUN``). That name exists for batch engines' workers; from
    a client it would hand out the campaign's offers and count them against its frequency
    rule under a run id of the client's choosing."""
    from loyaltylens_core.kernel.campaigns import PLACEMENT_PREFIX

    if name is not None and name.startswith(PLACEMENT_PREFIX):
        campaign = name[len(PLACEMENT_PREFIX):].partition("@")[0] or "NAME"
        raise UsageError(f"placement {name!r} is a campaign's own placement, not one a client may ask for",
                         f"ask GET /v1/campaigns/{campaign}/offer/{{customer_id}} for the campaign's decision, "
                         "or name a configured placement")
    return name


def publish_placements(schema: dict[str, Any], names: list[str]) -> None:
    """Every ``placement`` the service accepts (the offers query and the batch body) is one
    of ``names``: written into ``schema`` as an enum."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "placement":
                    _enum_on_strings(parameter["schema"], names)
    for component in schema.get("components", {}).get("schemas", {}).values():
        field = component.get("properties", {}).get("placement")
        if field is not None:
            _enum_on_strings(field, names)


def _enum_on_strings(field: dict[str, Any], names: list[str]) -> None:
    for branch in field.get("anyOf", [field]):
        if branch.get("type") == "string":
            branch["enum"] = names
