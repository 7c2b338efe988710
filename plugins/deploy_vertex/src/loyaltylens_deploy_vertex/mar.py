"""Build a TorchServe ``model.mar`` from a LoyaltyLens model archive, and load one the way
TorchServe's worker does (for checks and tests).

Vertex AI's prebuilt PyTorch prediction containers need ``model.mar`` (not model.pt) in
the model's artifact directory. It is built with torch-model-archiver from the same
TorchScript ``model.pt`` and ``spec.json`` as the SageMaker archive, plus the shared
``inference.py`` and a handler that speaks Vertex's instances/predictions format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

from loyaltylens_core.sdk.archive import read_spec, safe_extract
from loyaltylens_core.kernel.errors import StageError


def build_mar(archive: Path, out_dir: Path, model_name: str = "model") -> Path:
    """``out_dir/model.mar`` from a model.tar.gz made by ``loyaltylens deploy package``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ll-mar-") as work:
        source = safe_extract(archive, Path(work) / "archive")
        for path in source.rglob("*"):  # zip (the .mar) cannot store pre-1980 times
            os.utime(path)
        for needed in ("model.pt", "spec.json", "code/inference.py"):
            if not (source / needed).is_file():
                raise StageError(f"{archive} has no {needed}", "build it with `loyaltylens deploy package`")
        handler = Path(work) / "handler.py"
        handler.write_bytes(resources.files("loyaltylens_deploy_vertex").joinpath("torchserve_handler.py").read_bytes())
        version = read_spec(archive).get("model_version", "1")
        command = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", model_name, "--version", str(version),
            "--serialized-file", str(source / "model.pt"), "--handler", str(handler),
            "--extra-files", f"{source / 'spec.json'},{source / 'code' / 'inference.py'}",
            "--export-path", str(out_dir), "--force",
        ]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise StageError(f"torch-model-archiver failed: {last}", "check the model archive")
    mar = out_dir / f"{model_name}.mar"
    if not mar.is_file():
        raise StageError("torch-model-archiver wrote no model.mar", "check the model archive")
    return mar


def extract_mar(mar: Path, dest: Path) -> Path:
    """A .mar is a zip: extract it after checking every entry stays inside ``dest``."""
    with zipfile.ZipFile(mar) as zf:
        for name in zf.namelist():
            target = (dest / name).resolve()
            if not str(target).startswith(str(dest.resolve())):
                raise StageError(f"refused to extract {mar}: entry {name!r} points outside", "rebuild it")
        zf.extractall(dest)
    return dest


def load_in_torchserve(mar: Path, workdir: Path) -> Any:
    """Load ``mar`` with TorchServe's own model loader, as its worker process does.

    Returns a ``predict(list_of_request_bodies) -> list_of_replies`` function.
    """
    from ts.model_loader import TsModelLoader

    model_dir = extract_mar(mar, workdir / "model")
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    handler = manifest["model"]["handler"]
    sys.path.insert(0, str(model_dir))
    for module in ("handler", "inference"):
        sys.modules.pop(module, None)
    service = TsModelLoader().load(manifest["model"]["modelName"], str(model_dir), handler, None, 1)

    def predict(bodies: list[Any]) -> list[Any]:
        return service._entry_point([{"body": b} for b in bodies], service.context)

    return predict
