"""
Cluster secrets kept on the controller.

`secret(key)` returns, in this order: the environment variable `HOMECLOUD_<KEY>` (upper case),
or the value stored in `.secrets/<store>.json` at the repository root, or a new random value
that it stores there first. The folder is 0700 and the file 0600, and both are ignored by git.
Generating once and storing makes every later run use the same value: re-runs stay idempotent.

Values returned are plain strings (inventory data must stay plain data); the operations wrap
them in pyinfra's `HiddenValue` wherever they pass through a command.
"""

from __future__ import annotations

import json
import os
import secrets as _random
import string
from pathlib import Path

from .model import REPO_ROOT

SECRETS_DIR = REPO_ROOT / ".secrets"
ALPHABET = string.ascii_letters + string.digits


def secret(key: str, length: int = 32, store: str = "homecloud", directory: Path | None = None) -> str:
    env = os.environ.get(f"HOMECLOUD_{key.upper()}")
    if env:
        return env
    folder = Path(directory) if directory else SECRETS_DIR
    path = folder / f"{store}.json"
    values: dict[str, str] = {}
    if path.exists():
        values = json.loads(path.read_text(encoding="utf-8") or "{}")
    if key in values:
        return values[key]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    values[key] = "".join(_random.choice(ALPHABET) for _ in range(length))
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(values, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return values[key]
