"""``loyaltylens campaign run``: one campaign run, from audience to channel exports.

A run is named ``<campaign>-<YYYYMMDD>`` by its day (``--as-of``, default today, UTC) and
lives in ``<data_dir>/campaigns/<campaign>/<run>/``:

1. the audience is selected from the feature store (the rule, or the ids file) and split
   into treated and holdout customers; the split is written first (``audience.parquet``),
   so a resumed run works on the same customers whatever the store holds by then;
2. the treated customers go through the batch (any batch engine) and decisioning, the
   campaign's offer collection and frequency rule included, into ``decisions.parquet`` —
   resumable part by part after a crash, like ``loyaltylens batch``;
3. every treated customer's decision and every holdout customer (an impression with no
   offer) is recorded in the feedback store, tagged with the campaign, so the lift is
   measurable (``report --campaign``);
4. one export per channel (Parquet and CSV) is written to ``--out`` (a folder, s3:// or
   gs://), each file whole or absent; ``run.json`` then says ``done``.

A second run of the same campaign and day finds ``done`` and does nothing; one killed
half way continues where it stopped. ``--rerun`` starts a new run (``-r2``, ``-r3`` ...).
A dry run decides the same customers without counting caps, recording or writing anything.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from loyaltylens_core.kernel.campaigns import ARM_KEY, CHANNEL_KEY, RUN_KEY, Campaign
from loyaltylens_core.kernel.contracts import CustomerFeatures
from loyaltylens_core.kernel.errors import UsageError
from loyaltylens_core.util.atomic import write_bytes, write_parquet

if TYPE_CHECKING:
    import pyarrow as pa

    from loyaltylens_core.kernel.pipeline import Pipeline

READ_CHUNK = 10_000
CAP_REASONS = ("capped_customer", "capped_total", "out_of_stock", "capped_frequency", "counter_store_down")


def campaign_dir(data_dir: Path, campaign: Campaign) -> Path:
    return Path(data_dir) / "campaigns" / campaign.name


def runs_of(data_dir: Path, campaign: Campaign) -> list[dict[str, Any]]:
    """Every run of the campaign so far (``run.json``), oldest first."""
    folder = campaign_dir(data_dir, campaign)
    found = [json.loads(p.read_text()) for p in folder.glob("*/run.json")] if folder.is_dir() else []
    return sorted(found, key=lambda r: r.get("started_at", ""))


def run_id_for(pipeline: "Pipeline", campaign: Campaign, day: dt.date, rerun: bool) -> str:
    """The day's run: its latest attempt, or with ``rerun`` the next one."""
    base = f"{campaign.name}-{day:%Y%m%d}"
    folder = campaign_dir(pipeline.config.core.data_dir, campaign)

    def attempt(n: int) -> str:
        return base if n == 1 else f"{base}-r{n}"

    latest = 0  # attempts are numbered without gaps: the first missing one ends them
    while (folder / attempt(latest + 1) / "run.json").is_file():
        latest += 1
    return attempt(max(1, latest + 1 if rerun else latest))


def check_day(campaign: Campaign, day: dt.date) -> None:
    if not campaign.active_on(day):
        raise UsageError(f"campaign {campaign.name!r} runs {campaign.window()}; {day} is outside it",
                         "pass --as-of a day inside the campaign's start and end, or change them")


def _chunks(pipeline: "Pipeline", ids: Sequence[str], day: dt.date | None) -> Iterator[list[CustomerFeatures]]:
    """The features of ``ids`` a chunk at a time (ids the store lacks are left out), with a
    progress bar: a million customers' features are never all alive at once."""
    with pipeline.progress.task("Audience", total=len(ids)) as advance:
        for start in range(0, len(ids), READ_CHUNK):
            chunk = ids[start:start + READ_CHUNK]
            yield pipeline.read_known(chunk, day)[0]
            advance(len(chunk))


def _audience_ids(pipeline: "Pipeline", campaign: Campaign) -> list[str]:
    if campaign.audience_ids is not None:
        from loyaltylens_core.batch import read_ids_file

        return read_ids_file(campaign.audience_ids)
    name = pipeline.config.stages["feature_store"]
    if "ListsCustomers" not in pipeline.capabilities("feature_store"):
        raise UsageError(f"feature store {name!r} cannot list its customers, so campaign {campaign.name!r} "
                         "cannot select its audience from it", "give the campaign audience_ids = FILE")
    return list(pipeline.component("feature_store").customer_ids())


def _selected(pipeline: "Pipeline", campaign: Campaign, day: dt.date | None,
              counts: dict[str, int]) -> Iterator[tuple[list[CustomerFeatures], list[CustomerFeatures]]]:
    """The campaign's treated and held-out customers, a chunk of features at a time;
    ``counts`` gains ``considered`` (ids looked at) and ``unknown`` (ids the store lacks)."""
    ids = _audience_ids(pipeline, campaign)
    selects = campaign.selects()
    counts.update(considered=len(ids), unknown=len(ids))
    for chunk in _chunks(pipeline, ids, day):
        counts["unknown"] -= len(chunk)
        arms: dict[str, list[CustomerFeatures]] = {"treated": [], "holdout": []}
        for f in chunk:
            if selects(f):
                arms[campaign.arm(f.customer_id)].append(f)
        yield arms["treated"], arms["holdout"]


def select_audience(pipeline: "Pipeline", campaign: Campaign, day: dt.date | None) -> dict[str, Any]:
    """The campaign's customers split by arm: ``treated`` and ``holdout`` lists of
    (customer_id, channel), with ``considered`` and ``unknown``."""
    counts: dict[str, int] = {}
    arms: dict[str, list[tuple[str, str]]] = {"treated": [], "holdout": []}
    for treated, holdout in _selected(pipeline, campaign, day, counts):
        for arm, customers in (("treated", treated), ("holdout", holdout)):
            arms[arm].extend((f.customer_id, campaign.channel_for(f.channel_preference)) for f in customers)
    return {**counts, **arms}


def _audience_table(arms: dict[str, Any]) -> "pa.Table":
    import pyarrow as pa

    rows = [(customer, arm, channel) for arm in ("treated", "holdout") for customer, channel in arms[arm]]
    names = ("customer_id", "arm", "channel")
    return pa.table({n: pa.array([r[i] for r in rows], pa.string()) for i, n in enumerate(names)})


def dry_run(pipeline: "Pipeline", campaign: Campaign, day: dt.date | None = None) -> dict[str, Any]:
    """What a run would do, decided for real but counting nothing, writing nothing."""
    today = day or dt.datetime.now(dt.timezone.utc).date()
    check_day(campaign, today)
    started = time.perf_counter()
    slot = campaign.placement_in(pipeline.config.placement(campaign.placement), f"dry-run-{today:%Y%m%d}", preview=True)
    per_offer: collections.Counter[str] = collections.Counter()
    per_channel: collections.Counter[str] = collections.Counter()
    dropped: collections.Counter[str] = collections.Counter()
    capped = ineligible = treated = held = 0
    counts: dict[str, int] = {}
    for chunk, holdout in _selected(pipeline, campaign, day, counts):
        treated, held = treated + len(chunk), held + len(holdout)
        for f, row in zip(chunk, pipeline.rows_for(chunk, placement=slot) if chunk else []):
            reasons = dict(row["dropped"])
            dropped.update(reasons)
            if row["top_offer_id"] is not None:
                per_offer.update(row["candidate_offer_ids"])  # every offer handed out counts
                per_channel[campaign.channel_for(f.channel_preference)] += 1
            elif any(reasons.get(r) for r in CAP_REASONS):
                capped += 1
            else:
                ineligible += 1
    values = offer_values(pipeline, list(per_offer))
    return {
        "campaign": campaign.name, "day": today.isoformat(), "dry_run": True,
        "audience": treated + held, "considered": counts["considered"], "unknown": counts["unknown"],
        "treated": treated, "holdout": held, "offered": sum(per_channel.values()),
        "offers_handed_out": sum(per_offer.values()),
        "capped": capped, "ineligible": ineligible,
        "per_offer": [{"offer_id": o, "customers": n, "value": values.get(o), "cost": n * values.get(o, 0.0)}
                      for o, n in per_offer.most_common()],
        "per_channel": dict(sorted(per_channel.items())), "dropped": dict(sorted(dropped.items())),
        "cost": sum(n * values.get(o, 0.0) for o, n in per_offer.items()),
        "seconds": round(time.perf_counter() - started, 2),
    }


def offer_values(pipeline: "Pipeline", offer_ids: list[str]) -> dict[str, float]:
    """Each offer's ``value`` from the catalogue (a retriever that looks offers up by id)."""
    if not offer_ids or "LooksUpOffers" not in pipeline.capabilities("retriever"):
        return {}
    found = pipeline.component("retriever").offers_by_id(offer_ids)
    return {o: float(offer.value) for o, offer in found.items()}


def run(
    pipeline: "Pipeline", campaign: Campaign, *, day: dt.date | None = None, out: str | None = None,
    rerun: bool = False, chunk_size: int = 10_000, config_path: str | None = None, use: Sequence[str] = (),
) -> dict[str, Any]:
    """One campaign run (see the module docstring); returns its ``run.json``."""
    today = day or dt.datetime.now(dt.timezone.utc).date()
    check_day(campaign, today)
    run_id = run_id_for(pipeline, campaign, today, rerun)
    folder = campaign_dir(pipeline.config.core.data_dir, campaign) / run_id
    state_file = folder / "run.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else None
    if state is not None and state.get("status") == "done":
        return {**state, "already_done": True}
    started = time.perf_counter()
    exports = out or str(folder / "exports")
    if state is None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {"campaign": campaign.name, "run_id": run_id, "day": today.isoformat(), "status": "running",
                 "started_at": dt.datetime.now(dt.timezone.utc).isoformat(), "out": exports}
        write_bytes(state_file, json.dumps(state, indent=2).encode())
    exports = str(state.get("out") or exports)
    import pyarrow.compute as pc

    audience = _audience(pipeline, campaign, folder, day)
    customers = audience["customer_id"].to_pylist()
    treated = [c for c, arm in zip(customers, audience["arm"].to_pylist()) if arm == "treated"]
    decisions = folder / "decisions.parquet"
    summary = None
    if treated and not decisions.is_file():
        from loyaltylens_core.batch import run_batch

        tag = _tagger(campaign, run_id, dict(zip(customers, audience["channel"].to_pylist())))
        summary = run_batch(pipeline, treated, decisions, chunk_size=chunk_size, progress=pipeline.progress,
                            config_path=config_path, use=use, placement=campaign.placement_key(run_id), as_of=day,
                            batch_id=run_id, tag=tag, source="campaign")
    table = _read_decisions(decisions)
    if treated and summary is None:
        pipeline.after_batch(table, "campaign")  # a crash after the batch: record again (idempotent)
    _record_unoffered(pipeline, table)
    held = audience.filter(pc.equal(audience["arm"], "holdout"))
    if held.num_rows and pipeline.config.core.record_impressions:
        ids = held["customer_id"].to_pylist()
        record_offerless(pipeline, campaign, run_id, pipeline.read_known(ids, day)[0],
                         dict.fromkeys(ids, "holdout"), dict(zip(ids, held["channel"].to_pylist())))
    written = write_exports(table, campaign, exports)
    offered = int(table.num_rows - table["top_offer_id"].null_count) if table.num_rows else 0
    state.update({
        "status": "done", "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "treated": len(treated), "holdout": audience.num_rows - len(treated), "offered": offered,
        "not_offered": len(treated) - offered - (summary.rejects if summary else 0),
        "rejected": summary.rejects if summary else 0, "exports": written,
        "resumed": summary.resumed if summary else len(treated),
        "seconds": round(time.perf_counter() - started, 2),
        "engine": pipeline.config.stages["batch_engine"],
    })
    write_bytes(state_file, json.dumps(state, indent=2).encode())
    return state


def _audience(pipeline: "Pipeline", campaign: Campaign, folder: Path, day: dt.date | None) -> "pa.Table":
    """The run's customers and arms: selected once, then read back on every resume."""
    import pyarrow.parquet as pq

    path = folder / "audience.parquet"
    if path.is_file():
        return pq.read_table(path)
    table = _audience_table(select_audience(pipeline, campaign, day))
    if table.num_rows == 0:
        raise UsageError(f"campaign {campaign.name!r} selects no customer", "check its audience rule or ids file")
    write_parquet(path, table)
    return table


def _tagger(campaign: Campaign, run_id: str, channels: dict[str, str]) -> Any:
    """Adds the campaign's arm, channel and run to each row's ``variants`` (what the
    impressions carry into ``report --campaign``)."""
    import pyarrow as pa

    def tag(table: "pa.Table") -> "pa.Table":
        variants = []
        for customer, existing in zip(table["customer_id"].to_pylist(), table["variants"].to_pylist()):
            variants.append([*(existing or []), (ARM_KEY.format(campaign.name), "treated"),
                             (CHANNEL_KEY.format(campaign.name), channels.get(customer, campaign.channels[0])),
                             (RUN_KEY.format(campaign.name), run_id)])
        column = pa.array(variants, table.schema.field("variants").type)
        return table.set_column(table.schema.get_field_index("variants"), "variants", column)

    return tag


def _record_unoffered(pipeline: "Pipeline", table: "pa.Table") -> None:
    """Treated customers left without an offer (caps, frequency, eligibility) as impressions
    with none: the report compares everyone the campaign meant to treat with the holdout
    (intention to treat), or capping would flatter the treated arm."""
    import pyarrow.compute as pc

    from loyaltylens_core.kernel.feedback import from_batch

    unoffered = table.filter(pc.is_null(table["top_offer_id"]))
    if unoffered.num_rows and pipeline.config.core.record_impressions:
        pipeline.component("feedback_store").record_impressions(
            from_batch(unoffered, dt.datetime.now(dt.timezone.utc), "campaign", offered_only=False))


def record_offerless(pipeline: "Pipeline", campaign: Campaign, run_id: str, features: Sequence[CustomerFeatures],
                     arms: dict[str, str], channels: dict[str, str]) -> None:
    """Customers sent nothing (their features; arm and channel by customer id) as
    impressions with no offer (ids ``<run>-<customer>``, so a resumed run records them
    once), scored like the treated ones."""
    import pyarrow as pa

    from loyaltylens_core.kernel.feedback import impression_schema

    if not features or not pipeline.config.core.record_impressions:
        return
    scores = pipeline.predict_many(features)
    now = dt.datetime.now(dt.timezone.utc)
    rows = {
        "impression_id": [f"{run_id}-{f.customer_id}" for f in features], "shown_at": [now] * len(features),
        "customer_id": [f.customer_id for f in features], "offer_id": [None] * len(features),
        "offer_category": [None] * len(features), "tier": [f.tier for f in features],
        "channel": [f.channel_preference for f in features], "score": [s.score for s in scores],
        "model_version": [s.model_version for s in scores], "prompt_version": [None] * len(features),
        "source": ["campaign"] * len(features),
        "variants": [[(ARM_KEY.format(campaign.name), arms[f.customer_id]),
                      (CHANNEL_KEY.format(campaign.name), channels[f.customer_id]),
                      (RUN_KEY.format(campaign.name), run_id)] for f in features],
    }
    pipeline.component("feedback_store").record_impressions(pa.table(rows, schema=impression_schema()))


def _read_decisions(path: Path) -> "pa.Table":
    import pyarrow.parquet as pq

    from loyaltylens_core.kernel.rows import schema

    return pq.read_table(path) if path.is_file() else schema().empty_table()


def export_table(table: "pa.Table", campaign: Campaign) -> "pa.Table":
    """Offered customers as a channel tool reads them: the top offer and its
    copy, and every offer the placement holds (``offer_ids``, best first, space-separated)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    offered = table.filter(pc.is_valid(table["top_offer_id"]))

    def label(key: str) -> Any:  # one key of the variants map, column-wise (no dict per row)
        return pc.map_lookup(offered["variants"], pa.scalar(key.format(campaign.name)), "first")

    channel = pc.fill_null(label(CHANNEL_KEY), campaign.channels[0])
    run = label(RUN_KEY)
    return pa.table({
        "customer_id": offered["customer_id"], "offer_id": offered["top_offer_id"],
        "offer_title": offered["top_offer_title"], "offer_category": offered["top_offer_category"],
        "headline": offered["headline"], "body": offered["body"], "cta": offered["cta"],
        "offer_ids": pc.binary_join(offered["candidate_offer_ids"], " "),
        "channel": channel, "campaign": pa.repeat(pa.scalar(campaign.name), offered.num_rows),
        "run_id": run, "impression_id": offered["impression_id"],
    })


def write_exports(table: "pa.Table", campaign: Campaign, out: str) -> list[dict[str, Any]]:
    """``<out>/<campaign>-<channel>.parquet`` and ``.csv`` per channel (every channel gets
    its files, empty when nobody is sent on it), each written whole or not at all."""
    import pyarrow.compute as pc

    rows = export_table(table, campaign)
    written = []
    for channel in campaign.channels:
        part = rows.filter(pc.equal(rows["channel"], channel))
        for suffix in ("parquet", "csv"):
            target = f"{out.rstrip('/')}/{campaign.name}-{channel}.{suffix}"
            _write(target, part, suffix)
            written.append({"channel": channel, "format": suffix, "path": target, "customers": part.num_rows})
    return written


def _write(target: str, table: "pa.Table", suffix: str) -> None:
    from loyaltylens_core.sdk.storage import filesystem_for, storage_errors

    if "://" not in target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == "parquet":
            write_parquet(path, table)
        else:
            write_bytes(path, _csv(table))
        return
    import pyarrow.parquet as pq

    filesystem, key = filesystem_for(target)
    with storage_errors(target):
        if suffix == "parquet":
            pq.write_table(table, key, filesystem=filesystem)
        else:
            with filesystem.open_output_stream(key) as stream:
                stream.write(_csv(table))


def _csv(table: "pa.Table") -> bytes:
    """Plain CSV with a header (what every campaign tool imports), quoted only where needed."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    sink = pa.BufferOutputStream()
    sink.write((",".join(table.column_names) + "\n").encode())  # pyarrow would quote every header name
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return bytes(sink.getvalue())
