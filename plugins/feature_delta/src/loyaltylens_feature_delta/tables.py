"""Where the Delta tables are, how delta-rs reaches them, and its failures as one line.

delta-rs reads credentials from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_PROFILE, Azure and GCS equivalents) like every AWS tool; only
non-secret options live in the config."""

from __future__ import annotations

import contextlib
import os
import re
from typing import TYPE_CHECKING, Any, Iterator

from loyaltylens_core.kernel.errors import StageError

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from loyaltylens_core import StageContext

    from loyaltylens_feature_delta import DeltaFeatureSettings

ANSI = re.compile(r"\x1b\[[0-9;]*m")
DEFAULT_TABLE = ("delta", "customer_features")


def feature_table_uri(settings: DeltaFeatureSettings, context: StageContext) -> str:
    if settings.path:
        return settings.path
    return str(context.data_dir.joinpath(*DEFAULT_TABLE))


def labels_table_uri(settings: DeltaFeatureSettings, features_uri: str) -> str:
    return settings.labels_path or features_uri.rstrip("/") + "_labels"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def storage_options(settings: DeltaFeatureSettings) -> dict[str, str]:
    """The configured options, plus AWS_ALLOW_HTTP when the S3 endpoint is plain http (a
    local stand-in such as moto or MinIO): delta-rs refuses http otherwise."""
    options = dict(settings.storage_options)
    endpoint = options.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") \
        or os.environ.get("AWS_ENDPOINT_URL") or ""
    if endpoint.startswith("http://") and "AWS_ALLOW_HTTP" not in options:
        options["AWS_ALLOW_HTTP"] = "true"
    return options


def one_line(exc: BaseException) -> str:
    """delta-rs errors are multi-line, coloured cause chains: the first line and the
    innermost cause, with any credential from the environment blanked out."""
    lines = [line.strip(" ↳") for line in ANSI.sub("", str(exc)).splitlines() if line.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0]} ({lines[-1]})"
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCOUNT_KEY"):
        secret = os.environ.get(name)
        if secret:
            text = text.replace(secret, "***")
    return text


@contextlib.contextmanager
def delta_errors(uri: str, doing: str) -> Iterator[None]:
    """Any delta-rs or storage failure as a StageError naming the table and what was being done."""
    from deltalake.exceptions import DeltaError, TableNotFoundError

    try:
        yield
    except TableNotFoundError:
        raise StageError(f"no Delta table at {uri}",
                         "check [feature_store.delta] path, or write one with "
                         "`loyaltylens features export --to delta PATH`") from None
    except (DeltaError, OSError) as exc:
        raise StageError(f"cannot {doing} the Delta table {uri}: {one_line(exc)}",
                         "check the path, the credentials in the environment and storage_options") from None


def open_table(uri: str, options: dict[str, str], version: int | None = None) -> DeltaTable:
    """The table at ``uri`` (at ``version`` when given); a version that does not exist says
    which versions do."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    with delta_errors(uri, "open"):
        latest = DeltaTable(uri, storage_options=options)
        if version is None or version == latest.version():
            return latest
        if version > latest.version():
            raise StageError(f"the Delta table {uri} has no version {version}",
                             f"its versions are 0 to {latest.version()}: set [feature_store.delta] version to one")
        try:
            return DeltaTable(uri, storage_options=options, version=version)
        except TableNotFoundError:
            raise
        except DeltaError as exc:  # vacuumed or checkpointed away
            raise StageError(f"version {version} of the Delta table {uri} cannot be read: {one_line(exc)}",
                             "pick a version whose files are still retained (see `DESCRIBE HISTORY`)") from None


def last_commit(table: DeltaTable) -> dict[str, Any]:
    """The newest entry of the table's history (its commit info, custom metadata included)."""
    history = table.history(1)
    return history[0] if history else {}
