"""Local deploy target (the default ``deploy_target``): serves a model archive on
127.0.0.1 with the same contract as a SageMaker endpoint (GET /ping, POST /invocations),
through the same code/inference.py the container runs."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class LocalDeploySettings(PluginSettings):
    host: str = Field("127.0.0.1", description="Bind address; loopback unless you mean otherwise")
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Larger request bodies get 413")
    start_timeout_s: float = Field(60.0, gt=0)
    body_timeout_s: float = Field(10.0, gt=0, le=600, description="A request body not received in this time gets 408")
    header_timeout_s: float = Field(10.0, gt=0, le=600, description="Request headers not received in this time get 408")
    max_models: int = Field(8, ge=1, le=1000, description="Multi-model endpoint: models kept loaded (least "
                                                         "recently used unloaded first)")


def build(settings: LocalDeploySettings, context: StageContext) -> Any:
    from .target import LocalDeployTarget

    return LocalDeployTarget(settings, context)


@hookimpl
def register_deploy_targets(register: Register) -> None:
    register("local", build, settings=LocalDeploySettings,
             description="SageMaker serving contract on 127.0.0.1 from the same model.tar.gz")
