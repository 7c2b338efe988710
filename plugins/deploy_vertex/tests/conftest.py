from __future__ import annotations

import pytest

from loyaltylens_deploy_vertex.testing import LocalVertex, gcs_fetcher, start_storage_emulator


@pytest.fixture(scope="session")
def gcs():
    proc, url = start_storage_emulator()
    yield url
    proc.kill()
    proc.wait()


@pytest.fixture
def vertex(gcs):
    with LocalVertex(gcs_fetcher(gcs)) as server:
        yield server
