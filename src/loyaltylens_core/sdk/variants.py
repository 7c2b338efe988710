"""Champion / challenger traffic split at the endpoint: production variants with weights.

``deploy up --variants champion=90,challenger=10`` packages one archive per variant (the
champion version, the newest challenger, or any version by name) and ``variants.json``
naming each variant's version, archive and weight. A deploy target serves them as one
endpoint whose requests are split by weight (SageMaker production variants, the local
endpoint); the variant that answered is in every reply, and ``deploy weights`` changes the
split on the running endpoint without replacing it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from loyaltylens_core.kernel.errors import UsageError

VARIANTS_MANIFEST = "variants.json"
VARIANT_HEADER = "X-Amzn-Invoked-Production-Variant"   # what SageMaker's runtime answers with
TARGET_VARIANT_HEADER = "X-Amzn-SageMaker-Target-Variant"
_NAME = re.compile(r"^[A-Za-z0-9](-*[A-Za-z0-9])*$")   # SageMaker's VariantName pattern, no underscores
_EXAMPLE = "e.g. --variants champion=90,challenger=10"


def parse_weights(text: str, at_least: int = 2) -> dict[str, float]:
    """``"champion=90,challenger=10"`` -> {"champion": 90.0, "challenger": 10.0}; names are
    ``champion``, ``challenger`` or a model version (or, for a running endpoint, its variant
    names). A new split needs ``at_least`` two variants; a weight update may name one."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name or weight < 0:
            raise UsageError(f"variant {part!r} is not NAME=WEIGHT with a weight of 0 or more", _EXAMPLE)
        if name in weights:
            raise UsageError(f"variant {name!r} is given twice", _EXAMPLE)
        weights[name] = weight
    if len(weights) < at_least:
        raise UsageError("a traffic split needs at least two variants", _EXAMPLE)
    if at_least > 1 and not sum(weights.values()):
        raise UsageError("every variant has weight 0, so no variant would get traffic", _EXAMPLE)
    return weights


def variant_name(key: str) -> str:
    """A valid SageMaker VariantName for a key (``propensity_v3`` -> ``propensity-v3``)."""
    name = key.replace("_", "-")
    if not _NAME.match(name) or len(name) > 63:
        raise UsageError(f"variant {key!r} cannot name a production variant", "use letters, digits and dashes")
    return name


def resolve_versions(store: Any, keys: list[str]) -> dict[str, str]:
    """Each key's model version: ``champion`` the champion (else the newest), ``challenger``
    the newest version that is not the champion, anything else a version by name."""
    versions = store.versions()
    champion = store.serving()
    out: dict[str, str] = {}
    for key in keys:
        if key == "champion":
            version = champion
        elif key == "challenger":
            others = [v for v in versions if v != champion]
            version = others[-1] if others else None
            if version is None:
                raise UsageError("there is no challenger (only the champion is trained)",
                                 "train one with `loyaltylens train`, or name versions: --variants propensity_v1=90,...")
        else:
            version = key if key in versions else None
            if version is None:
                raise UsageError(f"variant {key!r} is neither champion, challenger nor a model version",
                                 f"versions: {', '.join(versions) or 'none'}")
        if version is None:
            raise UsageError("no trained model version", "run `loyaltylens train`")
        out[key] = version
    if len(set(out.values())) < len(out):
        raise UsageError(f"two variants would serve the same version ({out})", "split traffic between different versions")
    return out


def build_variant_package(model: Any, weights: dict[str, float], out_dir: Path) -> dict[str, Any]:
    """One archive per variant and ``variants.json``, written beside and renamed into place.
    ``model`` is the propensity component (VersionedModels, LoadsVersions, Exportable): each
    version is loaded and exported in turn, then the one it served is loaded again."""
    from loyaltylens_core.kernel.contracts import Exportable, LoadsVersions, VersionedModels
    from loyaltylens_core.sdk.archive import build_archive, staged_directory

    if not (isinstance(model, VersionedModels) and isinstance(model, LoadsVersions) and isinstance(model, Exportable)):
        raise UsageError("the selected propensity plugin cannot export chosen versions, so it cannot split traffic",
                         "use --use propensity=torch (or lightgbm)")
    versions = resolve_versions(model.models, list(weights))
    serving = getattr(model, "version", None)
    manifest: dict[str, Any] = {"format": "loyaltylens-variants/1", "variants": {}}
    try:
        with staged_directory(Path(out_dir)) as staging:
            for key, weight in weights.items():
                name = variant_name(key)
                model.load(versions[key])
                spec = build_archive(model, staging / f"{name}.tar.gz")
                manifest["variants"][name] = {"archive": f"{name}.tar.gz", "weight": weight,
                                              "model_version": spec.get("model_version")}
            (staging / VARIANTS_MANIFEST).write_text(json.dumps(manifest, indent=2))
    finally:
        if serving:
            model.load(serving)
    return manifest


def read_variants(package: Path) -> dict[str, Any] | None:
    """A variant package's manifest, or None when ``package`` is not one."""
    path = Path(package) / VARIANTS_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        raise UsageError(f"{path} is not JSON", "package again with `loyaltylens deploy package --variants ...`") from None
    return manifest


def check_weights(weights: dict[str, float], known: list[str]) -> dict[str, float]:
    """Weights for a running endpoint's variants, by their names: every name known."""
    named = {variant_name(k): v for k, v in weights.items()}
    unknown = sorted(set(named) - set(known))
    if unknown:
        raise UsageError(f"the endpoint has no variant {unknown[0]!r}", f"its variants: {', '.join(known)}")
    return named
