"""Amazon SageMaker deploy target: S3 upload, model, endpoint config, endpoint, invoke,
teardown, with raw boto3. Credentials come from boto3's own chain (env, profile, role)
and never appear in output. boto3 loads only when the stage is built."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl

ROLE_PATTERN = r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,128}$"
NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"


class SageMakerSettings(PluginSettings):
    region: str = Field("us-east-1", pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    role_arn: str | None = Field(None, pattern=ROLE_PATTERN, description="Execution role SageMaker assumes")
    bucket: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
                               description="S3 bucket for model.tar.gz")
    prefix: str = Field("loyaltylens/models", description="S3 key prefix")
    create_bucket: bool = Field(False, description="Create the bucket if it does not exist")
    endpoint_name: str = Field("loyaltylens-propensity", pattern=NAME_PATTERN)
    instance_type: str = Field("ml.m5.large", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    instance_count: int = Field(1, ge=1, le=10)
    image_uri: str | None = Field(
        None, description="Serving image; default: AWS's PyTorch 2.3 CPU inference image for the region"
    )
    endpoint_url: str | None = Field(None, description="Override AWS endpoints (moto, LocalStack, VPC endpoints)")
    wait_timeout_s: int = Field(1800, ge=1, le=7200, description="How long `up` waits for InService")


def build(settings: SageMakerSettings, context: StageContext) -> Any:
    from .target import SageMakerTarget

    return SageMakerTarget(settings, context)


@hookimpl
def register_deploy_targets(register: Register) -> None:
    register("sagemaker", build, settings=SageMakerSettings,
             description="SageMaker real-time endpoint (raw boto3)")
