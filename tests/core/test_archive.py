"""Safe extraction: a bad entry is refused before anything is written."""

from __future__ import annotations

import io
import tarfile

import pytest

from loyaltylens_core.sdk.archive import safe_extract
from loyaltylens_core.kernel.errors import StageError, UsageError


def make(path, entries):
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, target in entries:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            else:
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))


@pytest.mark.parametrize("entries, message", [
    ([("ok.txt", "file", None), ("../escape.txt", "file", None)], "points outside"),
    ([("/etc/evil", "file", None)], "points outside"),
    ([("a/../../b", "file", None)], "points outside"),
    ([("link", "sym", "/etc/passwd")], "link 'link' points outside"),
    ([("d/link", "sym", "../../x")], "points outside"),
])
def test_bad_entries_are_refused_and_nothing_is_written(tmp_path, entries, message):
    archive = tmp_path / "a.tar.gz"
    make(archive, entries)
    dest = tmp_path / "out"
    with pytest.raises(StageError, match=message):
        safe_extract(archive, dest)
    assert not dest.exists() or not any(dest.iterdir())
    assert not (tmp_path / "escape.txt").exists()


def test_good_archive_extracts(tmp_path):
    archive = tmp_path / "a.tar.gz"
    make(archive, [("code/inference.py", "file", None), ("model.pt", "file", None)])
    dest = safe_extract(archive, tmp_path / "out")
    assert (dest / "code" / "inference.py").read_bytes() == b"x"


def test_missing_and_corrupt_archives(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        safe_extract(tmp_path / "none.tar.gz", tmp_path / "out")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(StageError, match="not a readable tar.gz"):
        safe_extract(bad, tmp_path / "out")


def test_read_spec_without_extracting(tmp_path):
    from loyaltylens_core.sdk.archive import read_spec
    from loyaltylens_core.sdk.testing import write_tiny_archive

    assert read_spec(write_tiny_archive(tmp_path / "m.tar.gz"))["model_version"] == "tiny_v1"
    not_ours = tmp_path / "other.tar.gz"
    make(not_ours, [("model.pt", "file", None)])
    with pytest.raises(UsageError, match="not a LoyaltyLens model archive"):
        read_spec(not_ours)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"nope")
    with pytest.raises(UsageError, match="not a LoyaltyLens model archive"):
        read_spec(garbage)
