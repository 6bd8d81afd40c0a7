"""
The base layer every cluster node needs before k3s: its name and the cluster's names in
/etc/hosts, swap off, a synchronised clock, kernel modules and sysctls, and an iptables that
works with k3s.

Every operation decides from facts read on the node (facts/base.py and pyinfra's own); a
second run changes nothing. Files the user may have edited (/etc/hosts, /etc/fstab,
zram-generator.conf) are backed up (``<path>.<timestamp>``, mode 0600, see
``system.backup_command``) before homecloud changes them; /etc/hostname is not.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationError, QuoteString, StringCommand, operation
from pyinfra.facts.files import FileContents
from pyinfra.facts.server import Hostname
from pyinfra.operations import files

from facts.base import (
    FSTAB_SWAP_OFF_MARK,
    OTHER_NTP_DAEMONS,
    ZRAM_GENERATOR_CONF,
    Iptables,
    KernelModuleStatus,
    Swap,
    SysctlValues,
    TimeSync,
)
from facts.system import FileStates
from operations.system import apt_install, backup_command, put_texts, replace_file, restore_latest_backup

HOSTS_BEGIN = "# BEGIN homecloud nodes (managed by homecloud: edits inside this block are replaced)"
HOSTS_END = "# END homecloud nodes"

# systemctl is-enabled states that a `systemctl disable` turns off.
ENABLED_STATES = ("enabled", "enabled-runtime", "generated", "linked", "linked-runtime", "alias", "indirect")

# k3s docs: iptables 1.8.0 - 1.8.4 with the nf_tables backend has bugs (duplicate rules).
BUGGY_NFT_IPTABLES = ((1, 8, 0), (1, 8, 4))


def _strip_block(lines: list[str]) -> tuple[list[str], int | None]:
    """The lines without the homecloud block, and the index where the block was (or None)."""
    kept: list[str] = []
    at, inside = None, False
    for line in lines:
        if line.strip() == HOSTS_BEGIN:
            inside, at = True, len(kept)
            continue
        if inside and line.strip() == HOSTS_END:
            inside = False
            continue
        if not inside:
            kept.append(line)
    return kept, at


@operation()
def hosts(
    hostname: str,
    nodes: dict[str, str] | None = None,
    present: bool = True,
    path: str = "/etc/hosts",
    hostname_file: str = "/etc/hostname",
):
    """
    Set the node's host name and keep a managed block of the cluster's nodes in /etc/hosts.

    + hostname: the node's host name (the inventory name)
    + nodes: {name: address} of every cluster node, written in inventory order
    + present: False removes the managed block again (the host name is left as it is)
    + path: the hosts file
    + hostname_file: the file the host name is read from at boot

    Lines outside the block are kept as they are, except a Debian-style ``127.0.1.1`` line
    that does not name the host, which is pointed at the new host name (sudo and other tools
    resolve the own name through it). The hosts file is kept as a backup (``<path>.<timestamp>``,
    mode 0600) before it changes; the new one replaces it with an atomic rename.

    **Example:**

    .. code:: python

        base.hosts(
            name="Host name and cluster nodes in /etc/hosts",
            hostname="pi1",
            nodes={"pi1": "192.168.1.11", "pi2": "192.168.1.12"},
        )
    """
    if present and not hostname:
        raise OperationError("hostname must be set")
    nodes = nodes or {}
    for node_name, address in nodes.items():
        if not node_name or not address or any(c.isspace() for c in f"{node_name}{address}"):
            raise OperationError(f"invalid node entry {node_name!r}: {address!r}")

    changed = False
    if present:
        current_name = host.get_fact(Hostname)
        if current_name != hostname:
            yield StringCommand("hostname", QuoteString(hostname))
            changed = True
        name_file = host.get_fact(FileContents, path=hostname_file)
        if [line.strip() for line in name_file or [] if line.strip()] != [hostname]:
            # Only the name is in it, and the name is homecloud's to set: no backup.
            yield from replace_file(hostname_file, f"{hostname}\n", name_file is not None)
            changed = True

    hosts_file = host.get_fact(FileContents, path=path)
    lines = list(hosts_file or [])
    new_lines, at = _strip_block(lines)
    if present:
        for index, line in enumerate(new_lines):
            fields = line.split("#", 1)[0].split()
            if fields and fields[0] == "127.0.1.1" and hostname not in fields[1:]:
                new_lines[index] = f"127.0.1.1\t{hostname}"
        block = [HOSTS_BEGIN] + [f"{address}\t{node_name}" for node_name, address in nodes.items()] + [HOSTS_END]
        if at is None:  # first time: at the end, after a blank line
            while new_lines and not new_lines[-1].strip():
                new_lines.pop()
            new_lines = new_lines + ([""] if new_lines else []) + block
        else:  # where the block was
            new_lines = new_lines[:at] + block + new_lines[at:]
    elif at is not None:  # the blank line written before the block goes with it
        while new_lines and not new_lines[-1].strip():
            new_lines.pop()

    if new_lines != lines:
        # The distribution's file with the user's lines: kept as a backup.
        yield from replace_file(path, "\n".join(new_lines) + "\n", hosts_file is not None, backup=True)
        changed = True

    if not changed:
        host.noop(
            f"host name is {hostname} and {path} lists the {len(nodes)} cluster nodes"
            if present
            else f"{path} has no homecloud block"
        )


@operation()
def swap_off(present: bool = True, fstab: str = "/etc/fstab"):
    """
    Turn swap off now and at boot (the kubelet refuses to run with swap).

    + present: True turns swap off; False undoes what this operation did (fstab lines back,
      dphys-swapfile / zramswap re-enabled, zram-generator config restored) and turns swap on
    + fstab: the fstab file

    Handles swap lines in fstab (commented out with a ``#homecloud-swap-off#`` prefix, the file
    backed up to ``<fstab>.<timestamp>`` first), dphys-swapfile (Raspberry Pi OS), zram-tools
    (zramswap) and systemd's zram-generator (an /etc/systemd/zram-generator.conf without
    devices). ``swapoff -a`` runs only when swap is active.

    **Example:**

    .. code:: python

        base.swap_off(name="Swap off")
    """
    swap = host.get_fact(Swap)
    services = swap["services"]
    generator = swap["zram_generator"]
    changed = False

    if present:
        for unit in ("dphys-swapfile", "zramswap"):
            state = services.get(unit)
            if not state:
                continue
            if state["enabled"] in ENABLED_STATES:
                yield StringCommand("systemctl", "disable", "--now", f"{unit}.service")
                changed = True
            elif state["active"] == "active":
                yield StringCommand("systemctl", "stop", f"{unit}.service")
                changed = True
        if generator["installed"] and not generator["disabled"]:
            # The distribution's or the user's file: kept as a backup, put back by present=False.
            current = host.get_fact(FileStates, paths=[ZRAM_GENERATOR_CONF]).get(ZRAM_GENERATOR_CONF)
            yield from replace_file(
                ZRAM_GENERATOR_CONF,
                "# homecloud: no zram swap devices (the kubelet refuses swap).\n"
                f"# The previous file, if any, is kept as {ZRAM_GENERATOR_CONF}.<yymmddHHMM>.\n",
                current is not None,
                backup=True,
            )
            changed = True
        if swap["fstab"]:
            yield backup_command(fstab)
            yield StringCommand(
                "sed",
                "-i",
                "-E",
                QuoteString(
                    r"s/^([[:space:]]*[^#[:space:]][^[:space:]]*[[:space:]]+[^[:space:]]+[[:space:]]+swap([[:space:]].*)?)$/"
                    + FSTAB_SWAP_OFF_MARK
                    + r"\1/"
                ),
                QuoteString(fstab),
            )
            yield "systemctl daemon-reload"
            changed = True
        if swap["active"]:
            yield "swapoff -a"
            changed = True
        if not changed:
            host.noop("swap is off and stays off at boot")
        return

    for unit in ("dphys-swapfile", "zramswap"):
        state = services.get(unit)
        if state and state["enabled"] == "disabled":
            yield StringCommand("systemctl", "enable", "--now", f"{unit}.service")
            changed = True
    if generator["installed"] and generator["disabled"]:
        # The newest backup is the file swap_off replaced; without one, homecloud's file goes.
        yield StringCommand(
            "if ! {",
            restore_latest_backup(ZRAM_GENERATOR_CONF),
            "; }; then if grep -qs '^# homecloud: no zram'",
            ZRAM_GENERATOR_CONF,
            "; then rm -f",
            ZRAM_GENERATOR_CONF,
            "; fi; fi",
        )
        changed = True
    if swap["fstab_off"]:
        yield backup_command(fstab)
        yield StringCommand("sed", "-i", QuoteString(f"s/^{FSTAB_SWAP_OFF_MARK}//"), QuoteString(fstab))
        yield "systemctl daemon-reload"
        yield "swapon -a"
        changed = True
    if not changed:
        host.noop("nothing homecloud turned off is left to turn back on")


@operation()
def time_sync(present: bool = True):
    """
    Keep the clock synchronised with systemd-timesyncd (TLS certificates and etcd need it).

    + present: True enables and starts systemd-timesyncd; False stops and disables it

    When another NTP daemon (chrony, ntp, ntpsec, openntpd) is installed it is left in charge
    and nothing changes: installing systemd-timesyncd would remove it. In a container the
    unit is only enabled: its ``ConditionVirtualization=!container`` skips it there, the host
    keeps the clock.

    **Example:**

    .. code:: python

        base.time_sync(name="Clock in sync")
    """
    fact = host.get_fact(TimeSync)
    units = fact["units"]
    timesyncd = units.get("systemd-timesyncd") or {"enabled": "absent", "active": "inactive"}

    if not present:
        if timesyncd["enabled"] in ENABLED_STATES or timesyncd["active"] == "active":
            yield "systemctl disable --now systemd-timesyncd.service"
        else:
            host.noop("systemd-timesyncd is not enabled")
        return

    others = [unit for unit in OTHER_NTP_DAEMONS if (units.get(unit) or {}).get("enabled", "absent") != "absent"]
    running = [unit for unit in others if units[unit]["active"] == "active"]
    if running:
        host.noop(f"{', '.join(running)} keeps the clock; systemd-timesyncd is left alone")
        return
    if others:
        host.noop(
            f"{', '.join(others)} is installed but not running: start it (or remove it to let homecloud use "
            "systemd-timesyncd); nothing changed"
        )
        return

    changed = False
    if timesyncd["enabled"] == "absent":
        yield from apt_install(["systemd-timesyncd"], cache_time=3600)
        changed = True
    if fact["container"]:
        if timesyncd["enabled"] != "enabled":
            yield "systemctl enable systemd-timesyncd.service"
            changed = True
        if not changed:
            host.noop(f"systemd-timesyncd is enabled (in a {fact['container']} container the host keeps the clock)")
        return
    if timesyncd["enabled"] != "enabled" or timesyncd["active"] != "active":
        yield "systemctl enable --now systemd-timesyncd.service"
        changed = True
    if not changed:
        host.noop("systemd-timesyncd is enabled and running")


@operation()
def kernel_modules(
    modules: list[str],
    present: bool = True,
    path: str = "/etc/modules-load.d/homecloud.conf",
):
    """
    Load kernel modules that are not there yet and list them for systemd-modules-load at boot.

    + modules: module names, e.g. ["overlay", "br_netfilter"]
    + present: False removes the boot list (loaded modules are not unloaded)
    + path: the modules-load.d file

    A module that is already loaded or built into the kernel is not modprobe'd. A module that
    is neither there nor loadable stops the operation with an error naming host and module.

    **Example:**

    .. code:: python

        base.kernel_modules(name="Kernel modules for k3s", modules=["overlay", "br_netfilter"])
    """
    if not present:
        yield from files.file._inner(path=path, present=False)
        return
    if not modules:
        raise OperationError("modules must name at least one module")

    status = host.get_fact(KernelModuleStatus, modules=list(modules))
    missing = [m for m in modules if status.get(m, "missing") == "missing"]
    if missing:
        raise OperationError(
            f"{host.name}: kernel module(s) {', '.join(missing)} are neither loaded, built in nor "
            "loadable with modprobe; install a kernel that provides them"
        )
    to_load = [m for m in modules if status.get(m) == "loadable"]
    if to_load:
        yield StringCommand("modprobe", "-a", *[QuoteString(m) for m in to_load])

    content = "# homecloud: kernel modules k3s needs, loaded at boot by systemd-modules-load\n"
    content += "".join(f"{m}\n" for m in modules)
    written = put_texts([{"dest": path, "text": content}])[path]
    yield from written
    if not to_load and not written:
        host.noop(f"{'/'.join(modules)} already present (loaded or built in)")


def _normalise(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return " ".join(str(value).split())


@operation()
def sysctls(
    values: dict[str, str],
    present: bool = True,
    path: str = "/etc/sysctl.d/90-homecloud.conf",
):
    """
    Set sysctls now (only those whose live value differs) and persist them for the next boot.

    + values: {key: value}, e.g. {"net.ipv4.ip_forward": "1"}
    + present: False removes the persisted file (live values stay until the next boot)
    + path: the sysctl.d file

    A key that does not exist on the host (``net.bridge.*`` before br_netfilter is loaded) is
    set with a check that fails with a clear message if the key still does not exist when
    the command runs; it is never silently skipped. Keys are applied before the file is
    written, so a key that cannot be set is not persisted either.

    **Example:**

    .. code:: python

        base.sysctls(name="sysctls for k3s", values={"net.ipv4.ip_forward": "1"})
    """
    if not present:
        yield from files.file._inner(path=path, present=False)
        return
    if not values:
        raise OperationError("values must hold at least one sysctl")

    keys = sorted(values)
    live = host.get_fact(SysctlValues, keys=keys)
    changed = False
    for key in keys:
        want = _normalise(values[key])
        setting = StringCommand(QuoteString(key), "=", QuoteString(want), _separator="")
        current = live.get(key)
        if current is None:
            yield StringCommand(
                "if sysctl -n",
                QuoteString(key),
                ">/dev/null 2>&1; then sysctl -w",
                setting,
                "; else echo",
                QuoteString(
                    f"homecloud: sysctl {key} does not exist on this host "
                    "(net.bridge.* keys appear when the br_netfilter module is loaded)"
                ),
                ">&2; exit 1; fi",
            )
            changed = True
        elif current != want:
            yield StringCommand("sysctl", "-w", setting)
            changed = True

    content = "# homecloud: sysctls for k3s, applied at boot by systemd-sysctl\n"
    content += "".join(f"{key} = {_normalise(values[key])}\n" for key in keys)
    written = put_texts([{"dest": path, "text": content}])[path]
    yield from written
    if not changed and not written:
        host.noop(f"{len(keys)} sysctls already have their values")


@operation()
def iptables_legacy(present: bool = True, auto: bool = True):
    """
    Select the iptables-legacy alternative where the installed iptables needs it.

    + present: True selects iptables-legacy (when needed, see auto); False selects iptables-nft
      again if legacy is selected
    + auto: only switch when the installed iptables is the nf_tables backend in the versions
      the k3s docs name as buggy (1.8.0 - 1.8.4); False: always select legacy

    Nothing changes when iptables is not installed (k3s brings its own).

    **Example:**

    .. code:: python

        base.iptables_legacy(name="iptables that works with k3s", auto=True)
    """
    fact = host.get_fact(Iptables)
    version = fact["version"]
    if version is None:
        host.noop("iptables is not installed (k3s brings its own)")
        return
    shown = ".".join(str(v) for v in version)
    selected = fact["selected"] or ""

    if not present:
        if selected.endswith("-legacy"):
            yield "update-alternatives --set iptables /usr/sbin/iptables-nft"
            yield "update-alternatives --set ip6tables /usr/sbin/ip6tables-nft"
        else:
            host.noop(f"iptables {shown} ({fact['backend']}) is not the legacy alternative")
        return

    if fact["backend"] == "legacy" or selected.endswith("-legacy"):
        host.noop(f"iptables {shown} uses the legacy backend")
        return
    buggy = BUGGY_NFT_IPTABLES[0] <= tuple(version) <= BUGGY_NFT_IPTABLES[1]
    if auto and not buggy:
        host.noop(f"iptables {shown} ({fact['backend']}) works with k3s; left as it is")
        return
    if not fact["legacy_available"]:
        raise OperationError(f"{host.name}: iptables {shown} needs the legacy backend but iptables-legacy is not installed")
    yield "update-alternatives --set iptables /usr/sbin/iptables-legacy"
    yield "update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy"
