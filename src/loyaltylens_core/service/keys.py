"""API keys: from ``LOYALTYLENS_API_KEYS`` (``name:key,name:key``) or a keys file (one
``name:key`` a line), checked in constant time. Keys are never printed: errors name the
line, and the service knows callers by the key's name."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Mapping

from loyaltylens_core.kernel.errors import ConfigError

ENV_VAR = "LOYALTYLENS_API_KEYS"


def _parse(entries: list[tuple[str, str]]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for where, entry in entries:
        name, sep, key = entry.partition(":")
        name, key = name.strip(), key.strip()
        if not sep or not name or not key:
            raise ConfigError(f"API key entry at {where} is not name:key", "write one name:key per entry")
        if len(key) < 16:
            raise ConfigError(f"API key {name!r} at {where} is shorter than 16 characters", "use a long random key")
        if name in keys:
            raise ConfigError(f"API key name {name!r} at {where} is used twice", "give every key its own name")
        keys[name] = key
    return keys


def load_keys(env: Mapping[str, str], keys_file: Path | None) -> dict[str, str]:
    """name -> key from the environment and the keys file (both may be set)."""
    entries: list[tuple[str, str]] = []
    raw = env.get(ENV_VAR, "")
    entries += [(f"{ENV_VAR} entry {i}", e) for i, e in enumerate(raw.split(","), start=1) if e.strip()]
    if keys_file is not None:
        try:
            lines = Path(keys_file).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read API keys file {keys_file}: {exc.strerror}", "check api_keys_file") from None
        entries += [
            (f"{keys_file}:{n}", line) for n, line in enumerate(lines, start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    return _parse(entries)


def authenticate(authorization: str | None, keys: Mapping[str, str]) -> str | None:
    """The name of the key in an ``Authorization: Bearer KEY`` header, or None.

    Every configured key is compared, each with ``hmac.compare_digest``, so the time taken
    does not say which key (or how much of one) matched."""
    if not authorization:
        return None
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return None
    matched = None
    for name, key in keys.items():
        if hmac.compare_digest(presented.strip().encode(), key.encode()):
            matched = name
    return matched
