"""
The vocabulary of the layer schemas (`homecloud/layers/<layer>.py`): what a data key holds
(`Kind`, `Entries`), a key with its default, documentation and the groups that read it (`Key`),
a layer's keys, cross-key check and settings object (`Layer`), and the checks several layers
share (disks, secrets, paths under dnas_path). Nothing here reads an inventory or a host: the
validation (`homecloud/model.py`) and the deploys do.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from pyinfra.api.exceptions import PyinfraError

GROUPS = ("k3s_servers", "k3s_agents", "dnas")
K3S_GROUPS = ("k3s_servers", "k3s_agents")

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

# Patterns the operations re-check what they write with (whole values): declared here once.
UNIX_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
INTERFACE_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
# keepalived starts comments at # and !, splits on blanks and strips quotes.
KEEPALIVED_PASS_RE = re.compile(r"[A-Za-z0-9_.,:;+=@%^*()\[\]{}/~-]{1,8}")
# Samba share names: letters, digits and ._- (no spaces, no brackets), at most 80 characters.
SHARE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
# A disk by what it carries, or by a udev link that does not change with USB order (never /dev/sdX).
DEVICE_SPEC_RE = re.compile(r"(UUID|LABEL|PARTUUID|PARTLABEL)=\S+|/dev/disk/by-(id|uuid|label|partuuid|partlabel)/\S+")


class InventoryError(PyinfraError):
    """The inventory or its data is invalid; nothing has been changed on any host."""


@dataclass
class HostSpec:
    name: str
    groups: tuple[str, ...]
    data: dict[str, Any] = field(default_factory=dict)
    # False for a host listed by name only, with no host data in any group.
    own_data: bool = True


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


def flag() -> Kind:
    return Kind(bool)


def count(low: int, high: int, optional: bool = False) -> Kind:
    return Kind(int, low=low, high=high, optional=optional)


USER_KIND = Kind(pattern=UNIX_USER_RE, bad="is not a valid user name", fix="use lower-case letters, digits, _ or -")


@dataclass(frozen=True)
class Entries:
    """The entries of a list key (dicts): what one is called, the field naming it, its fields."""

    noun: str
    ident: str
    fields: dict[str, Kind]
    example: str


def did_you_mean(word: Any, candidates: Iterable, otherwise: str, cutoff: float = 0.6, shown: str = "`{}`", then: str = "") -> str:
    """The fix for a misspelt name: the closest candidate (as `shown` formats it), else `otherwise`."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return f"did you mean {shown.format(close[0])}?{then}" if close else otherwise


def check_entries(err, host: str, key: str, value: Any, kinds: Entries) -> list[dict]:
    """Report entries of `key` that are not dicts of well-typed known fields; return the good ones."""
    if not isinstance(value, list):
        return []  # reported by the type check of the key
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


# --- Keys and layers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """
    One data key, declared once: its kind, its default (what group_data/all.py says), its
    documentation (the comment above it there) and the groups whose hosts read it (a key read on
    every host says GROUPS).
    """

    name: str
    kind: Kind
    default: Any
    doc: str = ""
    groups: tuple[str, ...] = GROUPS
    entries: Entries | None = None  # for a list of dicts: what one entry holds


@dataclass(frozen=True)
class Section:
    """A heading in group_data/all.py."""

    title: str


class Layer:
    """
    A layer's schema: its keys (with the sections they are listed under in group_data/all.py),
    the keys of other layers it reads (`reads`), its cross-key rules (`check(err, cluster)`) and
    its frozen settings class, built from a host's merged data with the schema's defaults.
    """

    def __init__(self, name: str, items: Iterable[Key | Section], reads: Iterable[str] = (), check: Callable | None = None):
        self.name = name
        self.items = tuple(items)
        self.keys = tuple(item for item in self.items if isinstance(item, Key))
        self.reads = tuple(reads)
        self.check = check
        fields = [key.name for key in self.keys] + [name for name in self.reads if name not in {k.name for k in self.keys}]
        class_name = "".join(part.capitalize() for part in name.split("_")) + "Settings"
        self.settings_class = dataclasses.make_dataclass(
            class_name, [(name, Any) for name in fields], frozen=True, namespace={"__module__": f"homecloud.layers.{name}"}
        )

    def default(self, name: str) -> Any:
        return next(key.default for key in self.keys if key.name == name)

    def settings(self, host):
        """The layer's settings for a pyinfra host (its merged data) or a plain dict of data."""
        from homecloud.layers import KEYS

        return self.settings_from(getattr(host, "data", host), KEYS)

    def settings_from(self, data: Mapping[str, Any], all_keys: Mapping[str, Key]):
        """The layer's settings from merged host data; a key the data lacks takes its default."""
        values = {}
        for name in (f.name for f in dataclasses.fields(self.settings_class)):
            key = all_keys[name]
            value = data.get(name, key.default)
            values[name] = _frozen(value)
        return self.settings_class(**values)


def thawed(value: Any) -> Any:
    """A plain copy of a settings value: tuples back to lists, read-only dicts to dicts."""
    if isinstance(value, tuple):
        return [thawed(v) for v in value]
    if hasattr(value, "items"):
        return {k: thawed(v) for k, v in value.items()}
    return value


def _frozen(value: Any) -> Any:
    """A read-only copy: lists become tuples, dicts read-only dicts (also inside entries)."""
    from types import MappingProxyType

    if isinstance(value, (list, tuple)):
        return tuple(_frozen(item) for item in value)
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    return value


@dataclass
class Cluster:
    """What a layer's check sees: every host spec, by group."""

    specs: list[HostSpec]

    def group(self, name: str) -> list[HostSpec]:
        return [s for s in self.specs if name in s.groups]

    @property
    def k3s_nodes(self) -> list[HostSpec]:
        return self.group("k3s_servers") + self.group("k3s_agents")


# --- Checks several layers share --------------------------------------------------------------


def node_ip(spec: HostSpec) -> str | None:
    """node_ip, or the ssh_hostname / host name when that is an IPv4 address."""
    import ipaddress

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
    import ipaddress

    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def is_secret_bad(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return True
    return value.strip().lower() in EXAMPLE_SECRETS


K3S_OWNED_PATHS = ("/var/lib/rancher", "/var/lib/kubelet", "/etc/rancher")


def check_outside_k3s(err, host: str, key: str, path: Any) -> None:
    """Data must never live where a k3s reset deletes."""
    if isinstance(path, str) and any(path.rstrip("/") == p or path.startswith(p + "/") for p in K3S_OWNED_PATHS):
        err(host, key, f"`{path}` lies inside {', '.join(K3S_OWNED_PATHS)}, which a k3s reset deletes", "put your data elsewhere, e.g. /srv/dnas or /var/lib/longhorn")


def check_blank_device(err, spec: HostSpec, prefix: str) -> None:
    blank = spec.data.get(f"{prefix}_blank_device")
    if not isinstance(blank, str):
        return  # unset, or reported by the type check
    if not re.fullmatch(r"/dev/disk/by-(id|path)/\S+", blank):
        err(spec.name, f"{prefix}_blank_device", f"`{blank!r}` is not a stable disk path", "name the blank disk by /dev/disk/by-id/... or /dev/disk/by-path/...")
    device = str(spec.data.get(f"{prefix}_device") or "")
    if device and not device.startswith(("LABEL=", "UUID=")):
        err(spec.name, f"{prefix}_device", f"`{device}` cannot be given to a disk being formatted", f"use LABEL=... (or UUID=...) for {prefix}_device with {prefix}_blank_device")
    if not spec.data.get(f"{prefix}_device") or not spec.data.get(f"{prefix}_format"):
        err(spec.name, f"{prefix}_blank_device", f"given without {prefix}_device and {prefix}_format = True", f"set {prefix}_device = 'LABEL=...' (the label it gets) and {prefix}_format = True, or remove it")


LABEL_LIMITS = {"ext4": 16, "xfs": 12, "btrfs": 255}


def check_device_label(err, spec: HostSpec, prefix: str) -> None:
    device = spec.data.get(f"{prefix}_device")
    if not isinstance(device, str) or not device.startswith("LABEL="):
        return
    label = device[len("LABEL="):]
    fstype = spec.data.get(f"{prefix}_fstype", "ext4")
    limit = LABEL_LIMITS.get(fstype, 16)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", label) or len(label) > limit:
        err(spec.name, f"{prefix}_device", f"label `{label}` is not usable on {fstype}", f"use at most {limit} letters, digits and ._-")


def check_relative(err, host: str, key: str, path: Any) -> None:
    """A folder given relative to dnas_path (Syncthing folders, Samba shares, NFS exports)."""
    if not isinstance(path, str) or path.startswith("/") or ".." in Path(path).parts:
        err(host, key, f"path `{path!r}` must be relative to dnas_path and stay inside it", "write it like 'data' or 'photos/2024'")
    elif _normpath(path) == "." and key == "syncthing_folders":
        err(host, key, f"path `{path}` is dnas_path itself: syncing it shares dnas_path/.config, where each node keeps its own Syncthing keys", "sync a folder inside it, e.g. 'data'")
    elif _normpath(path) == ".":
        err(host, key, "the root of dnas_path is not shared (it holds Syncthing's keys in .config)", "share a folder inside it, e.g. 'data'")
    elif ".config" in Path(path).parts:
        err(host, key, f"path `{path}` lies in dnas_path/.config, where each node keeps its own Syncthing keys", "share a folder outside .config, e.g. 'data'")
    elif any(c in path for c in '"\n\r\\'):
        err(host, key, f"path `{path!r}` contains a quote, backslash or line break", "use plain folder names like 'photos/2024'")


def _normpath(path: str) -> str:
    import posixpath

    return posixpath.normpath(path)
