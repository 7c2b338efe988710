"""The entry-point cache: a start reuses the last scan, and any install, removal or edit of
a plugin's metadata is seen on the very next start."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loyaltylens_core.kernel import discovery
from loyaltylens_core.kernel.registry import load_registry
from loyaltylens_core.sdk.standins import make_distribution

SOURCE = "from loyaltylens_core import hookimpl\n"
GROUP = "loyaltylens"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOYALTYLENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LOYALTYLENS_NO_DISCOVERY_CACHE", raising=False)
    site = tmp_path / "site"
    make_distribution(site, "acme-offers", "acme_offers", SOURCE, "acme")
    monkeypatch.syspath_prepend(str(site))
    return site


def names(found: list[discovery.FoundEntryPoint]) -> dict[str, str]:
    return {ep.name: ep.value for ep in found}


def no_scan(group: str) -> list[discovery.FoundEntryPoint]:
    raise AssertionError("scanned although nothing on sys.path changed")


def test_second_start_reads_the_cache(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = discovery.entry_points(GROUP)
    assert names(first)["acme"] == "acme_offers"
    assert first == discovery.scan(GROUP)
    monkeypatch.setattr(discovery, "scan", no_scan)
    assert discovery.entry_points(GROUP) == first


def test_cached_entry_point_carries_its_distribution(site: Path) -> None:
    discovery.entry_points(GROUP)
    acme = {ep.name: ep for ep in discovery.entry_points(GROUP)}["acme"]
    assert (acme.dist_name, acme.dist_version, acme.module) == ("acme-offers", "1.2.3", "acme_offers")


def test_an_edited_entry_point_is_seen_on_the_next_start(site: Path) -> None:
    discovery.entry_points(GROUP)
    (site / "acme_offers_v2.py").write_text(SOURCE)
    (site / "acme_offers-1.2.3.dist-info" / "entry_points.txt").write_text(
        "[loyaltylens]\nacme = acme_offers_v2\n")
    assert names(discovery.entry_points(GROUP))["acme"] == "acme_offers_v2"


def test_installing_and_removing_a_plugin_is_seen(site: Path) -> None:
    discovery.entry_points(GROUP)
    make_distribution(site, "beta-offers", "beta_offers", SOURCE, "beta")
    assert "beta" in names(discovery.entry_points(GROUP))
    shutil.rmtree(site / "beta_offers-1.2.3.dist-info")
    assert "beta" not in names(discovery.entry_points(GROUP))


def test_a_new_sys_path_entry_is_scanned(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    discovery.entry_points(GROUP)
    other = tmp_path / "other-site"
    make_distribution(other, "gamma-offers", "gamma_offers", SOURCE, "gamma")
    monkeypatch.syspath_prepend(str(other))
    assert "gamma" in names(discovery.entry_points(GROUP))


def test_a_corrupt_cache_is_rescanned_and_rewritten(site: Path, tmp_path: Path) -> None:
    discovery.entry_points(GROUP)
    [cache] = (tmp_path / "cache").glob("entry-points-*.json")
    cache.write_text("{not json")
    assert "acme" in names(discovery.entry_points(GROUP))
    assert cache.read_text().startswith("{\"")


def test_an_unwritable_cache_dir_only_costs_a_scan(site: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LOYALTYLENS_CACHE_DIR", str(blocker / "cache"))
    assert "acme" in names(discovery.entry_points(GROUP))


def test_the_cache_can_be_turned_off(site: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOYALTYLENS_NO_DISCOVERY_CACHE", "1")
    assert "acme" in names(discovery.entry_points(GROUP))
    assert not (tmp_path / "cache").exists()


def test_registry_lists_a_plugin_found_through_the_cache(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken import is still reported by name when the entry point came from the cache."""
    (site / "acme_offers.py").write_text("raise ImportError('acme needs libfoo')\n")
    discovery.entry_points(GROUP)
    monkeypatch.setattr(discovery, "scan", no_scan)
    broken = {b.plugin: b for b in load_registry().broken}
    assert "acme needs libfoo" in broken["acme"].error
    assert (broken["acme"].distribution, broken["acme"].version) == ("acme-offers", "1.2.3")
