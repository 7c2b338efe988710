"""Experiment tracking in MLflow (stage ``tracking``, selected with ``--use tracking=mlflow``).

This module is the entry point: it registers the plugin and stays cheap to import. MLflow
is imported only when the tracker is built, i.e. by `loyaltylens train` with it selected.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class MLflowTrackerSettings(PluginSettings):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (http(s)://server, databricks, sqlite:///...); "
                          "default sqlite:///<data_dir>/mlflow/mlflow.db. MLFLOW_TRACKING_URI also works")
    artifact_location: str | None = Field(
        None, description="Where a new experiment keeps artifacts; default <data_dir>/mlflow/artifacts "
                          "for a local tracking URI, the server's choice otherwise")
    experiment: str = Field("loyaltylens-propensity", min_length=1, description="Experiment name")
    registered_model: str | None = Field(
        "loyaltylens-propensity", description="Register each trained version under this name; empty: do not register")


def build(settings: MLflowTrackerSettings, context: StageContext) -> Any:
    from .tracker import MLflowTracker

    return MLflowTracker(settings, context.data_dir)


@hookimpl
def register_trackers(register: Register) -> None:
    register("mlflow", build, settings=MLflowTrackerSettings,
             description="Training runs, metrics per epoch, model card and model in MLflow, versions registered")
