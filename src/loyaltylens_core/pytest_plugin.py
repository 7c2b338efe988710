"""The pytest plugin LoyaltyLens installs (entry point ``pytest11``): the
``loyaltylens_pipeline`` fixture. Any project with loyaltylens installed gets it:

    def test_my_generator(loyaltylens_pipeline):
        pipeline = loyaltylens_pipeline(extra_plugins=[my_plugin], use=["generator=mine"])
        assert pipeline.run("C001").copy_.headline  # `copy` in JSON

Every stage is set to ``fake`` (``loyaltylens_core.sdk.testing.FakePlugin``) unless ``use``
says otherwise; no entry points are loaded, so the test sees exactly the plugins it
passes. The pipeline records impressions as ``loyaltylens run`` does.

Importing this module at collection costs nothing: the fakes, the contracts and the
pipeline are imported when the fixture is first used (as datasette's pytest plugin does).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pytest

if TYPE_CHECKING:
    from loyaltylens_core.kernel.pipeline import Pipeline
    from loyaltylens_core.sdk.testing import FakePlugin


@pytest.fixture
def loyaltylens_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Build a Pipeline from fake plugins (and any you pass), isolated from the user's
    config, environment and installed plugins."""
    from loyaltylens_core.loop.impressions import open_pipeline
    from loyaltylens_core.sdk.testing import ALL_FAKE, FakePlugin

    for var in list(__import__("os").environ):
        if var.startswith("LOYALTYLENS_") or var == "DEPLOY_TARGET":
            monkeypatch.delenv(var)
    monkeypatch.setenv("LOYALTYLENS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)

    def build(
        *,
        fake: "FakePlugin | None" = None,
        extra_plugins: Sequence[object] = (),
        use: Sequence[str] = (),
        config_path: str | None = None,
    ) -> "Pipeline":
        plugins = [fake or FakePlugin(), *extra_plugins]
        return open_pipeline(config_path, use=[*ALL_FAKE, *use], extra_plugins=plugins, entry_points=False)

    return build


