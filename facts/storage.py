"""
Facts about block devices and mount points, for the data disks of the NAS (and Longhorn).

Devices are named the way the inventory names them: ``LABEL=...``, ``UUID=...``,
``PARTUUID=...``, ``PARTLABEL=...`` or a path (``/dev/disk/by-id/...``). They are resolved
through the ``/dev/disk/by-*`` links udev keeps, and through ``findfs`` (libblkid scans the
devices itself) where udev does not run, for example in a container.

What a device carries is probed on the device itself (``blkid -p`` reads the superblocks, it
does not trust a cache; ``wipefs -n`` lists every signature it knows, partition tables
included), so a disk is only ever called blank when nothing at all was found on it.
"""

from __future__ import annotations

import re
import shlex

from pyinfra.api import FactBase

# The udev link for each kind of device spec.
_SPEC_LINKS = {
    "LABEL": "/dev/disk/by-label/",
    "UUID": "/dev/disk/by-uuid/",
    "PARTUUID": "/dev/disk/by-partuuid/",
    "PARTLABEL": "/dev/disk/by-partlabel/",
}


def _findmnt_unescape(text: str) -> str:
    """findmnt -r / -P write blanks, quotes, backslashes and every non-ASCII byte as ``\\xHH``."""
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode())
    return raw.decode("utf-8", "surrogateescape")


def _blkid_unescape(text: str) -> str:
    """
    ``blkid -o export`` puts a backslash before blanks, quotes, ``$``, ``<``, ``>`` and ``\\``.
    (Non-ASCII bytes come as ``M-x``, which cannot be told from a literal "M-": left as printed.)
    """
    return re.sub(r"\\(.)", r"\1", text)


def device_link(device: str) -> str:
    """The path udev gives a device spec: ``LABEL=x`` -> ``/dev/disk/by-label/x``; paths as is."""
    kind, sep, value = device.partition("=")
    if sep and kind in _SPEC_LINKS:
        return _SPEC_LINKS[kind] + value
    return device


class BlockDevice(FactBase):
    """
    Returns what a block device carries; an empty dict when no such device is present.

    .. code:: python

        {
            "path": "/dev/sda1",                       # the device node it resolves to
            "link": "/dev/disk/by-label/homecloud-data",  # its udev link (or the path given)
            "link_exists": True,                       # False where no udev made the link
            "udev": True,                              # udev is running on the host
            "fstype": "ext4",                          # blkid -p TYPE (None: no filesystem)
            "label": "homecloud-data",
            "uuid": "0f3c...",
            "pttype": None,                            # partition table type (gpt, dos)
            "signatures": ["ext4"],                    # every signature wipefs -n found
            "partitions": [],                          # partitions the kernel knows of
            "mountpoints": ["/srv/dnas"],
        }
    """

    default = dict

    def requires_command(self, device: str) -> str:
        return "blkid"

    def command(self, device: str) -> str:
        spec = shlex.quote(device)
        link = shlex.quote(device_link(device))
        return "\n".join(
            [
                f"link={link}",
                'dev=$(readlink -f "$link" 2>/dev/null)',
                f'[ -b "$dev" ] || dev=$(findfs {spec} 2>/dev/null)',
                '[ -b "$dev" ] || exit 0',
                'echo "path=$dev"',
                'echo "link=$link"',
                '[ -e "$link" ] && echo "link_exists=1"',
                "[ -S /run/udev/control ] && echo udev=1",
                "echo '[blkid]'",
                'blkid -p -o export "$dev" 2>/dev/null',
                "echo '[wipefs]'",
                'wipefs -n -i -O TYPE,OFFSET "$dev" 2>/dev/null',
                "echo '[partitions]'",
                'name=$(basename "$dev")',
                'for p in /sys/class/block/"$name"/"$name"*; do [ -e "$p/partition" ] && basename "$p"; done',
                "echo '[mounts]'",
                'findmnt -n -r -o TARGET --source "$dev" 2>/dev/null',
                "true",
            ]
        )

    def process(self, output):
        info: dict = {}
        section = None
        blkid: dict[str, str] = {}
        signatures: list[str] = []
        partitions: list[str] = []
        mounts: list[str] = []
        for raw in output:
            line = raw.strip()
            if not line:
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            if section is None:
                key, _, value = line.partition("=")
                info[key] = value
            elif section == "blkid":
                key, _, value = line.partition("=")
                blkid[key] = _blkid_unescape(value)
            elif section == "wipefs":
                signatures.append(line.split()[0])
            elif section == "partitions":
                partitions.append(line)
            elif section == "mounts":
                mounts.append(_findmnt_unescape(line))
        if "path" not in info:
            return {}
        return {
            "path": info["path"],
            "link": info.get("link") or info["path"],
            "link_exists": info.get("link_exists") == "1",
            "udev": info.get("udev") == "1",
            "fstype": blkid.get("TYPE") or None,
            "label": blkid.get("LABEL") or None,
            "uuid": blkid.get("UUID") or None,
            "pttype": blkid.get("PTTYPE") or None,
            "signatures": signatures,
            "partitions": partitions,
            "mountpoints": mounts,
        }


class MountPoint(FactBase):
    """
    Returns the state of a mount point: its systemd mount unit name (from ``systemd-escape``),
    what is mounted there, and whether the folder is empty.

    .. code:: python

        {
            "unit": "srv-dnas.mount",
            "exists": True,          # the folder exists
            "empty": False,          # it holds no entries (True when absent)
            "mounted": True,
            "source": "/dev/sda1",   # None when nothing is mounted there
            "fstype": "ext4",
            "options": "rw,noatime",
        }
    """

    default = dict

    def requires_command(self, path: str) -> str:
        return "findmnt"

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return "\n".join(
            [
                f'echo "unit=$(systemd-escape -p --suffix=mount {quoted})"',
                f"findmnt -n -P -o SOURCE,FSTYPE,OPTIONS --mountpoint {quoted} 2>/dev/null | tail -n 1",
                f"if [ -d {quoted} ]; then echo exists=1;"
                f' [ -z "$(ls -A {quoted} 2>/dev/null | head -n 1)" ] && echo empty=1; fi',
                "true",
            ]
        )

    def process(self, output):
        values: dict[str, str] = {}
        for raw in output:
            line = raw.strip()
            if line.startswith("SOURCE="):
                for item in shlex.split(line):
                    key, _, value = item.partition("=")
                    values[key] = _findmnt_unescape(value)
            elif "=" in line:
                key, _, value = line.partition("=")
                values[key] = value
        mounted = "SOURCE" in values
        exists = values.get("exists") == "1"
        return {
            "unit": values.get("unit") or None,
            "exists": exists,
            "empty": (not exists) or values.get("empty") == "1",
            "mounted": mounted,
            "source": values.get("SOURCE") if mounted else None,
            "fstype": values.get("FSTYPE") if mounted else None,
            "options": values.get("OPTIONS") if mounted else None,
        }
