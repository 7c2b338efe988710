"""The default ``batch_engine``: every chunk through this process's pipeline, in order.

On one machine this is the fastest engine (no serialisation, one model and index in
memory); a cluster engine such as ``ray`` runs the same batched stage methods on workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loyaltylens_core import NoSettings, Register, StageContext, hookimpl

if TYPE_CHECKING:  # the contracts are not needed to list plugins (`loyaltylens plugins`)
    from loyaltylens_core.kernel.contracts import BatchJob


class LocalBatchEngine:
    workers = 1

    def run(self, job: BatchJob) -> None:
        job.run_here()


def build(settings: NoSettings, context: StageContext) -> LocalBatchEngine:
    return LocalBatchEngine()


@hookimpl
def register_batch_engines(register: Register) -> None:
    register("local", build, description="Every chunk in this process")
