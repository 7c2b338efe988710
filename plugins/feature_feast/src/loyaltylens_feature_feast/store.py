"""The Feast feature store: LoyaltyLens reads a Feast repo the user already runs.

At start-up the repo's registry is read and every ``CustomerFeatures`` field is matched to
one Feast feature (same name, or as mapped in ``fields``); a field with no feature is one
line naming both. Reads then go through the Feast SDK only:

- latest features: ``get_online_features`` against the repo's online store, one call per
  ``read_many`` however many customers; ``as_of`` is the features' event time, unless a
  Feast feature is mapped to it;
- point-in-time reads and training sets: ``get_historical_features`` on the offline
  store, whose point-in-time join returns each feature's newest value at or before the
  entity row's timestamp (within the view's ttl).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

from pydantic import ValidationError

from loyaltylens_core.kernel.contracts import CustomerFeatures, TrainingSet
from loyaltylens_core.kernel.errors import ConfigError, CustomerNotFound, StageError

if TYPE_CHECKING:
    from loyaltylens_core import StageContext

    from loyaltylens_feature_feast import FeastFeatureSettings

FIELDS = tuple(CustomerFeatures.model_fields)
# Filled in when no Feast feature holds them: the event time, the configured version.
OPTIONAL = ("as_of", "feature_version")
LABEL_COLUMNS = ("customer_id", "as_of", "horizon_days", "label")
PASSWORD = re.compile(r"password=([^,\s]+)")


def _date(value: Any) -> dt.date:
    """A Feast timestamp (epoch seconds online, a pandas/datetime value offline) as a UTC date."""
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc).date()
    if isinstance(value, dt.datetime):
        return (value.astimezone(dt.timezone.utc) if value.tzinfo else value).date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def _midnight(day: dt.date) -> Any:
    import pandas as pd

    return pd.Timestamp(day.isoformat(), tz="UTC")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # NaN from pandas


class FeastFeatureStore:
    # Every read is a call to Feast's online or offline store: not for the event loop.
    nonblocking = False

    def __init__(self, settings: FeastFeatureSettings, context: StageContext) -> None:
        unknown = sorted(set(settings.fields) - set(FIELDS) | ({"customer_id"} & set(settings.fields)))
        if unknown:
            raise ConfigError(f"[feature_store.feast] fields names {', '.join(unknown)}, not a mappable field",
                              "map any of: " + ", ".join(f for f in FIELDS if f != "customer_id"))
        self.settings = settings
        self.context = context
        self.repo = Path(settings.repo_path).expanduser() if settings.repo_path else None
        self.labels_path = settings.labels_path or (self.repo / "data" / "labels.parquet" if self.repo else None)
        self._store: Any = None
        self._request: Any = None
        self._keys: dict[str, str] = {}  # our field -> the column Feast answers with
        self._refs: dict[str, str] = {}  # our field -> "view:feature", for messages
        self._version = settings.feature_version or ""
        self._secret: str | None = None

    # --- start-up -------------------------------------------------------------------

    def prepare(self) -> None:
        if self._store is not None:
            return
        if self.repo is None:
            raise ConfigError("[feature_store.feast] repo_path is not set",
                              "point it at your Feast repo (the directory holding feature_store.yaml), or write "
                              "one from the embedded store: `loyaltylens features export --to feast REPO`")
        if not (self.repo / "feature_store.yaml").is_file():
            raise ConfigError(f"{self.repo} is not a Feast repo: it has no feature_store.yaml",
                              "set [feature_store.feast] repo_path to the directory `feast apply` runs in")
        from feast import FeatureStore

        with self._errors("open the Feast repo"):
            store = FeatureStore(repo_path=str(self.repo))
        found = PASSWORD.search(str(getattr(store.config.online_store, "connection_string", "") or ""))
        self._secret = found.group(1) if found else None
        self._version = self.settings.feature_version or f"feast:{store.project}"
        with self._errors("read the Feast registry"):
            self._request, available, source = self._requested(store)
            self._refs = self._match(available, source)
        self._keys = {field: ref.replace(":", "__") for field, ref in self._refs.items()}
        self._store = store

    def _requested(self, store: Any) -> tuple[Any, list[str], str]:
        """What to ask Feast for (a service or references), the references it covers, and
        how to name it in messages."""
        services = [service.name for service in store.list_feature_services()]
        name = self.settings.feature_service
        if name is None and not self.settings.features:
            if len(services) != 1:
                raise ConfigError(
                    f"the Feast repo {self.repo} has {len(services)} feature services; pick one",
                    "set [feature_store.feast] feature_service to one of: " + (", ".join(services) or "(none)")
                    + ", or list features = [\"view:feature\", ...]")
            name = services[0]
        if name is not None:
            if name not in services:
                raise ConfigError(f"the Feast repo {self.repo} has no feature service {name!r}",
                                  "its services are: " + (", ".join(services) or "(none): run `feast apply`"))
            service = store.get_feature_service(name)
            refs = [f"{projection.name_to_use()}:{feature.name}"
                    for projection in service.feature_view_projections for feature in projection.features]
            return service, refs, f"feature service {name!r}"
        views = {view.name: {feature.name for feature in view.features} for view in store.list_feature_views()}
        for ref in self.settings.features:
            view, _, feature = ref.partition(":")
            if feature not in views.get(view, set()):
                raise ConfigError(f"the Feast repo {self.repo} has no feature {ref!r}",
                                  "write references as view:feature; its views are: " + (", ".join(views) or "(none)"))
        return list(self.settings.features), list(self.settings.features), "the listed features"

    def _match(self, available: list[str], source: str) -> dict[str, str]:
        """Each of our fields -> one of ``available``: by the mapped name or our own; a field
        with no match is one line naming the Feast feature and our field."""
        matched: dict[str, str] = {}
        for field in FIELDS:
            if field == "customer_id":
                continue
            wanted = self.settings.fields.get(field, field)
            hits = [ref for ref in available if ref == wanted or ref.partition(":")[2] == wanted]
            if len(hits) > 1:
                raise ConfigError(f"Feast feature {wanted!r} (for CustomerFeatures.{field}) is in several views of "
                                  f"{source}: {', '.join(hits)}",
                                  f'pick one: [feature_store.feast.fields] {field} = "{hits[0]}"')
            if hits:
                matched[field] = hits[0]
            elif field not in OPTIONAL or field in self.settings.fields:
                raise ConfigError(
                    f"Feast feature {wanted!r} for CustomerFeatures.{field} is not in {source}",
                    f'map it: [feature_store.feast.fields] {field} = "<view>:<feature>"; available: '
                    + ", ".join(available))
        return matched

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Feast and its stores' failures as one line; a password from the online store's
        connection string never appears."""
        try:
            yield
        except (ConfigError, StageError, CustomerNotFound):
            raise
        except Exception as exc:  # Feast raises its own, redis', botocore's, grpc's... errors
            text = " ".join(str(exc).split()) or type(exc).__name__
            if self._secret:
                text = text.replace(self._secret, "***")
            raise StageError(f"cannot {doing} at {self.repo}: {type(exc).__name__}: {text[:300]}",
                             "check feature_store.yaml, that its stores are reachable, and `feast apply`") from None

    # --- rows -----------------------------------------------------------------------

    def _features(self, customer_id: str, values: dict[str, Any], as_of: dt.date | None) -> CustomerFeatures | None:
        if all(_missing(value) for value in values.values()):
            return None
        absent = [field for field, value in values.items() if _missing(value)]
        if absent:
            raise StageError(f"Feast returned no {self._refs[absent[0]]} for customer {customer_id!r}",
                             "its view's ttl may have passed, or it was never materialised: run "
                             "`feast materialize-incremental` in the repo")
        row = {"customer_id": customer_id, **values}
        if "as_of" in values:
            row["as_of"] = _date(values["as_of"])
        elif as_of is not None:
            row["as_of"] = as_of
        row.setdefault("feature_version", self._version)
        if "frequency_30d" in row:
            row["frequency_30d"] = int(row["frequency_30d"])  # a float when pandas saw a null in its column
        try:
            return CustomerFeatures(**row)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"])
            raise StageError(f"Feast's {self._refs.get(field, field)} for customer {customer_id!r} is not a valid "
                             f"{field}: {error['msg']} (got {error.get('input')!r})",
                             "fix the feature, or map the right one in [feature_store.feast.fields]") from None

    def _not_found(self, customer_id: str) -> CustomerNotFound:
        return CustomerNotFound(f"customer {customer_id!r} not found",
                                f"the Feast online store of {self.repo} has no features for it (not materialised?)")

    # --- reading --------------------------------------------------------------------

    def read_latest(self, customer_id: str, as_of: dt.date | None = None) -> CustomerFeatures:
        return self.read_many([customer_id], as_of)[0]

    def read_many(self, customer_ids: Sequence[str], as_of: dt.date | None = None) -> list[CustomerFeatures]:
        self.prepare()
        if as_of is not None:
            return self._read_past(customer_ids, as_of)
        key = self.settings.entity_key
        with self._errors("read online features"):
            data = self._store.get_online_features(
                features=self._request, entity_rows=[{key: customer_id} for customer_id in customer_ids],
                full_feature_names=True,
            ).to_dict(include_event_timestamps=True)
        out = []
        for index, customer_id in enumerate(customer_ids):
            values = {field: data[column][index] for field, column in self._keys.items()}
            stamps = [data[f"{column}__ts"][index] for column in self._keys.values()
                      if data.get(f"{column}__ts") and data[f"{column}__ts"][index]]
            found = self._features(customer_id, values, _date(max(stamps)) if stamps else None)
            if found is None:
                raise self._not_found(customer_id)
            out.append(found)
        return out

    def _historical(self, entity_rows: Any) -> Any:
        with self._errors("run historical retrieval"):
            return self._store.get_historical_features(
                entity_df=entity_rows, features=self._request, full_feature_names=True).to_df()

    def _read_past(self, customer_ids: Sequence[str], day: dt.date) -> list[CustomerFeatures]:
        import pandas as pd

        frame = self._historical(pd.DataFrame({self.settings.entity_key: list(customer_ids),
                                               "event_timestamp": [_midnight(day)] * len(customer_ids)}))
        by_id = {row[self.settings.entity_key]: row for row in frame.to_dict("records")}
        out = []
        for customer_id in customer_ids:
            row = by_id.get(customer_id)
            values = {field: row[column] for field, column in self._keys.items()} if row else {}
            found = self._features(customer_id, values, day) if values else None
            if found is None:
                raise CustomerNotFound(f"customer {customer_id!r} has no features as of {day}",
                                       "pick a later date, or check the customer id")
            out.append(found)
        return out

    # --- training -------------------------------------------------------------------

    def _labels(self, horizon_days: int) -> Any:
        import pandas as pd

        path = Path(self.labels_path or "labels.parquet")
        if not path.is_file():
            raise StageError(f"no training labels at {path}",
                             "write a Parquet or CSV file with " + ", ".join(LABEL_COLUMNS)
                             + " there, or set [feature_store.feast] labels_path")
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        missing = [column for column in LABEL_COLUMNS if column not in frame.columns]
        if missing:
            raise ConfigError(f"the labels {path} have no column {missing[0]!r}", "they need " + ", ".join(LABEL_COLUMNS))
        chosen = frame[frame["horizon_days"] == horizon_days]
        if chosen.empty:
            held = sorted(int(h) for h in frame["horizon_days"].unique())
            raise StageError(f"the labels {path} have none for a {horizon_days}-day horizon",
                             "they hold " + (", ".join(f"{h} days" for h in held) or "no rows")
                             + "; train with one of those")
        return chosen, hashlib.sha256(path.read_bytes()).hexdigest()

    def training_examples(self, horizon_days: int = 30) -> TrainingSet:
        """The labels as Feast entity rows (timestamp = the label's ``as_of``), joined point in
        time by ``get_historical_features``; labels with no features then are left out."""
        import pandas as pd

        self.prepare()
        labels, labels_hash = self._labels(horizon_days)
        key = self.settings.entity_key
        entity_rows = pd.DataFrame({key: labels["customer_id"].astype(str).to_numpy(),
                                    "event_timestamp": [_midnight(_date(d)) for d in labels["as_of"]],
                                    "loyaltylens_label": labels["label"].astype(int).to_numpy()})
        frame = self._historical(entity_rows).sort_values(["event_timestamp", key], kind="stable")
        features: list[CustomerFeatures] = []
        outcomes: list[Literal[0, 1]] = []
        for row in frame.to_dict("records"):
            values = {field: row[column] for field, column in self._keys.items()}
            found = self._features(str(row[key]), values, _date(row["event_timestamp"]))
            if found is not None:
                features.append(found)
                outcomes.append(1 if row["loyaltylens_label"] else 0)
        if not features:
            raise StageError(f"no label in {self.labels_path} has features in Feast at its as_of",
                             "check the entity ids and the views' ttl")
        digest = hashlib.sha256(
            f"{self._store.project}:{sorted(self._refs.values())}:{labels_hash}:{horizon_days}".encode())
        return TrainingSet(features=tuple(features), labels=tuple(outcomes), horizon_days=horizon_days,
                           data_hash=digest.hexdigest()[:16])

    # --- writing (`loyaltylens features export --to feast REPO`) --------------------

    def export_from(self, source: Any, destination: str | None = None, horizon_days: int = 30,
                    rebuild: bool = False) -> dict[str, Any]:
        """Write a ready-to-apply Feast repo from ``source``'s snapshots and labels
        (``repo.write_repo``). Idempotent: the same snapshots again write nothing."""
        import os
        import time

        from .repo import write_repo

        repo = Path(destination).expanduser() if destination else self.repo
        if repo is None:
            raise ConfigError("no repo to write", "name one: `loyaltylens features export --to feast REPO`")
        started = time.perf_counter()
        summary = write_repo(source, repo, horizon_days, rebuild, self.context.progress,
                             os.environ.get("REDIS_URL"), bool(os.environ.get("REDIS_PASSWORD")))
        return {**summary, "seconds": round(time.perf_counter() - started, 3)}
