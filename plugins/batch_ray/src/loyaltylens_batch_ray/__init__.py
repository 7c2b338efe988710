"""LoyaltyLens ``batch_engine`` ``ray``: the same batch on Ray Data, locally or on a cluster.

    loyaltylens --use batch_engine=ray batch --all --out results.parquet

Ray is imported only when this engine runs a batch.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class RayBatchSettings(PluginSettings):
    """``[batch_engine.ray]`` in loyaltylens.toml, or LOYALTYLENS_BATCH_ENGINE_RAY__<SETTING>."""

    address: str = Field(
        "", description='Ray to use: "" starts a local Ray for the job, "auto" joins a running one, '
                        'or "ray://host:10001" (Ray Client)')
    num_workers: int = Field(2, ge=1, le=10_000, description="Scoring actors (each builds the pipeline once)")
    cpus_per_worker: float = Field(
        0.5, gt=0, le=64, description="CPUs each actor reserves; fractional leaves room for Ray Data's read tasks")
    cpus_per_read: float = Field(
        0.25, gt=0, le=64, description="CPUs each Ray Data read task asks for (fractional fits beside the actors)")
    batch_size: int = Field(2048, ge=1, le=1_000_000, description="Customers per map_batches call")
    object_store_memory_mb: int = Field(
        512, ge=78, description="Object store of a local Ray started for the job (ignored when joining one)")
    stall_timeout_s: float = Field(
        600, gt=0, description="Fail, naming the stuck stage, when no results arrive for this long")
    staging_dir: str = Field(
        "", description="Where the driver writes the customers' features for the workers (a path every "
                        "worker can read); default: inside the output's parts directory")


def build(settings: RayBatchSettings, context: StageContext) -> Any:
    from .engine import RayBatchEngine

    return RayBatchEngine(settings, context)


@hookimpl
def register_batch_engines(register: Register) -> None:
    register("ray", build, settings=RayBatchSettings,
             description="Ray Data actors run the batched stages; results identical to local")
