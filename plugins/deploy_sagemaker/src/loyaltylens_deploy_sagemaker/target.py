"""The SageMaker lifecycle in raw boto3.

``up``: upload model.tar.gz to S3, create a model (PyTorch inference image +
``SAGEMAKER_PROGRAM=inference.py``), an endpoint config and the endpoint (or update it),
then wait for InService. ``down`` deletes endpoint, endpoint config and model. Every AWS
error becomes one line naming the operation, the AWS error code and what to check.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, WaiterError

from loyaltylens_core.sdk.archive import MANIFEST, read_manifest, read_spec, target_model_for
from loyaltylens_core.sdk.variants import VARIANTS_MANIFEST, check_weights, read_variants
from loyaltylens_core.kernel.contracts import CustomerFeatures
from loyaltylens_core.kernel.errors import ConfigError, StageError, UsageError

if TYPE_CHECKING:
    from loyaltylens_core import StageContext

    from loyaltylens_deploy_sagemaker import SageMakerSettings

# AWS Deep Learning Containers account for most commercial regions.
DLC_ACCOUNT = "763104351884"
DEFAULT_IMAGE = "{account}.dkr.ecr.{region}.amazonaws.com/pytorch-inference:2.3.0-cpu-py311-ubuntu20.04-sagemaker"

ADVICE = {
    "AccessDenied": "check that your IAM identity may call this SageMaker/S3 action (see docs/deploy.md)",
    "AccessDeniedException": "check that your IAM identity may call this SageMaker/S3 action (see docs/deploy.md)",
    "NoSuchBucket": "create the bucket or set create_bucket = true",
    "ValidationException": "check the role ARN, instance type and names in [deploy_target.sagemaker]",
    "ResourceLimitExceeded": "request a quota increase or use a smaller instance type",
}


class SageMakerTarget:
    def __init__(self, settings: SageMakerSettings, context: StageContext) -> None:
        self.settings = settings
        self.state_file = context.plugin_dir() / f"{settings.endpoint_name}.json"
        self._seen_endpoint = False
        session = boto3.session.Session(region_name=settings.region)
        config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=70)
        kwargs: dict[str, Any] = {"config": config}
        if settings.endpoint_url:
            kwargs["endpoint_url"] = settings.endpoint_url
        self.s3 = session.client("s3", **kwargs)
        self.sagemaker = session.client("sagemaker", **kwargs)
        self.runtime = session.client("sagemaker-runtime", **kwargs)

    # --- helpers --------------------------------------------------------------------

    def _call(self, operation: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except NoCredentialsError:
            raise _no_credentials(operation) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Unknown")
            message = _one_line(exc.response.get("Error", {}).get("Message", ""))
            raise StageError(
                f"SageMaker {operation} failed: {code}: {message}".rstrip(": "),
                ADVICE.get(code, "see the AWS error above"),
            ) from None
        except BotoCoreError as exc:
            raise StageError(f"SageMaker {operation} failed: {exc}", "check region and network") from None

    def _require(self, field: str) -> str:
        value = getattr(self.settings, field)
        if not value:
            env = f"LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__{field.upper()}"
            raise ConfigError(
                f"[deploy_target.sagemaker] {field} is not set",
                f"set it in loyaltylens.toml or {env}",
            )
        return value

    def _image(self) -> str:
        return self.settings.image_uri or DEFAULT_IMAGE.format(account=DLC_ACCOUNT, region=self.settings.region)

    def _ensure_bucket(self, bucket: str) -> None:
        try:
            self.s3.head_bucket(Bucket=bucket)
            return
        except NoCredentialsError:
            raise _no_credentials("HeadBucket") from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("403", "AccessDenied"):
                raise StageError(f"S3 bucket {bucket!r} exists but access is denied",
                                 ADVICE["AccessDenied"]) from None
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise StageError(f"S3 HeadBucket {bucket!r} failed: {code}", "check the bucket name") from None
        if not self.settings.create_bucket:
            raise StageError(f"S3 bucket {bucket!r} does not exist", ADVICE["NoSuchBucket"])
        params: dict[str, Any] = {"Bucket": bucket}
        if self.settings.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
        self._call("CreateBucket", self.s3.create_bucket, **params)

    def _endpoint(self) -> dict[str, Any] | None:
        try:
            return self.sagemaker.describe_endpoint(EndpointName=self.settings.endpoint_name)
        except NoCredentialsError:
            raise _no_credentials("DescribeEndpoint") from None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ValidationException":
                return None
            return self._call("DescribeEndpoint", self.sagemaker.describe_endpoint,
                              EndpointName=self.settings.endpoint_name)

    # --- lifecycle ------------------------------------------------------------------

    def _upload(self, bucket: str, archive: Path, stamp: str) -> tuple[str, str, dict[str, Any] | None]:
        """The archive (or a multi-model package's archives, under one prefix) in S3:
        (ModelDataUrl, model version, the package's models.json or None)."""
        if not archive.is_dir():
            version = str(read_spec(archive).get("model_version", "unknown"))
            key = f"{self.settings.prefix.strip('/')}/{version}/{stamp}/model.tar.gz"
            with archive.open("rb") as body:
                self._call("PutObject", self.s3.put_object, Bucket=bucket, Key=key, Body=body)
            return f"s3://{bucket}/{key}", version, None
        manifest = read_manifest(archive)
        prefix = f"{self.settings.prefix.strip('/')}/multi-model/{stamp}/"
        self._put_archives(bucket, prefix, archive, [entry["target_model"] for entry in manifest["models"].values()])
        # The prefix (ending in /) is the ModelDataUrl of a multi-model container.
        return f"s3://{bucket}/{prefix}", "multi-model", manifest

    def _put_archives(self, bucket: str, prefix: str, package: Path, names: list[str]) -> None:
        """A package's archives, by file name, under one S3 prefix."""
        for name in names:
            with (package / name).open("rb") as body:
                self._call("PutObject", self.s3.put_object, Bucket=bucket, Key=prefix + name, Body=body)

    def _members(self, bucket: str, archive: Path, stamp: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The production variants to create, each with its model's S3 data: one
        ``AllTraffic`` variant for an archive or a multi-model package, or one per variant of
        a `--variants` package with its weight. Also the multi-model manifest, if any."""
        variants = read_variants(archive) if archive.is_dir() else None
        if variants is None:
            model_data, version, manifest = self._upload(bucket, archive, stamp)
            return [{"variant": "AllTraffic", "model_data": model_data, "version": version, "weight": 1.0,
                     "multi_model": manifest is not None}], manifest
        members = []
        prefix = f"{self.settings.prefix.strip('/')}/variants/{stamp}/"
        self._put_archives(bucket, prefix, archive, [entry["archive"] for entry in variants["variants"].values()])
        for variant, entry in variants["variants"].items():
            members.append({"variant": variant, "model_data": f"s3://{bucket}/{prefix}{entry['archive']}",
                            "version": str(entry.get("model_version") or "unknown"), "weight": float(entry["weight"]),
                            "multi_model": False})
        return members, None

    def up(self, archive: Path) -> dict[str, Any]:
        """Deploy one model.tar.gz; a `deploy package --multi-model` directory as a
        multi-model endpoint (Mode MultiModel over the S3 prefix of its archives); or a
        `--variants` package as production variants with their initial weights."""
        archive = Path(archive)
        if archive.is_dir() and not (archive / MANIFEST).is_file() and not (archive / VARIANTS_MANIFEST).is_file():
            raise UsageError(f"{archive} is not a multi-model or variants package (no {MANIFEST} or {VARIANTS_MANIFEST})",
                             "run `loyaltylens deploy package --multi-model` or `--variants ...`")
        if not archive.exists():
            raise UsageError(f"model archive {archive} does not exist", "run `loyaltylens deploy package`")
        role = self._require("role_arn")
        bucket = self._require("bucket")
        # Unique per call, within SageMaker's 63-character limit: the suffix never gets cut.
        stamp = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        name = self.settings.endpoint_name
        config_name = f"{name[:36]}-cfg-{stamp}"

        self._ensure_bucket(bucket)
        members, manifest = self._members(bucket, archive, stamp)
        created: list[str] = []
        try:
            for i, member in enumerate(members):
                label = member["version"].replace("_", "-").replace("/", "-").replace("=", "-")[:10]
                model_name = f"{name[:27]}-{label}-{i}-{stamp}"
                container: dict[str, Any] = {
                    "Image": self._image(),
                    "ModelDataUrl": member["model_data"],
                    "Environment": {"SAGEMAKER_PROGRAM": "inference.py",
                                    "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"},
                }
                if member["multi_model"]:
                    container["Mode"] = "MultiModel"
                self._call("CreateModel", self.sagemaker.create_model,
                           ModelName=model_name, ExecutionRoleArn=role, PrimaryContainer=container,
                           Tags=[{"Key": "loyaltylens:model_version", "Value": member["version"]}])
                created.append(model_name)
                member["model"] = model_name
            self._call(
                "CreateEndpointConfig", self.sagemaker.create_endpoint_config,
                EndpointConfigName=config_name,
                ProductionVariants=[{
                    "VariantName": member["variant"], "ModelName": member["model"],
                    "InstanceType": self.settings.instance_type,
                    "InitialInstanceCount": self.settings.instance_count,
                    "InitialVariantWeight": member["weight"],
                } for member in members],
            )
        except StageError:
            for model_name in created:
                self._delete_if_present("DeleteModel", self.sagemaker.delete_model, ModelName=model_name)
            raise
        try:
            if self._endpoint() is None:
                self._call("CreateEndpoint", self.sagemaker.create_endpoint,
                           EndpointName=name, EndpointConfigName=config_name)
            else:
                self._call("UpdateEndpoint", self.sagemaker.update_endpoint,
                           EndpointName=name, EndpointConfigName=config_name)
        except StageError:
            # Leave nothing half-made behind: the new config and models serve nothing.
            self._delete_if_present("DeleteEndpointConfig", self.sagemaker.delete_endpoint_config,
                                    EndpointConfigName=config_name)
            for model_name in created:
                self._delete_if_present("DeleteModel", self.sagemaker.delete_model, ModelName=model_name)
            raise
        first = members[0]
        version = first["version"] if len(members) == 1 else "variants"
        self.state_file.write_text(json.dumps({
            "endpoint": name, "config": config_name, "model": first["model"], "models": created,
            "model_data": first["model_data"], "model_version": version,
            **({"manifest": manifest} if manifest else {}),
        }))
        self._wait_in_service()
        out: dict[str, Any] = {"status": "InService", "endpoint": name, "model": first["model"],
                               "model_data": first["model_data"], "model_version": version,
                               "region": self.settings.region}
        if manifest:
            out["target_models"] = sorted(entry["target_model"] for entry in manifest["models"].values())
        if len(members) > 1:
            out["variants"] = {m["variant"]: {"weight": m["weight"], "model_version": m["version"], "model": m["model"]}
                               for m in members}
        return out

    def update_weights(self, weights: dict[str, float]) -> dict[str, Any]:
        """New variant weights on the running endpoint (UpdateEndpointWeightsAndCapacities:
        no new config, no model replaced, traffic keeps flowing)."""
        endpoint = self._endpoint()
        if endpoint is None:
            raise UsageError(f"no SageMaker endpoint {self.settings.endpoint_name!r} in {self.settings.region}",
                             "create it with `loyaltylens deploy up --target sagemaker --variants ...`")
        known = [v["VariantName"] for v in endpoint.get("ProductionVariants", [])]
        named = check_weights(weights, known)
        self._call("UpdateEndpointWeightsAndCapacities", self.sagemaker.update_endpoint_weights_and_capacities,
                   EndpointName=self.settings.endpoint_name,
                   DesiredWeightsAndCapacities=[{"VariantName": n, "DesiredWeight": w} for n, w in named.items()])
        self._wait_in_service()
        return {"status": "InService", "endpoint": self.settings.endpoint_name, "weights": named}

    def _wait_in_service(self) -> None:
        delay = 15
        try:
            self.sagemaker.get_waiter("endpoint_in_service").wait(
                EndpointName=self.settings.endpoint_name,
                WaiterConfig={"Delay": delay if not self.settings.endpoint_url else 1,
                              "MaxAttempts": max(1, self.settings.wait_timeout_s // delay)},
            )
        except WaiterError as exc:
            reason = (exc.last_response or {}).get("FailureReason") or str(exc)
            raise StageError(f"endpoint {self.settings.endpoint_name} did not reach InService: {reason}",
                             "see CloudWatch logs /aws/sagemaker/Endpoints/" + self.settings.endpoint_name) from None

    def _manifest(self) -> dict[str, Any] | None:
        if not self.state_file.is_file():
            return None
        manifest: dict[str, Any] | None = json.loads(self.state_file.read_text()).get("manifest")
        return manifest

    def invoke(self, features: CustomerFeatures, target_model: str | None = None) -> dict[str, Any]:
        """Score on the endpoint; on a multi-model one, with ``TargetModel`` = the given
        archive, else the customer's segment's (from the deployed package), else global."""
        manifest = self._manifest()
        if target_model is None and manifest is not None:
            target_model = target_model_for(manifest, features)
        extra = {"TargetModel": target_model} if target_model else {}
        if not self._seen_endpoint:
            # Checked once: an InvokeEndpoint on a missing endpoint is a vaguer error.
            if self._endpoint() is None:
                raise UsageError(
                    f"no SageMaker endpoint {self.settings.endpoint_name!r} in {self.settings.region}",
                    "create it with `loyaltylens deploy up --target sagemaker`",
                )
            self._seen_endpoint = True
        reply = self._call(
            "InvokeEndpoint", self.runtime.invoke_endpoint,
            EndpointName=self.settings.endpoint_name, ContentType="application/json",
            Accept="application/json", Body=features.model_dump_json().encode(), **extra,
        )
        raw = reply["Body"].read()
        variant = reply.get("InvokedProductionVariant")
        try:
            data = json.loads(raw)
        except ValueError:
            raise StageError(
                f"endpoint {self.settings.endpoint_name} returned non-JSON: {raw[:80]!r}",
                "check that the archive came from `loyaltylens deploy package`",
            ) from None
        if not isinstance(data, dict) or "propensity_score" not in data:
            raise StageError(f"endpoint {self.settings.endpoint_name} returned no propensity_score",
                             "check the inference script")
        return {**data, **({"target_model": target_model} if target_model else {}),
                **({"variant": variant} if variant and variant != "AllTraffic" else {})}

    def invoke_model(self, features: CustomerFeatures, target_model: str) -> dict[str, Any]:
        """``invoke`` with a named archive of the deployed multi-model package (ServesManyModels)."""
        return self.invoke(features, target_model=target_model)

    def status(self) -> dict[str, Any]:
        endpoint = self._endpoint()
        if endpoint is None:
            return {"status": "absent", "endpoint": self.settings.endpoint_name}
        return {
            "status": endpoint["EndpointStatus"], "endpoint": endpoint["EndpointName"],
            "config": endpoint["EndpointConfigName"], "region": self.settings.region,
            **({"failure": endpoint["FailureReason"]} if endpoint.get("FailureReason") else {}),
        }

    def down(self) -> dict[str, Any]:
        """Delete the endpoint, its config and its model: nothing left to bill."""
        endpoint = self._endpoint()
        deleted: list[str] = []
        config_name = model_names = None
        if endpoint is not None:
            config_name = endpoint["EndpointConfigName"]
            config = self._call("DescribeEndpointConfig", self.sagemaker.describe_endpoint_config,
                                EndpointConfigName=config_name)
            model_names = [v["ModelName"] for v in config["ProductionVariants"]]
            self._call("DeleteEndpoint", self.sagemaker.delete_endpoint, EndpointName=self.settings.endpoint_name)
            deleted.append(f"endpoint {self.settings.endpoint_name}")
        elif self.state_file.is_file():
            state = json.loads(self.state_file.read_text())
            config_name, model_names = state.get("config"), state.get("models") or [state.get("model")]
        if config_name:
            self._delete_if_present("DeleteEndpointConfig", self.sagemaker.delete_endpoint_config,
                                    EndpointConfigName=config_name)
            deleted.append(f"endpoint config {config_name}")
        for model_name in model_names or []:
            if model_name:
                self._delete_if_present("DeleteModel", self.sagemaker.delete_model, ModelName=model_name)
                deleted.append(f"model {model_name}")
        self.state_file.unlink(missing_ok=True)
        return {"status": "deleted" if deleted else "absent", "deleted": deleted}

    def _delete_if_present(self, operation: str, fn: Any, **kwargs: Any) -> None:
        try:
            fn(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ValidationException":
                self._call(operation, fn, **kwargs)


def _one_line(text: str, limit: int = 200) -> str:
    """AWS (or a proxy in front of it) can answer with an HTML page: keep one short line."""
    import re

    text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_credentials(operation: str) -> StageError:
    return StageError(
        f"SageMaker {operation}: no AWS credentials found",
        "set them for boto3's credential chain: AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials, or run on an instance or task role",
    )
