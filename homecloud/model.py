"""
The homecloud data model: the defaults in `group_data/all.py`, how an inventory's data merges
over them, and the validation that runs before any host is touched.

Three entry points use the same rules:

- `check_inventory(namespace, inventory_file)`, called at the end of an inventory file, so a
  broken inventory stops pyinfra while it loads the inventory, before it connects to anything;
- `check_loading_inventory()`, called by group_data/all.py, which the pyinfra CLI runs after the
  inventory file and before connecting: the same check with the `--data` overrides applied, for
  inventories that do not call `check_inventory()` too;
- `check_state(state)`, called first by every deploy file, on the data pyinfra really merged
  (including `--data` overrides), once per run: the check for the Python API and any other way
  in (after connecting).

Every key is declared once, in its layer's schema (`homecloud/layers/<layer>.py`): its kind,
default, doc and the layer's cross-key rules (`check`). What stays here spans layers: the
inventory's shape and groups, unknown keys, node addresses and the VIP, ssh_user/_sudo.

Both raise `InventoryError` listing every problem as "host: key: problem. Fix: ...".
"""

from __future__ import annotations

import difflib
import ipaddress
from pathlib import Path
from typing import Any, Iterable

from . import layers
from .run import this_run
from .schema import (  # noqa: F401  (re-exported: the operations and tests import them from here)
    GROUPS,
    INTERFACE_RE,
    KEEPALIVED_PASS_RE,
    SHARE_NAME_RE,
    UNIX_USER_RE,
    Cluster,
    HostSpec,
    InventoryError,
    Kind,
    did_you_mean,
    is_ip,
    kind_problem,
    node_ip,
)

from . import REPO_ROOT  # noqa: E402, F401  (re-exported: tests and lab import it from here)

DEFAULTS_FILE = REPO_ROOT / "group_data" / "all.py"


def load_defaults() -> dict[str, Any]:
    """The documented defaults: the public names of `group_data/all.py`."""
    return _exec_data_file(DEFAULTS_FILE)


def _exec_data_file(path: Path) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__file__": str(path)}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    return {
        key: value
        for key, value in namespace.items()
        if not key.startswith("_") and not callable(value) and not _is_module(value)
    }


def _is_module(value: Any) -> bool:
    return type(value).__name__ == "module"


def _connector_keys() -> set[str]:
    """Data keys pyinfra itself understands: connector settings and global arguments."""
    keys: set[str] = set()
    try:
        from pyinfra.api.arguments import all_argument_meta
        from pyinfra.api.connectors import get_all_connectors

        keys.update(all_argument_meta.keys())
        for connector in get_all_connectors().values():
            keys.update(getattr(connector, "data_meta", {}).keys())
    except Exception:  # pragma: no cover - pyinfra internals moved
        pass
    return keys


KNOWN_EXTRA_KEYS = {
    # Declared board architecture (optional): lets the validation refuse Longhorn on armv7
    # before connecting; the deploys still read the real architecture from the host.
    "node_arch",
    # Set by inventories/lab.py: the lab node's name and kind, for the lab tests.
    "lab_node",
}


# --- What each key holds ----------------------------------------------------------------------

ARCHES = ("amd64", "arm64", "armhf")

# Every data key the validation knows, with what it holds: the layers' keys (group_data/all.py
# documents them), KNOWN_EXTRA_KEYS, and the pyinfra settings homecloud itself relies on.
DATA_KINDS: dict[str, Kind] = {
    **layers.KINDS,
    "node_arch": Kind(choices=(None,) + ARCHES),
    "lab_node": Kind(optional=True),
    "ssh_user": Kind(optional=True),
    "_sudo": Kind(bool, optional=True),
}
# The list keys whose entries are dicts, with what one entry holds.
ENTRY_KINDS = layers.ENTRIES


# --- Building HostSpecs -----------------------------------------------------------------------


def _is_group(key: str, value: Any) -> bool:
    if key.startswith("_"):
        return False
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        value = value[0]
    if not isinstance(value, list):
        return False
    return all(isinstance(item, str) or (isinstance(item, tuple) and item and isinstance(item[0], str)) for item in value)


def hosts_from_inventory_namespace(
    namespace: dict[str, Any],
    inventory_file: str | None = None,
    group_data_dirs: Iterable[str] = (),
) -> tuple[list[HostSpec], list[str]]:
    """
    Merge an inventory file's groups with the group_data defaults the way pyinfra does
    (host data > group data > `all` > group_data/all.py), and report what pyinfra would
    silently ignore: duplicated host entries, groups and group_data files homecloud does not
    know, data written inline on the `all` group.
    """
    errors: list[str] = []
    # pyinfra puts every host of an inventory file in a group named after the file as well.
    file_group = Path(inventory_file).stem if inventory_file else None
    known_groups = ("all", *GROUPS, *([file_group] if file_group else []))
    # pyinfra's precedence: host data > group data (group_data/<group>.py over the data written
    # inline in the inventory) > `all` (group_data/all.py over inline `all` data).
    group_files: dict[str, dict[str, Any]] = {}
    folders = [REPO_ROOT / "group_data"]
    if inventory_file:
        inv_folder = Path(inventory_file).resolve().parent / "group_data"
        if inv_folder != folders[0]:
            folders.append(inv_folder)
    folders += [Path(folder) for folder in group_data_dirs]  # --group-data
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.glob("*.py")):
                if path.stem not in known_groups:
                    fix = did_you_mean(path.stem, known_groups, f"remove it, or rename it to a group: {', '.join(known_groups)}", shown="{}.py")
                    errors.append(
                        f"inventory: {_shown(path)}: there is no group `{path.stem}` (pyinfra never uses this data). Fix: {fix}"
                    )
                group_files.setdefault(path.stem, {}).update(_exec_data_file(path))

    groups: dict[str, tuple[list, dict]] = {}
    for key, value in namespace.items():
        if not _is_group(key, value):
            continue
        if isinstance(value, tuple):
            groups[key] = (list(value[0]), dict(value[1]))
        else:
            groups[key] = (list(value), {})
        if key not in known_groups:
            fix = did_you_mean(key, GROUPS, f"use {', '.join(GROUPS)}", cutoff=0.5)
            errors.append(
                f"inventory: {key}: a list of hosts is a pyinfra group, but `{key}` is not a homecloud group "
                f"(its hosts get no role). Fix: {fix} (a helper list that is not a group must start with _)"
            )

    all_data = dict(groups["all"][1]) if "all" in groups else {}
    for key in sorted(set(all_data) & set(group_files.get("all", {}))):
        errors.append(
            f"all: {key}: set on the inventory's `all` group, where pyinfra lets group_data/all.py override "
            f"it (with {group_files['all'][key]!r}). Fix: give cluster values to each host, as inventories/pi.py "
            "does with its _cluster dict"
        )
    all_data.update(group_files.get("all", {}))

    host_order: list[str] = []
    host_groups: dict[str, list[str]] = {}
    host_data: dict[str, dict[str, Any]] = {}
    malformed: set[str] = set()  # hosts whose data is not a dict: reported here, not validated
    for group, (members, gdata) in groups.items():
        seen_in_group: set[str] = set()
        for item in members:
            name, data = (item, {}) if isinstance(item, str) else (item[0], item[1] if len(item) > 1 else {})
            if not isinstance(data, dict):
                errors.append(
                    f"{name}: inventory: its data in group `{group}` is `{data!r}`, not a dict. "
                    f'Fix: write the host as ("{name}", {{"ssh_hostname": ..., "node_ip": ...}})'
                )
                malformed.add(name)
                data = {}
            data = dict(data)
            if name in seen_in_group:
                errors.append(
                    f"{name}: inventory: the host is listed twice in group `{group}`. "
                    "Fix: list each host once per group (host names must be unique)."
                )
            seen_in_group.add(name)
            if name not in host_groups:
                host_order.append(name)
                host_groups[name] = []
                host_data[name] = {}
            if group != "all":
                host_groups[name].append(group)
            if data:
                clash = {k for k in data if k in host_data[name] and host_data[name][k] != data[k]}
                if clash:
                    errors.append(
                        f"{name}: inventory: the host is defined twice with different data "
                        f"({', '.join(sorted(clash))}). Fix: give each host its data once; two boards "
                        "need two distinct host names."
                    )
                host_data[name].update(data)

    specs = []
    for name in host_order:
        if name in malformed:
            continue
        merged = dict(all_data)
        for group in host_groups[name]:
            merged.update(groups[group][1])
            merged.update(group_files.get(group, {}))
        if file_group and file_group not in host_groups[name]:
            merged.update(group_files.get(file_group, {}))  # the file's group comes last
        merged.update(host_data[name])
        specs.append(HostSpec(name, tuple(host_groups[name]), merged, own_data=bool(host_data[name])))

    # A key given to a group none of whose hosts reads it (its schema says which groups do).
    for group in GROUPS:
        given = {**(groups[group][1] if group in groups else {}), **group_files.get(group, {})}
        members = [set(host_groups[name]) for name in host_groups if group in host_groups[name]]
        for key in sorted(k for k in given if k in layers.KEYS):
            readers = set(layers.KEYS[key].groups)
            if group not in readers and not any(member & readers for member in members):
                errors.append(
                    f"inventory: {key}: given to group `{group}`, but only hosts in {', '.join(sorted(readers))} read it. "
                    f"Fix: set it for {' or '.join(sorted(readers))} (or per host) instead"
                )
    return specs, errors


def _shown(path: Path) -> str:
    """A path as the user knows it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def hosts_from_state(state) -> list[HostSpec]:
    specs = []
    for host in state.inventory:
        groups = tuple(group for group in host.groups if group != "all")
        own_data = bool(state.inventory.get_host_data(host.name))
        specs.append(HostSpec(host.name, groups, host.data.dict(), own_data=own_data))
    return specs


# --- Validation -------------------------------------------------------------------------------


def validate(specs: Iterable[HostSpec], defaults: dict[str, Any] | None = None, sudo: bool = False) -> list[str]:
    """
    Every problem found, each naming the host, the key and the fix. Empty: all good. `sudo`:
    pyinfra's config uses sudo for every host (`--sudo` on the command line).
    """
    specs = list(specs)
    defaults = load_defaults() if defaults is None else defaults
    known = set(defaults) | _connector_keys() | KNOWN_EXTRA_KEYS
    errors: list[str] = []

    def err(host: str, key: str, problem: str, fix: str) -> None:
        errors.append(f"{host}: {key}: {problem}. Fix: {fix}")

    if not specs:
        errors.append("inventory: no hosts. Fix: list your boards in k3s_servers / k3s_agents / dnas.")
        return errors

    # A host listed by name only, with no data anywhere, is most often a misspelt name in one of
    # the groups: say so, rather than list every key it lacks (node_ip first).
    described = [s for s in specs if s.own_data]
    for spec in list(specs):
        if spec.own_data or not described or is_ip(spec.name) or spec.data.get("node_ip") is not None or spec.data.get("ssh_hostname"):
            continue
        # The host meant is one that is not in these groups yet.
        others = [s.name for s in described if not set(spec.groups) <= set(s.groups)]
        close = _closest(spec.name, others)
        err(
            spec.name,
            "inventory",
            f"listed in {', '.join(g for g in spec.groups if g in GROUPS) or 'the inventory'} by name only, and no group gives it data (not even an address)",
            f"did you mean {' or '.join(f'`{c}`' for c in close)}? Write a host's name the same way in every group"
            if close
            else f'give it its data as the other hosts have it: ("{spec.name}", {{"ssh_hostname": ..., "node_ip": ...}})',
        )
        specs.remove(spec)

    # Unknown keys (typos), once per host. Keys starting with _ are pyinfra's global arguments
    # (_sudo, _sudo_user, _env, ...): a misspelt one is ignored by pyinfra just the same.
    arguments = sorted(k for k in known if k.startswith("_"))
    for spec in specs:
        for key in sorted(spec.data):
            if key in known:
                continue
            if key.startswith("_"):
                hint = did_you_mean(key, arguments, f"remove it (pyinfra's arguments are {', '.join(arguments)}).")
                err(spec.name, key, "unknown key (not a pyinfra global argument)", hint)
                continue
            hint = did_you_mean(key, sorted(known), "remove it (see group_data/all.py for every key).", cutoff=0.75)
            err(spec.name, key, "unknown key", hint)

    # The deploys need root: a login user other than root needs _sudo (or --sudo).
    for spec in specs:
        user = spec.data.get("ssh_user")
        if isinstance(user, str) and user != "root" and not sudo and spec.data.get("_sudo") is not True:
            err(
                spec.name,
                "ssh_user",
                f"`{user}` is not root and _sudo is not True (the deploys install packages and write /etc)",
                f'add "_sudo": True to the data of {spec.name} (as inventories/pi.py does), or log in as root',
            )

    servers = [s for s in specs if "k3s_servers" in s.groups]
    agents = [s for s in specs if "k3s_agents" in s.groups]

    # Host names.
    names = [s.name for s in specs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        err(name, "inventory", "duplicate host name", "give each board a unique host name")
    for spec in specs:
        if "k3s_servers" in spec.groups and "k3s_agents" in spec.groups:
            err(
                spec.name,
                "groups",
                "the host is in both k3s_servers and k3s_agents",
                "a k3s server already runs workloads; keep it in k3s_servers only",
            )

    # Node IPs.
    ips: dict[str, list[str]] = {}
    for spec in specs:
        raw = spec.data.get("node_ip")
        if raw is not None and not isinstance(raw, str):
            continue  # reported by the DATA_KINDS check
        ip = node_ip(spec)
        if ip is None and raw is None:
            err(
                spec.name,
                "node_ip",
                "missing (the host name is not an IPv4 address)",
                f'set node_ip for {spec.name}, e.g. ("{spec.name}", {{"node_ip": "192.168.1.11"}})',
            )
            continue
        try:
            addr = ipaddress.IPv4Address(str(ip))
        except ValueError:
            err(spec.name, "node_ip", f"`{ip}` is not a valid IPv4 address", "write it as four numbers 0-255, e.g. 192.168.1.11")
            continue
        if addr.is_loopback or addr.is_multicast or addr.is_unspecified:
            err(spec.name, "node_ip", f"`{ip}` cannot be a node address", "use the board's LAN address")
            continue
        ips.setdefault(str(addr), []).append(spec.name)
    for ip, owners in ips.items():
        if len(owners) > 1:
            for owner in owners:
                err(owner, "node_ip", f"`{ip}` is used by {', '.join(owners)}", "give every node its own address")

    # Types, choices, ranges and patterns of every key (DATA_KINDS, from the layer schemas).
    for spec in specs:
        for key, kind in DATA_KINDS.items():
            if key not in spec.data and key not in defaults:
                continue
            problem = kind_problem(key, spec.data.get(key, defaults.get(key)), kind)
            if problem:
                err(spec.name, key, *problem)

    # The VIP and keepalived.
    cluster = Cluster(specs)
    keepalived_hosts = layers.keepalived.holders(cluster)
    k3s_on = [s for s in servers + agents if s.data.get("k3s_install") != "off"]
    for spec in specs:
        if spec not in keepalived_hosts and spec not in k3s_on:
            continue
        vip = spec.data.get("vip")
        if vip is None:
            err(spec.name, "vip", "missing", "set vip to a free address in the nodes' subnet, outside the DHCP range")
            continue
        if not isinstance(vip, str):
            continue  # reported by the DATA_KINDS check
        try:
            vip_addr = ipaddress.IPv4Address(str(vip))
        except ValueError:
            err(spec.name, "vip", f"`{vip}` is not a valid IPv4 address", "write it as four numbers 0-255")
            continue
        ip = node_ip(spec)
        prefix = spec.data.get("network_prefix")
        # Only the hosts that hold the VIP must be in its subnet: agents reach it through the router.
        if spec in keepalived_hosts and ip and isinstance(prefix, int) and 8 <= prefix <= 30:
            try:
                net = ipaddress.IPv4Interface(f"{ip}/{prefix}").network
            except ValueError:
                continue
            if vip_addr not in net:
                err(spec.name, "vip", f"`{vip}` is outside the node's subnet {net}", f"pick a free address inside {net} (or fix network_prefix)")
            elif vip_addr in (net.network_address, net.broadcast_address):
                err(spec.name, "vip", f"`{vip}` is the network or broadcast address of {net}", f"pick a free host address inside {net}")
        if str(vip_addr) in ips:
            err(spec.name, "vip", f"`{vip}` is the address of node {', '.join(ips[str(vip_addr)])}", "the VIP must be a free address no node uses")
    vip_hosts = [s for s in specs if s in keepalived_hosts or s in k3s_on]
    vips = {str(s.data.get("vip")) for s in vip_hosts}
    if len(vips) > 1:
        err(", ".join(s.name for s in vip_hosts), "vip", f"hosts disagree on the VIP ({', '.join(sorted(vips))})", "set vip once for the whole cluster")

    # Each layer's own cross-key rules (homecloud/layers/<layer>.py).
    for layer in layers.LAYERS:
        if layer.check is not None:
            layer.check(err, cluster)
    return errors


def _closest(word: str, candidates: list[str]) -> list[str]:
    """The candidates most like `word` (all of them when several are equally close)."""
    close = difflib.get_close_matches(word, candidates, n=len(candidates) or 1, cutoff=0.5)

    def ratio(candidate: str) -> float:
        return difflib.SequenceMatcher(None, word, candidate).ratio()

    return [c for c in close if ratio(c) == ratio(close[0])]


def format_errors(errors: list[str]) -> str:
    lines = [f"homecloud: the inventory has {len(errors)} problem(s); nothing was changed on any host:"]
    lines += [f"  - {e}" for e in errors]
    return "\n".join(lines)


def check_inventory(namespace: dict[str, Any], inventory_file: str | None = None) -> None:
    """Validate an inventory file's groups merged with group_data; raise before connecting."""
    from pyinfra.context import ctx_config

    specs, errors = hosts_from_inventory_namespace(namespace, inventory_file)
    # The CLI loads its config (and --sudo) before the inventory.
    errors += validate(specs, sudo=bool(ctx_config.isset() and ctx_config.get().SUDO))
    if errors:
        raise InventoryError(format_errors(errors))


def check_loading_inventory() -> None:
    """
    Validate the inventory pyinfra's CLI is loading, with its `--data` overrides, before it
    connects; called by group_data/all.py.

    pyinfra 3.10 has no hook between applying `--data` and connecting (`state.init` drops any
    callback handler registered earlier, and no user code runs between it and `connect_all`).
    What does run after the inventory file and before connecting are the group_data files:
    the CLI executes them with the inventory being loaded as the current inventory (without
    the `--data` values, which it applies afterwards). So this rebuilds the inventory's groups
    from that inventory, applies `--data` and `--user` as read from the command line, and
    validates. This catches inventories that do not call `check_inventory()` themselves and
    `--data` mistakes. Anywhere else (the Python API, a deploy reading the defaults, an
    inventory that is not a file) it does nothing, and `check_state()` in the deploys remains
    the check.
    """
    import click
    from pyinfra.context import ctx_config, ctx_inventory
    from pyinfra_cli.util import parse_cli_arg

    context = click.get_current_context(silent=True)
    if context is None or not ctx_inventory.isset():
        return
    inventory = ctx_inventory.get()
    params = context.params
    inventory_file = params.get("inventory")
    if getattr(inventory, "state", None) is not None or this_run(inventory).validated:
        return  # not the CLI loading an inventory, or already checked (group_data/all.py runs once per folder)
    if not isinstance(inventory_file, str) or not Path(inventory_file).is_file():
        return
    this_run(inventory).validated = True

    namespace: dict[str, Any] = {}
    for group, hosts in inventory.groups.items():
        if group != "all" and group != Path(inventory_file).stem:
            members = [(host.name, dict(inventory.get_host_data(host.name))) for host in hosts]
            namespace[group] = (members, dict(inventory.get_group_data(group)))
    namespace["all"] = ([host.name for host in inventory], dict(inventory.get_data()))
    override: dict[str, Any] = {}
    for argument in params.get("data") or ():
        key, _, value = str(argument).partition("=")
        override[key] = parse_cli_arg(value)
    if params.get("ssh_user"):
        override["ssh_user"] = params["ssh_user"]

    specs, errors = hosts_from_inventory_namespace(namespace, inventory_file, params.get("group_data") or ())
    for spec in specs:
        spec.data.update(override)
    errors += validate(specs, sudo=bool(ctx_config.isset() and ctx_config.get().SUDO))
    if errors:
        raise InventoryError(format_errors(errors))


def check_state(state) -> None:
    """Validate the merged data of every host in a pyinfra state, once per state."""
    if this_run(state).validated:
        return
    errors = validate(hosts_from_state(state), sudo=bool(state.config.SUDO))
    if errors:
        raise InventoryError(format_errors(errors))
    this_run(state).validated = True
