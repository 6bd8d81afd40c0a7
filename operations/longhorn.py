"""
Longhorn host prerequisites: kernel modules (loaded only when this kernel has them, persisted
in /etc/modules-load.d), iscsid, a multipathd that leaves Longhorn's devices alone, and the
preflight check that fails with the list of what is still missing.
"""

from __future__ import annotations

import re
import shlex

from pyinfra import host
from pyinfra.api import OperationError, StringCommand, operation

from facts.longhorn import BLACKLIST_DEVNODE, MULTIPATH_CONF, LonghornIscsid, LonghornModules, LonghornMultipath, LonghornPreflight
from operations.system import replace_file

MODULES_CONF = "/etc/modules-load.d/longhorn.conf"


@operation()
def modules(modules: list[str], conf: str = MODULES_CONF, present: bool = True):
    """
    Load kernel modules that are not loaded yet (only those this kernel has: a module built
    in or already loaded is left alone, one the kernel cannot have is reported by the
    preflight) and list them in a modules-load.d file so they load at boot.

    + modules: module names, e.g. ["iscsi_tcp", "dm_crypt"]
    + conf: the modules-load.d file homecloud owns
    + present: False removes the file (loaded modules stay until reboot)

    **Example:**

    .. code:: python

        longhorn.modules(modules=["iscsi_tcp", "dm_crypt"])
    """
    info = host.get_fact(LonghornModules, modules=modules, conf=conf)
    state = info["modules"]
    persisted = info["persisted"]
    if not present:
        if persisted is None:
            host.noop(f"{conf} is absent")
            return
        yield f"rm -f {shlex.quote(conf)}"
        return
    changed = False
    for module in modules:
        if state.get(module) == "available":
            yield StringCommand("modprobe", shlex.quote(module))
            changed = True
    if persisted != list(modules):
        text = "# Kernel modules Longhorn needs (written by homecloud, deploys/longhorn.py).\n" + "".join(
            f"{m}\n" for m in modules
        )
        # homecloud's own file, regenerated from the list: no backup.
        yield from replace_file(conf, text, persisted is not None)
        changed = True
    if not changed:
        missing = [m for m in modules if state.get(m) == "missing"]
        note = f"; not in this kernel: {', '.join(missing)} (the preflight reports it)" if missing else ""
        host.noop("modules loaded and persisted" + note)


@operation()
def iscsid(present: bool = True):
    """
    iscsid enabled at boot and running (Longhorn attaches volumes with iscsiadm). It is only
    started where the kernel offers iSCSI: without it iscsid exits at once, and the
    preflight reports that instead.

    + present: False stops and disables iscsid

    **Example:**

    .. code:: python

        longhorn.iscsid()
    """
    info = host.get_fact(LonghornIscsid)
    if not present:
        if not (info["active"] or info["enabled"]):
            host.noop("iscsid is stopped and disabled")
            return
        yield "systemctl disable --now iscsid.service iscsid.socket"
        return
    if not info["installed"]:
        raise OperationError("iscsid is not installed: install the open-iscsi package first")
    changed = False
    if not info["enabled"]:
        yield "systemctl enable iscsid.service"
        changed = True
    if not info["active"] and info["kernel_iscsi"]:
        yield "systemctl start iscsid.service"
        changed = True
    if not changed:
        if info["active"]:
            host.noop("iscsid is enabled and running")
        else:
            host.noop("iscsid is enabled; this kernel has no iSCSI, so it cannot run (the preflight reports it)")


BLACKLIST_SECTION_RE = re.compile(r"^\s*blacklist\s*\{")
HOMECLOUD_LINE_RE = re.compile(r"devnode .*# Longhorn \(homecloud\)$")


def _blacklisted(conf: list[str] | None) -> bool:
    return bool(conf) and any(BLACKLIST_DEVNODE in line and "devnode" in line for line in conf)


def blacklist_conf(conf: list[str] | None, line: str, present: bool = True) -> list[str]:
    """
    The lines of multipath.conf with `line` in its blacklist section (in the first one; a
    section is added at the end when there is none), or without homecloud's line (present=False).
    """
    conf = list(conf or [])
    if not present:
        return [c for c in conf if not HOMECLOUD_LINE_RE.search(c)]
    for index, current in enumerate(conf):
        if BLACKLIST_SECTION_RE.match(current):
            return conf[: index + 1] + [line] + conf[index + 1 :]
    return conf + ([""] if conf else []) + ["blacklist {", line, "}"]


@operation()
def multipath(present: bool = True):
    """
    Keep multipathd away from Longhorn's devices: where multipath-tools is installed, add
    ``devnode "^sd[a-z0-9]+"`` to the blacklist in /etc/multipath.conf (Longhorn KB) and restart
    multipathd if it runs. Nothing happens where multipathd is not installed. The file may be
    the distribution's or the user's: the one replaced is kept as a backup
    (``/etc/multipath.conf.<timestamp>``, mode 0600); the new one is renamed into place.

    + present: False removes the line homecloud added (after a backup too)

    **Example:**

    .. code:: python

        longhorn.multipath()
    """
    info = host.get_fact(LonghornMultipath, conf=MULTIPATH_CONF)
    conf = info["conf"]
    line = f'    devnode "{BLACKLIST_DEVNODE}"  # Longhorn (homecloud)'
    if not present:
        if not conf or line.strip() not in [c.strip() for c in conf]:
            host.noop("no homecloud blacklist line in /etc/multipath.conf")
            return
    elif not info["installed"]:
        host.noop("multipathd is not installed")
        return
    elif _blacklisted(conf):
        host.noop("multipathd already blacklists Longhorn's devices")
        return
    text = "\n".join(blacklist_conf(conf, line, present)) + "\n"
    yield from replace_file(MULTIPATH_CONF, text, conf is not None, backup=True)
    if info["active"]:
        yield "systemctl restart multipathd.service"


@operation()
def preflight(data_path: str = "/var/lib/longhorn", present: bool = True):
    """
    Check the node the way ``longhornctl check preflight`` does (see facts/longhorn.py); fail
    the host with the list of the checks that failed, with their details.

    + data_path: where Longhorn keeps replicas (must be on ext4 or XFS)
    + present: False skips the check (the prerequisites are being removed)

    **Example:**

    .. code:: python

        longhorn.preflight(data_path="/var/lib/longhorn")
    """
    if not present:
        host.noop("Longhorn preflight skipped")
        return
    checks = host.get_fact(LonghornPreflight, data_path=data_path)
    failed = [f"{name}: {check['detail']}" for name, check in sorted(checks.items()) if not check["ok"]]
    if not checks:
        failed = ["the preflight check produced no result"]
    if not failed:
        host.noop(f"Longhorn preflight: all {len(checks)} checks pass")
        return
    message = f"homecloud: Longhorn preflight failed ({len(failed)} of {len(checks) or '?'} checks):\n" + "\n".join(
        f"  - {item}" for item in failed
    )
    yield f"echo {shlex.quote(message)} >&2; exit 1"
