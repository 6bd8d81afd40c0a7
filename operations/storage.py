"""
Data disks: a filesystem on a device (formatted only when the device is provably blank), a
systemd mount unit for it, and drop-ins that make services wait for the mount.

Used for the NAS data disk (``dnas_device``) and reusable for Longhorn (``longhorn_device``).
Nothing here ever touches data: a device that carries a filesystem, a partition table or any
other signature is never formatted, whatever the inventory says.
"""

from __future__ import annotations

import posixpath

from pyinfra import host
from pyinfra.api import OperationError, QuoteString, StringCommand, operation
from pyinfra.facts.files import FileContents
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from facts.system import FileStates
from facts.storage import BlockDevice, MountPoint, device_link
from operations.system import put_texts, replace_file

UNIT_DIR = "/etc/systemd/system"

# mkfs per filesystem: label option, its length limit, and how to set a chosen UUID.
_MKFS = {
    "ext4": ("mkfs.ext4 -q", "-L", 16, "-U {}"),
    "xfs": ("mkfs.xfs -q", "-L", 12, "-m uuid={}"),
    "btrfs": ("mkfs.btrfs -q", "-L", 255, "-U {}"),
}


def _describe(info: dict) -> str:
    """What a device carries, in words."""
    found = []
    if info.get("fstype"):
        words = f"filesystem {info['fstype']}"
        if info.get("label"):
            words += f" labelled {info['label']!r}"
        if info.get("uuid"):
            words += f" (UUID {info['uuid']})"
        found.append(words)
    if info.get("pttype"):
        found.append(f"a {info['pttype']} partition table")
    if info.get("partitions"):
        found.append("partitions " + ", ".join(info["partitions"]))
    others = sorted(set(info.get("signatures") or []) - {info.get("fstype"), info.get("pttype"), "PMBR"})
    if others:
        found.append("signatures " + ", ".join(others))
    if info.get("mountpoints"):
        found.append("mounted at " + ", ".join(info["mountpoints"]))
    return "; ".join(found)


def _is_blank(info: dict) -> bool:
    return not (
        info.get("fstype")
        or info.get("pttype")
        or info.get("signatures")
        or info.get("partitions")
        or info.get("mountpoints")
    )


def _udev_link_command(info: dict, link: str) -> StringCommand:
    """
    Make the /dev/disk/by-* link of a device exist: ask udev where it runs (it creates the link
    after the change event mkfs causes), create the link as udev would where no udev runs (a
    container). Real boards always take the first branch.
    """
    return StringCommand(
        "if [ -S /run/udev/control ]; then udevadm trigger --settle",
        QuoteString(info["path"]),
        "|| udevadm settle; else mkdir -p",
        QuoteString(posixpath.dirname(link)),
        "&& ln -sfn",
        QuoteString(info["path"]),
        QuoteString(link),
        "; fi",
    )


@operation()
def filesystem(
    device: str,
    fstype: str = "ext4",
    label: str | None = None,
    uuid: str | None = None,
    format: bool = False,
    blank_device: str | None = None,
):
    """
    Make sure a device carries a filesystem; format it only when asked and provably blank.

    + device: the device as the inventory names it: ``LABEL=x``, ``UUID=x``, ``PARTUUID=x``,
      ``PARTLABEL=x`` or a path
    + fstype: the filesystem wanted (ext4, xfs or btrfs)
    + label: the label a new filesystem gets (``x`` of ``LABEL=x``)
    + uuid: the UUID a new filesystem gets (``x`` of ``UUID=x``)
    + format: allow formatting; without it a blank device is an error
    + blank_device: a blank disk (by a stable path, ``/dev/disk/by-id/...``) to format when no
      device matches ``device`` yet: it then gets ``label``/``uuid`` and matches from now on

    A device matching ``device`` with a ``fstype`` filesystem is used as it is (its label and
    contents are never changed). Anything else found on the disk that is to be formatted (a
    filesystem, a partition table, any signature ``wipefs`` knows, partitions, a mount) stops
    the run with an OperationError naming the host, the device, what was found and the fix.
    The mkfs command re-checks the device is blank right before it runs.

    **Example:**

    .. code:: python

        storage.filesystem(
            name="Data disk has an ext4 filesystem",
            device="LABEL=homecloud-data",
            fstype="ext4",
            label="homecloud-data",
            format=True,
            blank_device="/dev/disk/by-id/usb-SanDisk_Extreme_1234-0:0",
        )
    """
    if fstype not in _MKFS:
        raise OperationError(f"{host.name}: filesystem type {fstype!r} is not supported (use one of {', '.join(_MKFS)})")
    mkfs, label_flag, label_max, uuid_flag = _MKFS[fstype]

    info = host.get_fact(BlockDevice, device=device)
    if info:
        target, target_name = info, device
        if info.get("fstype") == fstype:
            host.noop(f"{device} ({info['path']}) carries filesystem {fstype}")
            return
        if info.get("fstype") or not _is_blank(info):
            raise OperationError(
                f"{host.name}: {device} ({info['path']}) holds {_describe(info)}, not filesystem {fstype}. "
                "homecloud never formats a disk that carries anything. Fix: if this is the right disk "
                f"and its filesystem is fine, set the fstype to {info.get('fstype') or 'what it holds'}; "
                "otherwise point the device at the right disk (blkid / lsblk -f show them)."
            )
    elif blank_device:
        target = host.get_fact(BlockDevice, device=blank_device)
        target_name = blank_device
        if not target:
            raise OperationError(
                f"{host.name}: no device {device} and no blank device {blank_device} is present. "
                "Fix: plug the disk in and check its name with `ls -l /dev/disk/by-id/` or `lsblk -f`."
            )
        if not _is_blank(target):
            raise OperationError(
                f"{host.name}: refusing to format {blank_device} ({target['path']}): it holds {_describe(target)}. "
                "homecloud never formats a disk that carries anything. Fix: if that is your data disk, "
                f"name it by what it carries (e.g. LABEL={target.get('label') or '...'} / "
                f"UUID={target.get('uuid') or '...'}) instead of {device}; if the data there may go, "
                "copy what you need and wipe it yourself (wipefs -a), then run again."
            )
    else:
        raise OperationError(
            f"{host.name}: no device {device} is present. Fix: plug the disk in and check it with "
            f"`blkid` / `lsblk -f`, or give it that name yourself (e.g. mkfs.{fstype} -L <label> /dev/sdX "
            "on a disk you may erase); to let homecloud format a blank disk, also name it by a "
            "stable path (/dev/disk/by-id/...) as the blank device and allow formatting."
        )

    if not format:
        raise OperationError(
            f"{host.name}: {target_name} ({target['path']}) is blank (no filesystem, no partition table). "
            f"Fix: allow formatting (dnas_format = True / longhorn_format = True) to create {fstype} on it."
        )

    if label and len(label) > label_max:
        raise OperationError(
            f"{host.name}: label {label!r} is longer than {fstype} allows ({label_max} characters). "
            "Fix: choose a shorter label."
        )
    path = target["path"]
    options: list = []
    if label:
        options += [label_flag, QuoteString(label)]
    if uuid:
        flag, _, value = uuid_flag.partition(" ")
        options += [flag, QuoteString(value.format(uuid))]
    # Re-check right before formatting: blkid -p exits 2 when it finds nothing at all.
    yield StringCommand(
        "blkid -p",
        QuoteString(path),
        ">/dev/null 2>&1; [ $? -eq 2 ] && [ -z \"$(wipefs -n -i",
        QuoteString(path),
        ')" ] || { echo',
        QuoteString(f"{path} is not blank: refusing to format it"),
        ">&2; exit 1; };",
        mkfs,
        *options,
        QuoteString(path),
    )
    if label or uuid:
        link = device_link(f"LABEL={label}" if label else f"UUID={uuid}")
        yield _udev_link_command(target, link)


def _put_text(dest: str, text: str, mode: str = "644") -> list:
    """
    Commands that write `text` to `dest` (root-owned) unless it holds exactly that already.

    Mount unit names often hold a backslash (``srv-my\\x2dnas.mount``), and for such names
    ``sha1sum`` escapes its output, so pyinfra's checksum facts (and ``files.put``) never see
    the file as unchanged: the contents are compared instead.
    """
    current = host.get_fact(FileContents, path=dest)
    if current is not None and current == text.splitlines():
        return []
    # homecloud's own unit, regenerated from the arguments: no backup.
    return list(replace_file(dest, text, current is not None, mode=mode))


def mount_unit(device: str, path: str, fstype: str, options: str) -> str:
    """The text of the mount unit."""
    return "\n".join(
        [
            "# Managed by homecloud (operations/storage.py): the data disk.",
            "[Unit]",
            f"Description=homecloud data disk {device} at {path}",
            "",
            "[Mount]",
            f"What={device_link(device)}",
            f"Where={path}",
            f"Type={fstype}",
            f"Options={options}",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


@operation()
def mount(
    device: str,
    path: str,
    fstype: str = "ext4",
    options: str = "defaults",
    present: bool = True,
):
    """
    Mount a device at a path with a systemd mount unit (enabled, so it mounts at boot).

    + device: ``LABEL=x``, ``UUID=x``, ``PARTUUID=x``, ``PARTLABEL=x`` or a device path
    + path: the mount point (absolute)
    + fstype: the filesystem type
    + options: mount options (changed options are applied with a remount)
    + present: False stops (unmounts) and removes the unit; the data on the disk stays

    The unit is named by ``systemd-escape -p --suffix=mount <path>`` and refers to the
    device by its udev link (``/dev/disk/by-label/x``), so at boot systemd waits for the disk.
    The operation refuses to mount over a folder that already holds files (they would be
    hidden) or over another device that is mounted there.

    **Example:**

    .. code:: python

        storage.mount(
            name="Mount the data disk",
            device="LABEL=homecloud-data",
            path="/srv/dnas",
            fstype="ext4",
            options="defaults,noatime",
        )
    """
    if not path.startswith("/") or path.rstrip("/") == "":
        raise OperationError(f"{host.name}: mount point {path!r} must be an absolute path other than /")
    path = path.rstrip("/")

    point = host.get_fact(MountPoint, path=path)
    unit = point["unit"]
    unit_file = f"{UNIT_DIR}/{unit}"

    if not present:
        status = host.get_fact(SystemdStatus, services=[unit])
        enabled = host.get_fact(SystemdEnabled, services=[unit])
        if status.get(unit):
            yield StringCommand("systemctl stop", QuoteString(unit))
        if enabled.get(unit):
            yield StringCommand("systemctl disable", QuoteString(unit))
        removed = host.get_fact(FileContents, path=unit_file) is not None
        if removed:
            yield StringCommand("rm -f", QuoteString(unit_file))
            yield "systemctl daemon-reload"
        if not (status.get(unit) or enabled.get(unit) or removed):
            host.noop(f"no mount unit {unit}")
        return

    info = host.get_fact(BlockDevice, device=device)
    if not info:
        raise OperationError(
            f"{host.name}: no device {device} is present, cannot mount it at {path}. "
            "Fix: plug the disk in (blkid / lsblk -f list the disks) or correct the device name."
        )
    if point["mounted"] and point["source"] != info["path"]:
        raise OperationError(
            f"{host.name}: {point['source']} is mounted at {path}, not {device} ({info['path']}). "
            f"Fix: unmount it (and remove its fstab entry) or choose another path."
        )
    if not point["mounted"] and not point["empty"]:
        raise OperationError(
            f"{host.name}: {path} already holds files on the root filesystem; mounting {device} there "
            f"would hide them. Fix: move them onto the disk (mount it elsewhere, copy, empty {path}), then run again."
        )
    if info.get("fstype") and info["fstype"] != fstype:
        raise OperationError(
            f"{host.name}: {device} ({info['path']}) holds {info['fstype']}, not {fstype}. Fix: set the fstype to {info['fstype']}."
        )

    link = device_link(device)
    if not info["link_exists"]:
        # The unit names the device by its udev link: have udev make it, or make it where no
        # udev runs (a container).
        yield _udev_link_command(info, link)

    enabled = host.get_fact(SystemdEnabled, services=[unit])

    written = _put_text(unit_file, mount_unit(device, path, fstype, options))
    if written:
        yield from written
        yield "systemctl daemon-reload"
    if not enabled.get(unit):
        yield StringCommand("systemctl enable", QuoteString(unit))
    if not point["mounted"]:
        yield StringCommand("systemctl start", QuoteString(unit))
    elif written:
        # Mounted already: apply changed options with a remount (never an unmount under load).
        yield StringCommand("systemctl reload", QuoteString(unit))
    if not (written or not enabled.get(unit) or not point["mounted"]):
        host.noop(f"{device} is mounted at {path} by {unit}")


@operation()
def requires_mount(services: list[str], path: str, present: bool = True):
    """
    Make services start only with the filesystem of a path mounted (a systemd drop-in each).

    + services: the units (``smbd``, ``syncthing@dnas``; ``.service`` is added when missing)
    + path: the path the services need (``RequiresMountsFor=``: Requires + After its mounts)
    + present: False removes the drop-ins

    Stopping the mount stops the services too, so they never write into an empty mount point.
    The services are not restarted: the dependency applies from their next start. The
    drop-ins of all the services are checked with one fact read.

    **Example:**

    .. code:: python

        storage.requires_mount(
            name="Samba and Syncthing wait for the data disk",
            services=["smbd", "syncthing@dnas"],
            path="/srv/dnas",
        )
    """
    if not services:
        raise OperationError("services must name at least one unit")
    units = [service if "." in service.split("@")[-1] else f"{service}.service" for service in services]
    dropins = [f"{UNIT_DIR}/{unit}.d/homecloud-mount.conf" for unit in units]
    if present:
        text = (
            "# Managed by homecloud (operations/storage.py): start only with the data disk mounted.\n"
            f"[Unit]\nRequiresMountsFor={path}\n"
        )
        written = put_texts([{"dest": dropin, "text": text} for dropin in dropins])
        changes = [command for dropin in dropins for command in written[dropin]]
    else:
        states = host.get_fact(FileStates, paths=dropins)
        changes = [StringCommand("rm -f", QuoteString(dropin)) for dropin in dropins if states.get(dropin)]
    if changes:
        yield from changes
        yield "systemctl daemon-reload"
    else:
        host.noop(f"{', '.join(units)} {'wait for' if present else 'do not wait for'} the mounts of {path}")
