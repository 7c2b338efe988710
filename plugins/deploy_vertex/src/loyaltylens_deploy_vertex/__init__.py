"""Vertex AI deploy target: model.mar to GCS, Model.upload with the prebuilt PyTorch
serving image, Endpoint.create + deploy, predict, status, undeploy + delete. Also a
Vector Search deployer for the offer embeddings (``loyaltylens_deploy_vertex.vector_search``).

Entry-point module: google-cloud-aiplatform (1.3 s to import) loads only when built.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class VertexSettings(PluginSettings):
    project: str | None = Field(None, pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", description="GCP project id")
    location: str = Field("us-central1", pattern=r"^[a-z]+-[a-z]+\d$")
    bucket: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$",
                               description="GCS bucket for model.mar")
    prefix: str = Field("loyaltylens/models")
    create_bucket: bool = Field(False)
    endpoint_name: str = Field("loyaltylens-propensity", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$",
                               description="Endpoint display name")
    machine_type: str = Field("n1-standard-2")
    min_replicas: int = Field(1, ge=1, le=10)
    max_replicas: int = Field(1, ge=1, le=100)
    serving_image: str = Field(
        "us-docker.pkg.dev/vertex-ai/prediction/pytorch-cpu.2-3:latest",
        description="Prebuilt PyTorch prediction image (serves model.mar with TorchServe)",
    )
    api_endpoint: str | None = Field(None, description="Override the Vertex API endpoint (tests, private endpoints)")
    storage_endpoint: str | None = Field(None, description="Override the GCS endpoint (e.g. a storage emulator)")
    anonymous: bool = Field(False, description="Anonymous credentials: only for emulators and local stand-ins")


def build(settings: VertexSettings, context: StageContext) -> Any:
    import warnings

    # google-api-core warns at import that grpcio < 1.83 lacks post-quantum TLS; grpcio is
    # capped below 1.80 by weaviate-client. The notice is not the user's to act on, and a
    # warning line in the middle of a one-line error is noise.
    warnings.filterwarnings("ignore", message=".*Post-Quantum Cryptography", category=FutureWarning)
    from .target import VertexTarget

    return VertexTarget(settings, context)


@hookimpl
def register_deploy_targets(register: Register) -> None:
    register("vertex", build, settings=VertexSettings,
             description="Vertex AI endpoint serving a TorchServe model.mar")
