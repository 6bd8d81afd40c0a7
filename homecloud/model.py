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

The types of all keys are declared once, in `DATA_KINDS` and `ENTRY_KINDS`.

Both raise `InventoryError` listing every problem as "host: key: problem. Fix: ...".
"""

from __future__ import annotations

import difflib
import ipaddress
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pyinfra.api.exceptions import PyinfraError

from .k3s_config import VERSION_RE as K3S_VERSION_RE

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = REPO_ROOT / "group_data" / "all.py"

GROUPS = ("k3s_servers", "k3s_agents", "dnas")

# Values that look like the examples in our docs: never accepted as a secret.
EXAMPLE_SECRETS = {
    "",
    "changeme",
    "change-me",
    "change_me",
    "changeit",
    "example",
    "password",
    "passw0rd",
    "secret",
    "s3cret",
    "admin",
    "homecloud",
    "raspberry",
    "123456",
    "12345678",
    "xxxxxxxx",
    "todo",
}

# Samba share names: letters, digits and ._- (no spaces, no brackets), at most 80 characters.
SHARE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
SAMBA_RESERVED = {"global", "homes", "printers", "print$", "ipc$"}
UNIX_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Syncthing device IDs: 8 groups of 7 base32 characters.
SYNCTHING_ID_RE = re.compile(r"[A-Z2-7]{7}(-[A-Z2-7]{7}){7}")
FOLDER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A disk by what it carries, or by a udev link that does not change with USB order (never /dev/sdX).
DEVICE_SPEC_RE = re.compile(r"(UUID|LABEL|PARTUUID|PARTLABEL)=\S+|/dev/disk/by-(id|uuid|label|partuuid|partlabel)/\S+")
LABEL_RE = re.compile(r"([a-z0-9A-Z]([a-z0-9A-Z._/-]*[a-z0-9A-Z])?)=([A-Za-z0-9._-]*)")
TAINT_RE = re.compile(
    r"[a-z0-9A-Z]([a-z0-9A-Z._/-]*[a-z0-9A-Z])?(=[A-Za-z0-9._-]*)?:(NoSchedule|PreferNoSchedule|NoExecute)"
)
ARCHES = ("amd64", "arm64", "armhf")
# keepalived starts comments at # and !, splits on blanks and strips quotes.
KEEPALIVED_PASS_RE = re.compile(r"[A-Za-z0-9_.,:;+=@%^*()\[\]{}/~-]{1,8}")
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MODULE_RE = re.compile(r"[A-Za-z0-9_-]+")
SYSCTL_RE = re.compile(r"[A-Za-z0-9_./-]+")
WORKGROUP_RE = re.compile(r"[A-Za-z0-9._-]{1,15}")
INTERFACE_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


class InventoryError(PyinfraError):
    """The inventory or its data is invalid; nothing has been changed on any host."""


@dataclass
class HostSpec:
    name: str
    groups: tuple[str, ...]
    data: dict[str, Any] = field(default_factory=dict)
    # False for a host listed by name only, with no host data in any group.
    own_data: bool = True


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


@dataclass(frozen=True)
class Kind:
    """
    What a data key, or a field of a list entry, holds. The type is exact: a bool is not an int
    and the string "no" is not a bool (it is a non-empty string, so it would count as True).
    Choices, a range or a pattern (matched against the whole value) narrow it where they exist.
    """

    type: type = str
    optional: bool = False  # None is accepted: the key is unset
    choices: tuple = ()
    low: int | None = None
    high: int | None = None
    pattern: re.Pattern | None = None
    bad: str = ""  # what a value outside the pattern is, e.g. "is not a valid user name"
    fix: str = ""
    required: bool = False  # for the fields of an entry: every entry has it


TYPE_WORDS = {bool: "True/False", int: "a whole number", str: "a string", list: "a list", dict: "a dict"}


def _is_type(value: Any, expected: type) -> bool:
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def kind_problem(name: str, value: Any, kind: Kind) -> tuple[str, str] | None:
    """(problem, fix) when `value` does not fit `kind`; `name` is the key or field it is in."""
    if value is None and kind.optional:
        return None
    if kind.choices:
        if any(type(value) is type(choice) and value == choice for choice in kind.choices):
            return None
        return f"`{value!r}` is not one of {', '.join(repr(c) for c in kind.choices)}", f"set {name} to one of them"
    if not _is_type(value, kind.type):
        if kind.type is bool:
            quoted = " (a quoted word counts as True, even \"no\")" if isinstance(value, str) else ""
            return f"`{value!r}` is not True/False{quoted}", f"set {name} = True or {name} = False (without quotes)"
        if kind.type is int and kind.low is not None:
            return f"`{value!r}` is not a whole number", f"set {name} to a whole number from {kind.low} to {kind.high} (without quotes)"
        return f"`{value!r}` is not {TYPE_WORDS[kind.type]}", f"write {name} as {TYPE_WORDS[kind.type]} (see group_data/all.py)"
    if kind.low is not None and not kind.low <= value <= kind.high:
        return f"`{value!r}` is outside {kind.low}-{kind.high}", f"set {name} to a whole number from {kind.low} to {kind.high}"
    if kind.pattern is not None and not kind.pattern.fullmatch(value):
        return f"`{value!r}` {kind.bad}", kind.fix
    return None


def _flag() -> Kind:
    return Kind(bool)


def _count(low: int, high: int, optional: bool = False) -> Kind:
    return Kind(int, low=low, high=high, optional=optional)


USER_KIND = Kind(pattern=UNIX_USER_RE, bad="is not a valid user name", fix="use lower-case letters, digits, _ or -")

# Every data key the validation knows, with what it holds (group_data/all.py documents them).
# Keys whose values need more than this (addresses, paths, secrets, entries) get their own
# checks in `validate` as well, on values of the right type only.
DATA_KINDS: dict[str, Kind] = {
    # The network.
    "node_ip": Kind(optional=True),
    "node_interface": Kind(pattern=INTERFACE_RE, bad="is not an interface name", fix="set it to the LAN interface, e.g. eth0"),
    "network_prefix": _count(8, 30),
    "vip": Kind(optional=True),
    # Node base.
    "base_manage_hostname": _flag(),
    "base_disable_swap": _flag(),
    "base_time_sync": _flag(),
    "base_kernel_modules": Kind(list),
    "base_sysctls": Kind(dict),
    "base_iptables_legacy": Kind(choices=("auto", True, False)),
    "rpi_cgroup_flags": _flag(),
    "rpi_reboot": _flag(),
    # keepalived.
    "keepalived_enabled": _flag(),
    "keepalived_group": Kind(choices=GROUPS),
    "keepalived_router_id": _count(1, 255),
    "keepalived_auth_pass": Kind(optional=True),
    "keepalived_unicast": _flag(),
    "keepalived_nopreempt": _flag(),
    "keepalived_advert_int": _count(1, 255),
    "keepalived_check_script": Kind(optional=True),
    "keepalived_notify_script": Kind(optional=True),
    "keepalived_priority": _count(1, 254, optional=True),
    # k3s.
    "k3s_install": Kind(choices=("download", "airgap", "off")),
    "k3s_version": Kind(pattern=K3S_VERSION_RE, bad="is not a k3s release", fix="write it like v1.31.4+k3s1 (see the k3s releases page)"),
    "k3s_airgap_dir": Kind(optional=True),
    "k3s_download_dir": Kind(),
    "k3s_token": Kind(optional=True),
    "k3s_server_config": Kind(dict),
    "k3s_agent_config": Kind(dict),
    "k3s_node_labels": Kind(list),
    "k3s_node_taints": Kind(list),
    "k3s_registries": Kind(dict, optional=True),
    "k3s_kubeconfig": Kind(),
    "k3s_kubeconfig_context": Kind(pattern=re.compile(r".*\S.*"), bad="is not a context name", fix="set it to a name like homecloud"),
    "k3s_ready_timeout": _count(10, 7200),
    # Longhorn.
    "longhorn_enabled": _flag(),
    "longhorn_data_path": Kind(),
    "longhorn_device": Kind(optional=True),
    "longhorn_format": _flag(),
    "longhorn_fstype": Kind(),
    "longhorn_blank_device": Kind(optional=True),
    # dnas.
    "dnas_path": Kind(),
    "dnas_user": USER_KIND,
    "dnas_uid": _count(1000, 59999),
    "dnas_gid": _count(1000, 59999),
    "dnas_device": Kind(optional=True),
    "dnas_fstype": Kind(),
    "dnas_format": _flag(),
    "dnas_blank_device": Kind(optional=True),
    "dnas_mount_options": Kind(pattern=re.compile(r"[^\s,]+(,[^\s,]+)*"), bad="is not a list of mount options", fix="separate options with commas, without blanks, e.g. defaults,noatime"),
    # Syncthing.
    "syncthing_enabled": _flag(),
    "syncthing_source": Kind(choices=("debian", "syncthing")),
    "syncthing_gui_address": Kind(),
    "syncthing_gui_password": Kind(optional=True),
    "syncthing_folders": Kind(list),
    "syncthing_devices": Kind(list),
    # Samba.
    "samba_enabled": _flag(),
    "samba_workgroup": Kind(pattern=WORKGROUP_RE, bad="is not a workgroup name", fix="use 1-15 letters, digits and ._- (WORKGROUP is the usual one)"),
    "samba_shares": Kind(list),
    "samba_users": Kind(dict),
    # NFS.
    "nfs_enabled": _flag(),
    "nfs_backend": Kind(choices=("kernel", "ganesha")),
    "nfs_exports": Kind(list),
    # KNOWN_EXTRA_KEYS, and the pyinfra settings homecloud itself relies on.
    "node_arch": Kind(choices=(None,) + ARCHES),
    "lab_node": Kind(optional=True),
    "ssh_user": Kind(optional=True),
    "_sudo": Kind(bool, optional=True),
}


@dataclass(frozen=True)
class Entries:
    """The entries of a list key (dicts): what one is called, the field naming it, its fields."""

    noun: str
    ident: str
    fields: dict[str, Kind]
    example: str


ENTRY_KINDS: dict[str, Entries] = {
    "samba_shares": Entries(
        "share",
        "name",
        {"name": Kind(required=True), "path": Kind(required=True), "read_only": _flag(), "valid_users": Kind(list), "guest_ok": _flag()},
        '{"name": "data", "path": "data", "read_only": False, "valid_users": ["alice"], "guest_ok": False}',
    ),
    "nfs_exports": Entries(
        "export",
        "path",
        {"path": Kind(required=True), "networks": Kind(list, required=True), "read_only": _flag()},
        '{"path": "data", "networks": ["192.168.1.0/24"], "read_only": False}',
    ),
    "syncthing_folders": Entries(
        "folder",
        "id",
        {"id": Kind(required=True), "label": Kind(), "path": Kind(required=True)},
        '{"id": "photos", "label": "Photos", "path": "photos"}',
    ),
    "syncthing_devices": Entries(
        "device",
        "name",
        {"name": Kind(required=True), "id": Kind(required=True), "folders": Kind(list), "addresses": Kind(list)},
        '{"name": "phone", "id": "ABCDEFG-...", "folders": ["homecloud-data"]}',
    ),
}


def check_entries(err, host: str, key: str, value: Any) -> list[dict]:
    """Report entries of `key` that are not dicts of well-typed known fields; return the good ones."""
    if not isinstance(value, list):
        return []  # reported by the DATA_KINDS check
    kinds = ENTRY_KINDS[key]
    good = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            article = "an" if kinds.noun[0] in "aeiou" else "a"
            err(host, key, f"`{entry!r}` is not {article} {kinds.noun}", f"write each {kinds.noun} as a dict, e.g. {kinds.example}")
            continue
        ident = entry.get(kinds.ident)
        what = f"{kinds.noun} `{ident}`" if isinstance(ident, str) else f"{kinds.noun} {index + 1}"
        ok = True
        for name in entry:
            if name not in kinds.fields:
                fix = did_you_mean(name, kinds.fields, f"use only {', '.join(kinds.fields)}")
                err(host, key, f"{what}: unknown field `{name}`", fix)
                ok = False
        for name, kind in kinds.fields.items():
            if name not in entry:
                if kind.required:
                    err(host, key, f"{what}: no `{name}`", f"give every {kinds.noun} a {name}, e.g. {kinds.example}")
                    ok = False
                continue
            problem = kind_problem(name, entry[name], kind)
            if problem:
                err(host, key, f"{what}: {name} {problem[0]}", problem[1])
                ok = False
        if ok:
            good.append(entry)
    return good


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


def node_ip(spec: HostSpec) -> str | None:
    value = spec.data.get("node_ip")
    if value is None:
        candidate = spec.data.get("ssh_hostname") or spec.name
        try:
            ipaddress.IPv4Address(str(candidate))
            return str(candidate)
        except ValueError:
            return None
    return value


def is_ip(value: str) -> bool:
    """True for an IPv4 or IPv6 address (inventory host names may be addresses)."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _is_secret_bad(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return True
    return value.strip().lower() in EXAMPLE_SECRETS


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
    dnas = [s for s in specs if "dnas" in s.groups]

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

    # Types, choices, ranges and patterns of every key (DATA_KINDS).
    for spec in specs:
        for key, kind in DATA_KINDS.items():
            if key not in spec.data and key not in defaults:
                continue
            problem = kind_problem(key, spec.data.get(key, defaults.get(key)), kind)
            if problem:
                err(spec.name, key, *problem)

    for spec in specs:
        if spec.data.get("base_manage_hostname") and not is_ip(spec.name) and not HOSTNAME_RE.fullmatch(spec.name):
            err(spec.name, "inventory", "the host name is not a valid Linux host name (base_manage_hostname sets it)", "use letters, digits and - (up to 63), or set base_manage_hostname = False")
        modules = spec.data.get("base_kernel_modules")
        if isinstance(modules, list) and not all(isinstance(m, str) and MODULE_RE.fullmatch(m) for m in modules):
            err(spec.name, "base_kernel_modules", f"`{modules!r}` is not a list of module names", 'write it like ["overlay", "br_netfilter"]')
        sysctls = spec.data.get("base_sysctls")
        for key, value in sysctls.items() if isinstance(sysctls, dict) else ():
            if not isinstance(key, str) or not SYSCTL_RE.fullmatch(key) or not isinstance(value, (str, int)) or isinstance(value, bool) or "\n" in str(value):
                err(spec.name, "base_sysctls", f"`{key!r}: {value!r}` is not a sysctl setting", 'write it like "net.ipv4.ip_forward": "1"')
        for key in ("keepalived_check_script", "keepalived_notify_script"):
            script = spec.data.get(key)
            if isinstance(script, str) and (not script.startswith("/") or any(c in script for c in '"\n\r')):
                err(spec.name, key, f"`{script!r}` is not a command keepalived can run", "give an absolute path first (keepalived runs it without a shell), with no double quotes or line breaks, e.g. /usr/bin/systemctl is-active --quiet k3s")

    # The VIP and keepalived.
    keepalived_hosts = [
        s for s in specs if s.data.get("keepalived_enabled") and s.data.get("keepalived_group", "k3s_servers") in s.groups
    ]
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

    for spec in keepalived_hosts:
        secret = spec.data.get("keepalived_auth_pass")
        if secret is not None and not isinstance(secret, str):
            continue  # reported by the DATA_KINDS check
        if _is_secret_bad(secret):
            err(
                spec.name,
                "keepalived_auth_pass",
                "secret missing or left at an example value",
                "set it to a random password of 1-8 characters, e.g. secret('keepalived_auth_pass', length=8)",
            )
        elif len(secret) > 8:
            err(spec.name, "keepalived_auth_pass", f"{len(secret)} characters, VRRP PASS auth keeps only 8", "use at most 8 characters")
        elif not KEEPALIVED_PASS_RE.fullmatch(secret):
            err(spec.name, "keepalived_auth_pass", "contains a blank, a quote, # or ! (keepalived would cut it there)", "use letters, digits and punctuation other than those")
    if any(s.data.get("keepalived_enabled") for s in specs):
        group = specs[0].data.get("keepalived_group")
        if group in GROUPS and not any(group in s.groups for s in specs):
            err("inventory", "keepalived_group", f"group `{group}` has no hosts", "add hosts to it or set keepalived_enabled = False")

    # k3s.
    if servers or agents:
        installs = {s.data.get("k3s_install") for s in servers + agents}
        if installs - {"off"}:
            if len(servers) == 0:
                err(", ".join(s.name for s in agents), "k3s_servers", "agents but no server", "put 1, 3 or 5 hosts in k3s_servers")
            elif len(servers) % 2 == 0:
                err(
                    ", ".join(s.name for s in servers),
                    "k3s_servers",
                    f"{len(servers)} servers: embedded etcd needs a majority, so {len(servers)} servers survive no more "
                    f"failures than {len(servers) - 1} and a split stops the cluster",
                    f"use an odd number of servers ({len(servers) - 1} or {len(servers) + 1}); move one to k3s_agents",
                )
    for spec in servers + agents:
        version = spec.data.get("k3s_version")
        if spec.data.get("k3s_install") == "airgap" and not spec.data.get("k3s_airgap_dir"):
            err(spec.name, "k3s_airgap_dir", "k3s_install is 'airgap' but no folder is given", "set k3s_airgap_dir to the folder holding k3s, k3s-arm64, k3s-armhf and sha256sum-*.txt")
        token = spec.data.get("k3s_token")
        if isinstance(token, str) and (_is_secret_bad(token) or len(token) < 16):
            err(spec.name, "k3s_token", "secret left at an example value or shorter than 16 characters", "remove it (a token is generated on the first server) or set a long random one")
        for key, pattern in (("k3s_node_labels", LABEL_RE), ("k3s_node_taints", TAINT_RE)):
            values = spec.data.get(key)
            for value in values if isinstance(values, list) else ():
                if not isinstance(value, str) or not pattern.fullmatch(value):
                    example = "disk=ssd" if key == "k3s_node_labels" else "dedicated=nas:NoSchedule"
                    err(spec.name, key, f"`{value!r}` is malformed", f"write it like {example}")
        for key, role in (("k3s_server_config", "server"), ("k3s_agent_config", "agent")):
            if (role == "server") != (spec in servers):
                continue  # a server reads k3s_server_config only, an agent k3s_agent_config
            extra = spec.data.get(key)
            if isinstance(extra, dict) and extra and isinstance(version, str) and K3S_VERSION_RE.fullmatch(version):
                from .k3s_config import K3sConfigError, check_keys

                try:
                    problems = check_keys(extra, version, role)
                except K3sConfigError as e:
                    problems = [str(e)]
                for problem in problems:
                    if "; " in problem:
                        what, fix = problem.split("; ", 1)
                    elif problem.startswith("`") and ": " in problem:
                        what, fix = problem.split(": ", 1)
                    else:
                        what, fix = problem, f"change {key} or k3s_version"
                    err(spec.name, key, what, fix)
        registries = spec.data.get("k3s_registries")
        if isinstance(registries, dict) and not set(registries) <= {"mirrors", "configs"}:
            err(spec.name, "k3s_registries", "must be a dict with `mirrors` and/or `configs`", "write it as in the k3s registries.yaml docs")

    # Longhorn.
    for spec in servers + agents:
        if spec.data.get("longhorn_enabled") and spec.data.get("node_arch") == "armhf":
            err(spec.name, "longhorn_enabled", "Longhorn does not run on armv7 (armhf) boards", f"set longhorn_enabled = False for {spec.name}")
        device = spec.data.get("longhorn_device")
        if spec.data.get("longhorn_enabled"):
            if isinstance(device, str) and not DEVICE_SPEC_RE.fullmatch(device):
                err(spec.name, "longhorn_device", f"`{device}` may name another disk after a reboot", "use UUID=... or LABEL=... (see `blkid`), or /dev/disk/by-id/...")
            if spec.data.get("longhorn_fstype") not in ("ext4", "xfs"):
                err(spec.name, "longhorn_fstype", f"`{spec.data.get('longhorn_fstype')!r}` is not supported by Longhorn", "use ext4 or xfs")
            _check_blank_device(err, spec, "longhorn")
            _check_device_label(err, spec, "longhorn")
            _check_outside_k3s(err, spec.name, "longhorn_data_path", spec.data.get("longhorn_data_path"))

    # dnas: disk, Syncthing, Samba, NFS.
    for spec in dnas:
        data = spec.data
        path = data.get("dnas_path")
        if isinstance(path, str) and (not path.startswith("/") or path.rstrip("/") in ("", "/boot", "/etc", "/usr", "/var", "/home", "/root")):
            err(spec.name, "dnas_path", f"`{path!r}` is not a usable data folder", "use an absolute path of its own, e.g. /srv/dnas")
        device = data.get("dnas_device")
        if isinstance(device, str) and not DEVICE_SPEC_RE.fullmatch(device):
            err(
                spec.name,
                "dnas_device",
                f"`{device}` may name another disk after a reboot (USB order changes)",
                "use UUID=... or LABEL=... as `blkid` shows it, or /dev/disk/by-id/...",
            )
        if data.get("dnas_format") is True and device is None:
            err(spec.name, "dnas_format", "True but no dnas_device is given", "set dnas_device = 'LABEL=...' or turn dnas_format off")
        if data.get("dnas_fstype") not in ("ext4", "xfs", "btrfs"):
            err(spec.name, "dnas_fstype", f"`{data.get('dnas_fstype')!r}` is not supported", "use ext4, xfs or btrfs")
        _check_blank_device(err, spec, "dnas")
        _check_device_label(err, spec, "dnas")
        _check_outside_k3s(err, spec.name, "dnas_path", path)

        if data.get("syncthing_enabled") is True:
            folder_ids: set[str] = set()
            for folder in check_entries(err, spec.name, "syncthing_folders", data.get("syncthing_folders")):
                fid = folder["id"]
                if not FOLDER_ID_RE.fullmatch(fid):
                    err(spec.name, "syncthing_folders", f"folder id `{fid!r}` is invalid", "use letters, digits and ._- (e.g. photos)")
                elif fid in folder_ids:
                    err(spec.name, "syncthing_folders", f"folder id `{fid}` is listed twice", "give each folder a unique id")
                folder_ids.add(fid)
                _check_relative(err, spec.name, "syncthing_folders", folder["path"])
            for device_entry in check_entries(err, spec.name, "syncthing_devices", data.get("syncthing_devices")):
                did = device_entry["id"]
                if not SYNCTHING_ID_RE.fullmatch(did):
                    err(spec.name, "syncthing_devices", f"device id `{did!r}` is not a Syncthing device ID", "copy it from the device (Actions > Show ID): 8 groups of 7 characters")
                for fid in device_entry.get("folders") or []:
                    if fid not in folder_ids:
                        fix = did_you_mean(fid, sorted(folder_ids), f"use ids from syncthing_folders ({', '.join(sorted(folder_ids)) or 'none'})")
                        err(spec.name, "syncthing_devices", f"device `{device_entry['name']}` gets unknown folder `{fid}`", fix)
            gui = data.get("syncthing_gui_address")
            if isinstance(gui, str):
                if not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}", gui) or not 0 < int(gui.rsplit(":", 1)[1]) < 65536:
                    err(spec.name, "syncthing_gui_address", f"`{gui}` is not host:port", "write it like 127.0.0.1:8384")
                password = data.get("syncthing_gui_password")
                if not gui.startswith(("127.", "localhost:", "[::1]:")) and (password is None or isinstance(password, str)) and _is_secret_bad(password):
                    err(spec.name, "syncthing_gui_password", f"the GUI listens on {gui} but has no real password", "set a password or keep syncthing_gui_address = '127.0.0.1:8384'")

        if data.get("samba_enabled") is True:
            users_known = isinstance(data.get("samba_users"), dict)  # else reported by the DATA_KINDS check
            users = data.get("samba_users") if users_known else {}
            for user, password in users.items():
                if not isinstance(user, str) or not UNIX_USER_RE.fullmatch(user):
                    err(spec.name, "samba_users", f"`{user!r}` is not a valid user name", "use lower-case letters, digits, _ or -")
                elif user in ("root", data.get("dnas_user")):
                    err(spec.name, "samba_users", f"`{user}` cannot be a Samba user (root, or the dnas owner every share writes as)", "pick a person's name, e.g. alice")
                if password is not None and not isinstance(password, str):
                    err(spec.name, "samba_users", f"password of `{user}` is not a string", f'write it in quotes, or better: "{user}": secret("samba_{user}")')
                elif _is_secret_bad(password):
                    err(spec.name, "samba_users", f"password of `{user}` missing or left at an example value", f"set a real password for {user}")
                elif "\n" in password or "\r" in password:
                    err(spec.name, "samba_users", f"password of `{user}` contains a line break", "use a password on one line")
            shares = check_entries(err, spec.name, "samba_shares", data.get("samba_shares"))
            share_names: set[str] = set()
            for share in shares:
                sname = share["name"]
                if not SHARE_NAME_RE.fullmatch(sname) or sname.lower() in SAMBA_RESERVED:
                    err(spec.name, "samba_shares", f"share name `{sname!r}` is invalid", "use 1-80 letters, digits and ._- (not global, homes, printers)")
                elif sname.lower() in share_names:
                    err(spec.name, "samba_shares", f"share `{sname}` is defined twice", "give each share a unique name (Samba ignores case)")
                share_names.add(sname.lower())
                _check_relative(err, spec.name, "samba_shares", share["path"])
                for user in share.get("valid_users") or []:
                    if users_known and user not in users:
                        fix = f"add {user} to samba_users"
                        fix = did_you_mean(user, users, fix, then=f" If not, {fix}")
                        err(spec.name, "samba_shares", f"share `{sname}` names user `{user}` who is not in samba_users", fix)
                if share.get("guest_ok") and not share.get("read_only", False):
                    err(spec.name, "samba_shares", f"share `{sname}` is writable by guests", "set read_only = True or guest_ok = False")
            if users_known and shares and not users and not all(s.get("guest_ok") for s in shares):
                err(spec.name, "samba_users", "shares are defined but no Samba user can log in", 'add samba_users = {"alice": secret("samba_alice")}')

        if data.get("nfs_enabled") is True:
            export_paths: set[str] = set()
            for export in check_entries(err, spec.name, "nfs_exports", data.get("nfs_exports")):
                _check_relative(err, spec.name, "nfs_exports", export["path"])
                epath = export["path"].strip("/")
                if epath in export_paths:
                    err(spec.name, "nfs_exports", f"path `{epath}` is exported twice", "merge the two exports into one with all their networks")
                export_paths.add(epath)
                if not export["networks"]:
                    err(spec.name, "nfs_exports", f"export `{export['path']}` allows no network", "list the networks allowed, e.g. ['192.168.1.0/24']")
                for network in export["networks"]:
                    try:
                        net = ipaddress.ip_network(str(network), strict=True)
                    except ValueError as e:
                        err(spec.name, "nfs_exports", f"network `{network}` is invalid ({e})", "write it as a network in CIDR form, e.g. 192.168.1.0/24")
                        continue
                    if net.prefixlen == 0:
                        err(spec.name, "nfs_exports", f"network `{network}` opens the export to the whole internet", "list your LAN only, e.g. 192.168.1.0/24")
    return errors


K3S_OWNED_PATHS = ("/var/lib/rancher", "/var/lib/kubelet", "/etc/rancher")


def _check_outside_k3s(err, host: str, key: str, path: Any) -> None:
    """Data must never live where a k3s reset deletes."""
    if isinstance(path, str) and any(path.rstrip("/") == p or path.startswith(p + "/") for p in K3S_OWNED_PATHS):
        err(host, key, f"`{path}` lies inside {', '.join(K3S_OWNED_PATHS)}, which a k3s reset deletes", "put your data elsewhere, e.g. /srv/dnas or /var/lib/longhorn")


def _check_blank_device(err, spec: HostSpec, prefix: str) -> None:
    blank = spec.data.get(f"{prefix}_blank_device")
    if not isinstance(blank, str):
        return  # unset, or reported by the DATA_KINDS check
    if not re.fullmatch(r"/dev/disk/by-(id|path)/\S+", blank):
        err(spec.name, f"{prefix}_blank_device", f"`{blank!r}` is not a stable disk path", "name the blank disk by /dev/disk/by-id/... or /dev/disk/by-path/...")
    device = str(spec.data.get(f"{prefix}_device") or "")
    if device and not device.startswith(("LABEL=", "UUID=")):
        err(spec.name, f"{prefix}_device", f"`{device}` cannot be given to a disk being formatted", f"use LABEL=... (or UUID=...) for {prefix}_device with {prefix}_blank_device")
    if not spec.data.get(f"{prefix}_device") or not spec.data.get(f"{prefix}_format"):
        err(spec.name, f"{prefix}_blank_device", f"given without {prefix}_device and {prefix}_format = True", f"set {prefix}_device = 'LABEL=...' (the label it gets) and {prefix}_format = True, or remove it")


LABEL_LIMITS = {"ext4": 16, "xfs": 12, "btrfs": 255}


def _check_device_label(err, spec: HostSpec, prefix: str) -> None:
    device = spec.data.get(f"{prefix}_device")
    if not isinstance(device, str) or not device.startswith("LABEL="):
        return
    label = device[len("LABEL="):]
    fstype = spec.data.get(f"{prefix}_fstype", "ext4")
    limit = LABEL_LIMITS.get(fstype, 16)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", label) or len(label) > limit:
        err(spec.name, f"{prefix}_device", f"label `{label}` is not usable on {fstype}", f"use at most {limit} letters, digits and ._-")


def _check_relative(err, host: str, key: str, path: Any) -> None:
    if not isinstance(path, str) or path.startswith("/") or ".." in Path(path).parts:
        err(host, key, f"path `{path!r}` must be relative to dnas_path and stay inside it", "write it like 'data' or 'photos/2024'")
    elif posixpath.normpath(path) == "." and key == "syncthing_folders":
        err(host, key, f"path `{path}` is dnas_path itself: syncing it shares dnas_path/.config, where each node keeps its own Syncthing keys", "sync a folder inside it, e.g. 'data'")
    elif posixpath.normpath(path) == ".":
        err(host, key, "the root of dnas_path is not shared (it holds Syncthing's keys in .config)", "share a folder inside it, e.g. 'data'")
    elif ".config" in Path(path).parts:
        err(host, key, f"path `{path}` lies in dnas_path/.config, where each node keeps its own Syncthing keys", "share a folder outside .config, e.g. 'data'")
    elif any(c in path for c in '"\n\r\\'):
        err(host, key, f"path `{path!r}` contains a quote, backslash or line break", "use plain folder names like 'photos/2024'")


def did_you_mean(word: Any, candidates: Iterable, otherwise: str, cutoff: float = 0.6, shown: str = "`{}`", then: str = "") -> str:
    """The fix for a misspelt name: the closest candidate (as `shown` formats it), else `otherwise`."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return f"did you mean {shown.format(close[0])}?{then}" if close else otherwise


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
    if getattr(inventory, "state", None) is not None or getattr(inventory, "_homecloud_checked", False):
        return  # not the CLI loading an inventory, or already checked (group_data/all.py runs once per folder)
    if not isinstance(inventory_file, str) or not Path(inventory_file).is_file():
        return
    inventory._homecloud_checked = True

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
    if getattr(state, "_homecloud_checked", False):
        return
    errors = validate(hosts_from_state(state), sudo=bool(state.config.SUDO))
    if errors:
        raise InventoryError(format_errors(errors))
    state._homecloud_checked = True
