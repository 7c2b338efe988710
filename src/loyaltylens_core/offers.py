"""The offer catalogue as every retriever sees it: loaded and validated the same way,
embedded from the same text, fingerprinted the same way (so any index knows when it is
stale). Retrievers live in separate plugins; this keeps them consistent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from .contracts import Offer
from .errors import ConfigError


def offer_text(offer: Offer) -> str:
    """What gets embedded for an offer: words a customer description can match."""
    return f"{offer.title}. {offer.description} ({offer.category.replace('_', ' ')} offer)"


def load_catalogue(path: Path) -> list[Offer]:
    """Offers from a JSON list, or one line saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"offer catalogue {path} does not exist", "run `loyaltylens seed` or set catalogue")
    try:
        raw = json.loads(path.read_text())
        offers = [Offer.model_validate(item) for item in raw]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"offer catalogue {path} is not valid JSON: {exc}", "fix the file") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(
            f"offer catalogue {path}: field {'.'.join(map(str, err['loc']))!r}: {err['msg']}",
            "fix the offer",
        ) from None
    if not offers:
        raise ConfigError(f"offer catalogue {path} is empty", "add offers")
    return offers


def catalogue_fingerprint(offers: Sequence[Offer], embedder: Any) -> str:
    """Changes when any offer or the embedding model changes: an index built under another
    fingerprint is stale."""
    digest = hashlib.sha256(getattr(embedder, "name", type(embedder).__name__).encode())
    for offer in offers:
        digest.update(offer.model_dump_json().encode())
    return digest.hexdigest()[:16]
