"""The default ``batch_engine``: every chunk through this process's pipeline, in order.

On one machine this is the fastest engine (no serialisation, one model and index in
memory); a cluster engine such as ``ray`` runs the same batched stage methods on workers.
"""

from __future__ import annotations

from typing import Any

from loyaltylens_core import Register, StageContext, hookimpl
from loyaltylens_core.plugins import NoSettings


class LocalBatchEngine:
    workers = 1

    def run(self, job: Any) -> None:
        from loyaltylens_core.batch import run_in_process

        run_in_process(job)


def build(settings: NoSettings, context: StageContext) -> LocalBatchEngine:
    return LocalBatchEngine()


@hookimpl
def register_batch_engines(register: Register) -> None:
    register("local", build, description="Every chunk in this process")
