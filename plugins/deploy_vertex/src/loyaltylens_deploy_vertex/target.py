"""The Vertex AI lifecycle through the google-cloud-aiplatform SDK (REST transport).

``up``: build model.mar from the deploy archive, upload it to GCS, ``Model.upload`` with
the prebuilt PyTorch image, reuse or create the endpoint by display name, deploy the
model with all traffic, and wait. A ``deploy package --variants`` directory deploys one
model per variant to the same endpoint and splits its traffic by the variants' weights
(the endpoint's ``traffic_split``, whole percentages); ``update_weights`` changes that split
in place and ``invoke`` says which variant answered (the reply's ``deployedModelId``).
``down`` undeploys everything and deletes the endpoint and the models this target
uploaded. Google API errors become one line.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, TYPE_CHECKING

from google.api_core import exceptions as google_exceptions

from loyaltylens_core.sdk.archive import read_spec
from loyaltylens_core.sdk.variants import check_weights, read_variants
from loyaltylens_core.kernel.contracts import CustomerFeatures
from loyaltylens_core.kernel.errors import StageError, UsageError

from .clients import credentials, google_error, init_aiplatform, require, storage_client
from .mar import build_mar

if TYPE_CHECKING:
    from loyaltylens_core import StageContext

    from loyaltylens_deploy_vertex import VertexSettings


class VertexTarget:
    def __init__(self, settings: VertexSettings, context: StageContext) -> None:
        self.settings = settings
        self.state_file = context.plugin_dir() / f"{settings.endpoint_name}.json"
        self.creds = credentials(settings)
        self.aiplatform = init_aiplatform(settings, self.creds)

    def _state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}

    def _endpoint(self) -> Any:
        """The endpoint with our display name, or None."""
        try:
            found = self.aiplatform.Endpoint.list(filter=f'display_name="{self.settings.endpoint_name}"')
        except google_exceptions.GoogleAPIError as exc:
            raise google_error("Endpoint.list", exc) from None
        return found[0] if found else None

    def _upload_mar(self, mar: Path, version: str) -> str:
        bucket_name = require(self.settings, "bucket")
        client = storage_client(self.settings, self.creds)
        try:
            bucket = client.lookup_bucket(bucket_name)
            if bucket is None:
                if not self.settings.create_bucket:
                    raise StageError(f"GCS bucket {bucket_name!r} does not exist",
                                     "create it or set create_bucket = true")
                bucket = client.create_bucket(bucket_name, location=self.settings.location)
            folder = f"{self.settings.prefix.strip('/')}/{version}/{time.strftime('%Y%m%d%H%M%S')}"
            bucket.blob(f"{folder}/model.mar").upload_from_filename(str(mar))
        except google_exceptions.GoogleAPIError as exc:
            raise google_error("GCS upload", exc) from None
        return f"gs://{bucket_name}/{folder}"

    def up(self, archive: Path) -> dict[str, Any]:
        archive = Path(archive)
        variants = read_variants(archive) if archive.is_dir() else None
        if variants is not None:
            return self._up_variants(archive, variants)
        if archive.is_dir():
            raise UsageError(f"{archive} is a multi-model package; Vertex AI endpoints serve one model per deployed model",
                             "deploy it with --target sagemaker or --target local, or package one model")
        if not archive.is_file():
            raise UsageError(f"model archive {archive} does not exist", "run `loyaltylens deploy package`")
        require(self.settings, "bucket")
        version = str(read_spec(archive).get("model_version", "unknown"))
        with tempfile.TemporaryDirectory(prefix="ll-vertex-") as work:
            mar = build_mar(archive, Path(work))
            artifact_uri = self._upload_mar(mar, version)
        s = self.settings
        try:
            model = self.aiplatform.Model.upload(
                display_name=f"{s.endpoint_name}-{version}", artifact_uri=artifact_uri,
                serving_container_image_uri=s.serving_image, labels={"loyaltylens": "propensity"}, sync=True,
            )
            endpoint = self._endpoint() or self.aiplatform.Endpoint.create(display_name=s.endpoint_name, sync=True)
            endpoint.deploy(model=model, deployed_model_display_name=f"{s.endpoint_name}-{version}",
                            machine_type=s.machine_type, min_replica_count=s.min_replicas,
                            max_replica_count=s.max_replicas, traffic_percentage=100, sync=True)
        except google_exceptions.GoogleAPIError as exc:
            raise google_error("deploy", exc) from None
        state = self._state()
        state.setdefault("models", []).append(model.resource_name)
        state["endpoint"] = endpoint.resource_name
        self.state_file.write_text(json.dumps(state))
        return {"status": "deployed", "endpoint": endpoint.resource_name, "model": model.resource_name,
                "artifact_uri": artifact_uri, "model_version": version}

    def _up_variants(self, package: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """Each variant's model uploaded and deployed to the one endpoint (at 0% traffic
        after the first), then the endpoint's traffic split set from the weights at once."""
        require(self.settings, "bucket")
        s = self.settings
        entries: dict[str, dict[str, Any]] = manifest.get("variants") or {}
        split = traffic_percentages({name: float(e["weight"]) for name, e in entries.items()})
        state = self._state()
        deployed_ids: dict[str, str] = {}
        out: dict[str, Any] = {}
        try:
            endpoint = self._endpoint() or self.aiplatform.Endpoint.create(display_name=s.endpoint_name, sync=True)
            state["endpoint"] = endpoint.resource_name
            for i, (name, entry) in enumerate(entries.items()):
                version = str(entry.get("model_version") or "unknown")
                with tempfile.TemporaryDirectory(prefix="ll-vertex-") as work:
                    artifact_uri = self._upload_mar(build_mar(package / entry["archive"], Path(work)), version)
                model = self.aiplatform.Model.upload(
                    display_name=f"{s.endpoint_name}-{name}-{version}", artifact_uri=artifact_uri,
                    serving_container_image_uri=s.serving_image,
                    labels={"loyaltylens": "propensity", "variant": name.lower()}, sync=True,
                )
                state.setdefault("models", []).append(model.resource_name)
                self.state_file.write_text(json.dumps(state))  # `down` deletes it, even if a later step fails
                display = f"{s.endpoint_name}-{name}"
                before = {d.id for d in endpoint.list_models()}
                endpoint.deploy(model=model, deployed_model_display_name=display, machine_type=s.machine_type,
                                min_replica_count=s.min_replicas, max_replica_count=s.max_replicas,
                                traffic_percentage=100 if i == 0 else 0, sync=True)
                (deployed_id,) = [d.id for d in endpoint.list_models() if d.id not in before]
                deployed_ids[name] = deployed_id
                state.setdefault("variants", {})[deployed_id] = name
                self.state_file.write_text(json.dumps(state))
                out[name] = {"weight": split[name], "model_version": version, "model": model.resource_name,
                             "deployed_model_id": deployed_id}
            endpoint.update(traffic_split={deployed_ids[name]: pct for name, pct in split.items() if pct})
        except google_exceptions.GoogleAPIError as exc:
            raise google_error("deploy", exc) from None
        return {"status": "deployed", "endpoint": endpoint.resource_name, "model_version": "variants",
                "variants": out}

    def update_weights(self, weights: dict[str, float]) -> dict[str, Any]:
        """A new traffic split on the running endpoint (Endpoint.update): no model is
        redeployed and traffic keeps flowing. A variant left out keeps its weight."""
        endpoint = self._endpoint()
        if endpoint is None:
            raise UsageError(f"no Vertex AI endpoint named {self.settings.endpoint_name!r}",
                             "create it with `loyaltylens deploy up --target vertex --variants ...`")
        by_id: dict[str, str] = self._state().get("variants", {})
        live = {d.id for d in endpoint.list_models()}
        ids = {name: deployed_id for deployed_id, name in by_id.items() if deployed_id in live}
        if not ids:
            raise UsageError(f"endpoint {self.settings.endpoint_name!r} has no variants",
                             "deploy some with `loyaltylens deploy up --target vertex --variants champion=90,challenger=10`")
        named = check_weights(weights, list(ids))
        current = dict(endpoint.gca_resource.traffic_split)
        merged = {name: named[name] if name in named else float(current.get(ids[name], 0)) for name in ids}
        split = traffic_percentages(merged)  # refuses a split in which every weight is 0
        try:
            endpoint.update(traffic_split={ids[name]: pct for name, pct in split.items() if pct})
        except google_exceptions.GoogleAPIError as exc:
            raise google_error("update traffic split", exc) from None
        return {"status": "deployed", "endpoint": endpoint.resource_name, "weights": split}

    def invoke(self, features: CustomerFeatures) -> dict[str, Any]:
        endpoint = self._endpoint()
        if endpoint is None:
            raise UsageError(f"no Vertex AI endpoint named {self.settings.endpoint_name!r}",
                             "create it with `loyaltylens deploy up --target vertex`")
        try:
            reply = endpoint.predict(instances=[features.model_dump(mode="json")])
        except google_exceptions.GoogleAPIError as exc:
            raise google_error("predict", exc) from None
        if not reply.predictions:
            raise StageError(f"endpoint {self.settings.endpoint_name!r} returned no predictions",
                             "check that a model is deployed (`loyaltylens deploy status --target vertex`)")
        first = reply.predictions[0]
        if not isinstance(first, dict) or "propensity_score" not in first:
            raise StageError(f"endpoint {self.settings.endpoint_name!r} returned {str(first)[:80]!r}",
                             "check that the model came from `loyaltylens deploy up`")
        out = {"propensity_score": float(first["propensity_score"]), "model_version": first.get("model_version")}
        variant = self._state().get("variants", {}).get(reply.deployed_model_id or "")
        return {**out, "variant": variant} if variant else out

    def status(self) -> dict[str, Any]:
        endpoint = self._endpoint()
        if endpoint is None:
            return {"status": "absent", "endpoint": self.settings.endpoint_name}
        deployed = endpoint.list_models()
        out: dict[str, Any] = {"status": "deployed" if deployed else "empty", "endpoint": endpoint.resource_name,
                               "deployed_models": [d.display_name for d in deployed]}
        variants = self._state().get("variants", {})
        if variants:
            split, live = dict(endpoint.gca_resource.traffic_split), {d.id for d in deployed}
            out["traffic_split"] = {name: int(split.get(deployed_id, 0)) for deployed_id, name in variants.items()
                                    if deployed_id in live}
        return out

    def down(self) -> dict[str, Any]:
        endpoint = self._endpoint()
        deleted: list[str] = []
        models = set(self._state().get("models", []))
        try:
            if endpoint is not None:
                models |= {d.model.split("@")[0] for d in endpoint.list_models()}
                endpoint.undeploy_all(sync=True)
                endpoint.delete(sync=True)
                deleted.append(f"endpoint {endpoint.resource_name}")
            for name in sorted(models):
                try:
                    self.aiplatform.Model(name).delete(sync=True)
                    deleted.append(f"model {name}")
                except google_exceptions.NotFound:
                    pass
        except google_exceptions.GoogleAPIError as exc:
            raise google_error("teardown", exc) from None
        self.state_file.unlink(missing_ok=True)
        return {"status": "deleted" if deleted else "absent", "deleted": deleted}


def traffic_percentages(weights: dict[str, float]) -> dict[str, int]:
    """Weights as whole percentages that add up to 100, as an endpoint's traffic_split must
    (largest remainder; ties to the variant named first): 2:1 -> 67/33, 90:10 -> 90/10."""
    total = sum(weights.values())
    if total <= 0:
        raise UsageError("every variant has weight 0, so no variant would get traffic", "give one a weight above 0")
    exact = {name: 100 * w / total for name, w in weights.items()}
    whole = {name: int(x) for name, x in exact.items()}
    order = sorted(weights, key=lambda name: -(exact[name] - whole[name]))
    for name in order[: 100 - sum(whole.values())]:
        whole[name] += 1
    return whole
