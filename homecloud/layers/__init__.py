"""
The layers as code: one module per layer declares its keys (kind, default, doc, the groups that
read them), its cross-key rules (`check`) and the frozen settings its deploy function takes.

`LAYERS` is the order of the layers; `KEYS` every key they declare, once. group_data/all.py is
generated from them (`python -m homecloud.layers` writes it; tests/test_validation.py fails when
the file and the schemas drift apart).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from homecloud import REPO_ROOT
from homecloud.schema import Entries, Key, Kind, Layer, Section

from . import backup, base, davsync, dnas, hardening, k3s, keepalived, longhorn, network, nfs, platform, samba, services

LAYERS: tuple[Layer, ...] = tuple(m.LAYER for m in (network, base, hardening, keepalived, k3s, longhorn, dnas, samba, nfs, platform, services, davsync, backup))
KEYS: dict[str, Key] = {key.name: key for layer in LAYERS for key in layer.keys}
KINDS: dict[str, Kind] = {name: key.kind for name, key in KEYS.items()}
ENTRIES: dict[str, Entries] = {name: key.entries for name, key in KEYS.items() if key.entries is not None}
DEFAULTS_FILE = REPO_ROOT / "group_data" / "all.py"


def layer(name: str) -> Layer:
    return next(l for l in LAYERS if l.name == name)


def settings_of(name: str, data: Mapping[str, Any]):
    """The settings of layer `name` from a host's merged data (`host.data` or a dict)."""
    return layer(name).settings_from(data, KEYS)


def defaults() -> dict[str, Any]:
    return {name: key.default for name, key in KEYS.items()}


# --- group_data/all.py ------------------------------------------------------------------------

HEADER = '''"""
homecloud defaults: every key the deploys read, with its default and what it means.

GENERATED from the layer schemas (homecloud/layers/<layer>.py) by `python -m homecloud.layers`:
change a key there, not here.

pyinfra loads this file for every inventory run from the repository root. Override any key in
your inventory (per host, or in the group data of the inventory's `all` group), in a
`group_data/<group>.py` beside your inventory, or with `--data key=value`. Keys that are not
listed here are refused by the validation (a typo such as `k3s_verison` would otherwise be
silently ignored).

Secrets (marked SECRET) must come from you: the validation refuses a missing secret and the
example values shown in the docs. `homecloud.secrets.secret(...)` generates one on the
controller, once, and keeps it in `.secrets/<inventory>.json` (mode 0600, not committed).

Groups: `k3s_servers` (1, 3, 5 ... control-plane nodes with embedded etcd, they also hold the
virtual IP), `k3s_agents` (worker nodes), `dnas` (nodes that serve the decentralized NAS). A
node may be in `dnas` and in one of the k3s groups.
"""
'''

FOOTER = """
# pyinfra runs this file after the inventory file and before it connects: check the inventory
# there, with its --data overrides (homecloud/model.py, check_loading_inventory).
from homecloud.model import check_loading_inventory  # noqa: E402

check_loading_inventory()
"""

WIDTH = 96


def _heading(title: str) -> str:
    head = f"# --- {title} "
    return head + "-" * max(3, WIDTH - len(head))


def _literal(value: Any) -> str:
    """A Python literal with double quotes, as the file has always been written."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _assignment(key: Key) -> str:
    line = f"{key.name} = {_literal(key.default)}"
    if len(line) > WIDTH and isinstance(key.default, dict):
        body = "".join(f"    {_literal(k)}: {_literal(v)},\n" for k, v in key.default.items())
        return f"{key.name} = {{\n{body}}}"
    return line


def render_group_data() -> str:
    """The text of group_data/all.py: every key's doc comment and default, layer by layer."""
    parts = [HEADER]
    for item in (item for layer in LAYERS for item in layer.items):
        if isinstance(item, Section):
            parts.append("")
            parts.append(_heading(item.title))
            continue
        parts += [f"# {line}" if line else "#" for line in item.doc.splitlines()]
        parts.append(_assignment(item))
    parts.append("")
    parts.append(_heading("Validation") + FOOTER.rstrip("\n"))
    return "\n".join(parts).replace(HEADER + "\n\n", HEADER + "\n") + "\n"
