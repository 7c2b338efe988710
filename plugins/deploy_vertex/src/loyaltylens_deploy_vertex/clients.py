"""Vertex AI and GCS clients from settings, and Google API errors as one line."""

from __future__ import annotations

import warnings
from typing import Any

from loyaltylens_core.kernel.errors import ConfigError, StageError


def import_aiplatform() -> Any:
    with warnings.catch_warnings():  # grpcio/PQC deprecation notices on import
        warnings.simplefilter("ignore", FutureWarning)
        from google.cloud import aiplatform
    return aiplatform


def credentials(settings: Any) -> Any:
    if settings.anonymous:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except DefaultCredentialsError:
        raise StageError("no Google Cloud credentials found",
                         "set them for Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS=<key file>, "
                         "`gcloud auth application-default login`, or run on a service account") from None
    return creds


def require(settings: Any, field: str, stage: str = "deploy_target.vertex") -> str:
    value = getattr(settings, field)
    if not value:
        env = f"LOYALTYLENS_{stage.replace('.', '_').upper()}__{field.upper()}"
        raise ConfigError(f"[{stage}] {field} is not set", f"set it in loyaltylens.toml or {env}")
    return value


def init_aiplatform(settings: Any, creds: Any) -> Any:
    import logging

    aiplatform = import_aiplatform()
    # The SDK logs every step at INFO; `loyaltylens deploy` prints its own summary.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("google.cloud.aiplatform"):
            logging.getLogger(name).setLevel(logging.WARNING)
    aiplatform.init(
        project=require(settings, "project"), location=settings.location, credentials=creds,
        api_endpoint=settings.api_endpoint, api_transport="rest",
    )
    return aiplatform


def storage_client(settings: Any, creds: Any) -> Any:
    from google.cloud import storage

    options = {"api_endpoint": settings.storage_endpoint} if settings.storage_endpoint else None
    return storage.Client(project=settings.project, credentials=creds, client_options=options)


ADVICE = {
    403: "check the IAM roles of your credentials (roles/aiplatform.user, roles/storage.objectAdmin)",
    404: "check project, location and names",
    409: "it already exists; run `loyaltylens deploy down` first or pick another name",
    429: "quota exceeded; request more or try later",
}


def google_error(operation: str, exc: Exception) -> StageError:
    code = getattr(exc, "code", None)
    message = str(getattr(exc, "message", None) or exc).strip().splitlines()[0][:200]
    return StageError(f"Vertex AI {operation} failed ({code}): {message}", ADVICE.get(code, "see the error above"))
