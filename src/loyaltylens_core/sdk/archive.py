"""Model archives for deploy targets: build ``model.tar.gz`` and extract archives safely.

The archive follows the SageMaker PyTorch layout: ``model.pt`` and ``spec.json`` at the
root, ``code/inference.py`` beside them. Every extraction anywhere in the project goes
through ``safe_extract``: an entry with ``..``, an absolute path or a link out of the
destination is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from loyaltylens_core.kernel.errors import StageError, UsageError


def inference_script() -> bytes:
    return resources.files("loyaltylens_core.sdk.serving").joinpath("inference.py").read_bytes()


def build_archive(model: Any, out_path: Path) -> dict[str, Any]:
    """Export the propensity component into ``out_path`` (a .tar.gz), atomically."""
    from loyaltylens_core.kernel.contracts import Exportable

    if not isinstance(model, Exportable):
        raise UsageError(
            "the selected propensity plugin cannot export a model for serving",
            "select one with an export() method, e.g. --use propensity=torch",
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ll-archive-") as work:
        spec = model.export(Path(work))
        tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
        try:
            with tarfile.open(tmp, "w:gz") as tar:
                for name in ("model.pt", "spec.json"):
                    tar.add(Path(work) / name, arcname=name)
                script = inference_script()
                info = tarfile.TarInfo("code/inference.py")
                info.size = len(script)
                info.mode = 0o644
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(script))
            os.replace(tmp, out_path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return spec


TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
MANIFEST = "models.json"
GLOBAL_MODEL = "global"


def build_multi_model(model: Any, out_dir: Path) -> dict[str, Any]:
    """One archive per model that scores customers (``global.tar.gz`` and one per serving
    segment model, ``tier=gold.tar.gz``) and ``models.json`` naming them, in ``out_dir``: the
    layout of a SageMaker multi-model endpoint's S3 prefix. Written beside and renamed into
    place, so a failed export leaves the previous package whole."""
    from loyaltylens_core.kernel.contracts import SegmentedModels

    segments = model.serving_segment_models() if isinstance(model, SegmentedModels) else {}
    if not segments:
        raise UsageError("the propensity model has no segment models serving, so a multi-model package would hold "
                         "one model", "set segment_by and run `loyaltylens train`, or package one model without "
                         "--multi-model")
    manifest: dict[str, Any] = {"format": "loyaltylens-multi-model/1", "models": {}}
    with staged_directory(Path(out_dir)) as staging:
        for name, member in {GLOBAL_MODEL: model, **segments}.items():
            spec = build_archive(member, staging / f"{name}.tar.gz")
            manifest["models"][name] = {"target_model": f"{name}.tar.gz", "model_version": spec.get("model_version"),
                                        "bytes": (staging / f"{name}.tar.gz").stat().st_size}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


@contextlib.contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """A directory to write a package into, put in place of ``out_dir`` only when the block
    finishes: the old one is moved aside first and removed after, so a reader never sees
    half of either, and a failure leaves the old one whole."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield staging
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_manifest(package: Path) -> dict[str, Any]:
    path = Path(package) / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{path} is missing or not JSON, so the customer's target model is unknown",
                         "name it with --target-model, or package again with `loyaltylens deploy package --multi-model`") \
            from None
    return manifest


def target_model_for(manifest: dict[str, Any], features: Any) -> str:
    """The archive that scores this customer: its segment's ("tier=gold"), else the global one."""
    models = manifest.get("models", {})
    for name, entry in models.items():
        feature, _, value = name.partition("=")
        if value and getattr(features, feature, None) == value:
            return str(entry["target_model"])
    return str(models[GLOBAL_MODEL]["target_model"])


def read_spec(archive: Path) -> dict[str, Any]:
    """The spec.json of a model archive (model version, features), without extracting it."""

    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.extractfile("spec.json")
            spec = json.loads(member.read()) if member else None
    except (tarfile.TarError, KeyError, ValueError, OSError):
        spec = None
    if not isinstance(spec, dict):
        raise UsageError(f"{archive} is not a LoyaltyLens model archive (no spec.json)",
                         "build one with `loyaltylens deploy package`")
    return spec


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")) or ".." in path.parts:
        raise StageError(
            f"refused to extract {archive}: entry {member.name!r} points outside the archive",
            "rebuild the archive with `loyaltylens deploy package`",
        )
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        if target.is_absolute() or ".." in (path.parent / target).parts:
            raise StageError(
                f"refused to extract {archive}: link {member.name!r} points outside the archive",
                "rebuild the archive with `loyaltylens deploy package`",
            )
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise StageError(f"refused to extract {archive}: {member.name!r} is a special file", "rebuild it")


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract into ``dest`` after checking every entry; nothing is written if one is bad."""
    archive = Path(archive)
    if not archive.is_file():
        raise UsageError(f"model archive {archive} does not exist", "run `loyaltylens deploy package`")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            dest.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
            try:
                tar.extractall(staging, members=members, filter="data")
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(staging, dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except tarfile.TarError as exc:
        raise StageError(f"model archive {archive} is not a readable tar.gz: {exc}", "rebuild it") from None
    return dest
