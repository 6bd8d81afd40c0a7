"""
Raspberry Pi boot flags for k3s: the memory cgroup (and cpuset where the kernel keeps it off)
on the kernel command line in cmdline.txt, and a reboot only where those flags changed.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import OperationError, QuoteString, StringCommand, operation
from pyinfra.operations import server

from facts.raspberrypi import Board

MEMORY_FLAGS = ("cgroup_memory=1", "cgroup_enable=memory")
CPUSET_FLAG = "cgroup_enable=cpuset"
MANAGED_FLAGS = MEMORY_FLAGS + (CPUSET_FLAG,)


def wanted_flags(cgroups: dict, cpuset: bool | None) -> list[str]:
    """The flags k3s needs: memory always; cpuset when asked, or (None) when it is off."""
    flags = list(MEMORY_FLAGS)
    if cpuset or (cpuset is None and cgroups.get("cpuset") is False):
        flags.append(CPUSET_FLAG)
    return flags


def edit_cmdline(cmdline: str, flags: list[str], present: bool = True) -> str:
    """
    The new one-line command line: `flags` appended when missing (a cgroup_memory=<other>
    is corrected in place), or removed (present=False). Every other token, and the order of
    the tokens, is kept.
    """
    tokens = cmdline.split()
    if not present:
        return " ".join(t for t in tokens if t not in flags)
    result = []
    for token in tokens:
        if token.startswith("cgroup_memory=") and "cgroup_memory=1" in flags:
            token = "cgroup_memory=1"
        if token in result and token in flags:
            continue  # a flag we manage, given twice: keep one
        result.append(token)
    result += [flag for flag in flags if flag not in result]
    return " ".join(result)


@operation()
def cgroup_flags(present: bool = True, cpuset: bool | None = None):
    """
    Add the cgroup flags k3s needs to the Raspberry Pi kernel command line (cmdline.txt).

    + present: False removes the flags this operation manages again
    + cpuset: add ``cgroup_enable=cpuset`` too; None: only when /proc/cgroups shows cpuset off

    Edits the first line of /boot/firmware/cmdline.txt (or /boot/cmdline.txt), which must stay
    a single line: flags are appended once, never duplicated, other tokens are kept in order.
    The previous file is kept as ``cmdline.txt.homecloud.bak``; the edit is an atomic rename.
    Nodes without a cmdline.txt (not booted by the Pi firmware) are left alone. The change
    takes effect at the next boot: see ``raspberrypi.reboot_for_flags``.

    **Example:**

    .. code:: python

        raspberrypi.cgroup_flags(name="cgroup flags for k3s")
    """
    board = host.get_fact(Board)
    path = board["cmdline_path"]
    if not path:
        host.noop("no cmdline.txt: this node is not booted by the Raspberry Pi firmware")
        return
    cmdline = board["cmdline"] or ""
    if not cmdline.strip():
        raise OperationError(f"{host.name}: {path} has an empty first line; fix it before adding boot flags")

    flags = wanted_flags(board["cgroups"], cpuset) if present else list(MANAGED_FLAGS)
    new_cmdline = edit_cmdline(cmdline, flags, present)
    if new_cmdline == cmdline:
        host.noop(f"{path} has {' '.join(flags)}" if present else f"{path} has no homecloud cgroup flags")
        return
    # sed -i writes a new file in the same folder and renames it over the old one: atomic on
    # the FAT boot partition too. Only line 1 is replaced; further lines are left as they are.
    escaped = new_cmdline.replace("\\", "\\\\")
    yield StringCommand("sed", "-i.homecloud.bak", QuoteString(f"1c\\{escaped}"), QuoteString(path))


def pending_flags(board: dict) -> list[str]:
    """
    Managed flags in cmdline.txt that the running kernel was not booted with. (Only this
    direction: the firmware may add flags of its own to /proc/cmdline; a removal of the
    flags with present=False takes effect at the next reboot the user chooses.)
    """
    if not board.get("cmdline_path"):
        return []
    configured = (board.get("cmdline") or "").split()
    running = set((board.get("running") or "").split())
    return [flag for flag in MANAGED_FLAGS if flag in configured and flag not in running]


@operation(is_idempotent=False)
def reboot_for_flags(reboot: bool = True, delay: int = 10, reboot_timeout: int = 600):
    """
    Reboot a node whose cmdline.txt cgroup flags differ from the running kernel's, and wait.

    + reboot: False only reports that a reboot is needed
    + delay: seconds to wait before reconnecting
    + reboot_timeout: seconds to wait for the node to come back

    Decides from facts (cmdline.txt against /proc/cmdline), so a run interrupted after the
    edit still reboots next time, and a node that already booted with the flags never
    reboots. Run it with ``_serial=True`` so nodes reboot one at a time.

    **Example:**

    .. code:: python

        raspberrypi.reboot_for_flags(name="Reboot for boot flags", _serial=True)
    """
    board = host.get_fact(Board)
    if not board["cmdline_path"]:
        host.noop("no cmdline.txt: this node is not booted by the Raspberry Pi firmware")
        return
    pending = pending_flags(board)
    if not pending:
        host.noop("the running kernel has the boot flags of cmdline.txt")
        return
    if not reboot:
        message = (
            f"reboot needed: {' '.join(pending)} in {board['cmdline_path']} but the running kernel was booted "
            "without them (rpi_reboot is off: reboot this node yourself)"
        )
        logger.warning(f"{host.name}: {message}")
        host.noop(message)
        return
    yield from server.reboot._inner(delay=delay, reboot_timeout=reboot_timeout)
