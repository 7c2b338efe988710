"""Training runs as JSON lines in the data dir (the default ``tracking`` plugin).

Every `loyaltylens train` appends one line: when, which version and role, the
hyperparameters and data facts, the per-epoch history and the held-out metrics. The model
directory keeps the full card of each version; this file also keeps the runs whose
versions were later deleted, and is what `jq` or a notebook reads to compare runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl

KEPT = ("model_version", "role", "architecture", "feature_version", "horizon_days", "training_data_hash",
        "threshold", "hyperparameters", "metrics", "history")


class JsonlTrackingSettings(PluginSettings):
    path: Path | None = Field(None, description="The runs file; default <data_dir>/tracking/runs.jsonl")


class JsonlTracker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def log_training(self, card: dict[str, Any], model_dir: Any) -> dict[str, Any]:
        """One line, written with a single append (O_APPEND): concurrent trainings never
        interleave inside a line."""
        record = {"logged_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                  **{key: card[key] for key in KEPT if key in card},
                  "model_dir": str(model_dir) if model_dir is not None else None}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return {"runs_file": str(self.path)}


def build(settings: JsonlTrackingSettings, context: StageContext) -> JsonlTracker:
    return JsonlTracker(settings.path or context.data_dir / "tracking" / "runs.jsonl")


@hookimpl
def register_trackers(register: Register) -> None:
    register("jsonl", build, settings=JsonlTrackingSettings,
             description="Each training run as a JSON line in the data dir")
