"""The Vertex AI lifecycle through the google-cloud-aiplatform SDK (REST transport).

``up``: build model.mar from the deploy archive, upload it to GCS, ``Model.upload`` with
the prebuilt PyTorch image, reuse or create the endpoint by display name, deploy the
model with all traffic, and wait. ``down`` undeploys everything and deletes the endpoint
and the models this target uploaded. Google API errors become one line.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, TYPE_CHECKING

from google.api_core import exceptions as google_exceptions

from loyaltylens_core.sdk.archive import read_spec
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
        if archive.is_dir():
            raise UsageError(f"{archive} is a multi-model package; Vertex AI endpoints serve one model each",
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
        return {"propensity_score": float(first["propensity_score"]), "model_version": first.get("model_version")}

    def status(self) -> dict[str, Any]:
        endpoint = self._endpoint()
        if endpoint is None:
            return {"status": "absent", "endpoint": self.settings.endpoint_name}
        deployed = endpoint.list_models()
        return {"status": "deployed" if deployed else "empty", "endpoint": endpoint.resource_name,
                "deployed_models": [d.display_name for d in deployed]}

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
