"""Object storage for results and staging: a local path or an ``s3://`` / ``gs://`` URI
through pyarrow's filesystems, and storage failures as one clear line. Used by the batch
and by batch engines that stage on shared storage."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from loyaltylens_core.kernel.errors import LoyaltyLensError, UsageError

REMOTE_SCHEMES = ("s3", "gs", "gcs")


def filesystem_for(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a local path or an s3:// / gs:// URI, with the
    same credential and endpoint rules as ``--out``."""
    scheme, sep, rest = location.partition("://")
    if not sep:
        from pyarrow import fs

        return fs.LocalFileSystem(), str(Path(location).resolve())
    if scheme not in REMOTE_SCHEMES:
        raise UsageError(f"{location} is not a local path, s3:// or gs:// URI", "e.g. s3://bucket/staging")
    return filesystem(scheme, location), rest


def filesystem(scheme: str, uri: str) -> Any:
    from urllib.parse import urlparse

    from pyarrow import fs

    with storage_errors(uri):
        if scheme == "s3":
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if endpoint:
                parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
                return fs.S3FileSystem(endpoint_override=parsed.netloc, scheme=parsed.scheme,
                                       region=region or "us-east-1")
            return fs.S3FileSystem(region=region) if region else fs.FileSystem.from_uri(uri)[0]
        return fs.GcsFileSystem()


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """pyarrow's storage errors as one line naming the object; credentials never appear
    (pyarrow's messages name the bucket and key, never the keys)."""
    try:
        yield
    except LoyaltyLensError:
        raise
    except (OSError, ValueError) as exc:
        from loyaltylens_core.kernel.errors import StageError

        detail = " ".join(str(exc).split())[:300]
        raise StageError(
            f"cannot write {what}: {detail}",
            "check the bucket, the credentials (AWS_* variables or ~/.aws) and AWS_ENDPOINT_URL_S3 for S3-compatible servers",
        ) from None
