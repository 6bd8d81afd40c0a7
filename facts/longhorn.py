"""
Facts for Longhorn's host prerequisites: the preflight checks (what `longhornctl check
preflight` checks, plus the Longhorn install requirements), the kernel modules, iscsid and
multipathd.
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

PACKAGES = ("open-iscsi", "nfs-common", "cryptsetup", "dmsetup")
COMMANDS = ("bash", "curl", "findmnt", "grep", "awk", "blkid", "lsblk")
MODULES = ("iscsi_tcp", "dm_crypt")
MULTIPATH_CONF = "/etc/multipath.conf"
# Longhorn KB "Troubleshooting: MountVolume.SetUp failed for volume due to multipathd on the node".
BLACKLIST_DEVNODE = "^sd[a-z0-9]+"

_MODULE_PRESENT = (
    '{ [ -d "/sys/module/$m" ] || grep -qs "/$m.ko" "/lib/modules/$(uname -r)/modules.builtin"; }'
)


def _preflight_script(data_path: str) -> str:
    path = shlex.quote(data_path)
    packages = " ".join(PACKAGES)
    commands = " ".join(COMMANDS)
    modules = " ".join(MODULES)
    blacklist = shlex.quote(BLACKLIST_DEVNODE)
    return (
        # Packages.
        f"for p in {packages}; do "
        "s=$(dpkg-query -W -f='${Status}' \"$p\" 2>/dev/null); "
        "if [ \"$s\" = 'install ok installed' ]; then echo \"package:$p ok installed\"; "
        "else echo \"package:$p failed not installed\"; fi; done; "
        # Commands Longhorn calls on the host.
        f"for c in {commands}; do "
        "if w=$(command -v \"$c\"); then echo \"command:$c ok $w\"; else echo \"command:$c failed not found\"; fi; done; "
        # iscsid running (it needs the kernel's iSCSI netlink).
        "s=$(systemctl is-active iscsid 2>/dev/null); "
        "if [ \"$s\" = active ]; then echo 'service:iscsid ok active'; else "
        "why=$(journalctl -u iscsid -n 50 --no-pager -q -o cat 2>/dev/null | grep -i netlink | tail -n 1 | cut -c1-200); "
        "if [ -z \"$why\" ] && ! { [ -d /sys/module/scsi_transport_iscsi ] || [ -d /sys/class/iscsi_transport ] || "
        "modinfo scsi_transport_iscsi >/dev/null 2>&1; }; then why='the kernel has no iSCSI transport (NETLINK_ISCSI)'; fi; "
        "echo \"service:iscsid failed ${s:-unknown}${why:+: $why}\"; fi; "
        # Kernel modules: loaded or built in.
        f"for m in {modules}; do "
        f"if {_MODULE_PRESENT}; then echo \"module:$m ok loaded\"; "
        "else echo \"module:$m failed not loaded and not built into kernel $(uname -r)\"; fi; done; "
        # device-mapper (cryptsetup, dmsetup need it).
        # (a /dev/mapper/control node may exist without the driver: ask the kernel's misc list)
        "if grep -qsw device-mapper /proc/misc; then echo 'kernel:device-mapper ok driver present'; "
        "else echo 'kernel:device-mapper failed the kernel has no device-mapper driver'; fi; "
        # NFSv4 client in the kernel (RWX volumes).
        "if grep -qw nfs4 /proc/filesystems || [ -d /sys/module/nfsv4 ] || "
        "grep -qsE '^CONFIG_NFS_V4=[ym]' \"/boot/config-$(uname -r)\"; then echo 'kernel:nfs4 ok supported'; "
        "else echo 'kernel:nfs4 failed kernel has no NFSv4 client'; fi; "
        # multipathd: absent, or blacklisting the sd devices Longhorn creates.
        "if ! command -v multipathd >/dev/null 2>&1 && [ ! -e /lib/systemd/system/multipathd.service ]; then "
        "echo 'multipathd ok not installed'; "
        f"elif grep -qsF {blacklist} {MULTIPATH_CONF}; then echo 'multipathd ok blacklists Longhorn devices'; "
        f"else echo 'multipathd failed installed without blacklist {{ devnode \"{BLACKLIST_DEVNODE}\" }} in {MULTIPATH_CONF}'; fi; "
        # The data path's filesystem (of the nearest existing folder).
        f"p={path}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; "
        "fs=$(findmnt -n -o FSTYPE -T \"$p\" 2>/dev/null | head -n 1); "
        "case \"$fs\" in ext4|xfs) echo \"data-path ok $fs at $p\";; "
        "*) echo \"data-path failed ${fs:-unknown} at $p (Longhorn needs ext4 or XFS)\";; esac; true"
    )


class LonghornPreflight(FactBase):
    """
    Longhorn host checks, like ``longhornctl check preflight``: name -> ``{"ok": bool,
    "detail": str}`` for the packages open-iscsi, nfs-common, cryptsetup, dmsetup; the
    commands Longhorn runs on the host; iscsid running; the iscsi_tcp and dm_crypt modules;
    device-mapper; the kernel NFSv4 client; multipathd absent or blacklisting Longhorn's
    devices; the data path on ext4 or XFS.

    .. code:: python

        {"package:open-iscsi": {"ok": True, "detail": "installed"},
         "service:iscsid": {"ok": False, "detail": "failed: iscsid: can not create NETLINK_ISCSI socket"},
         "data-path": {"ok": True, "detail": "ext4 at /var/lib/longhorn"}}
    """

    def command(self, data_path="/var/lib/longhorn"):
        return _preflight_script(data_path)

    @staticmethod
    def default():
        return {}

    def process(self, output):
        checks = {}
        for line in output:
            parts = line.strip().split(" ", 2)
            if len(parts) >= 2 and parts[1] in ("ok", "failed"):
                checks[parts[0]] = {"ok": parts[1] == "ok", "detail": parts[2] if len(parts) > 2 else ""}
        return checks


class LonghornModules(FactBase):
    """
    Kernel modules: name -> ``"loaded"`` (or built in), ``"available"`` (modprobe can load it)
    or ``"missing"`` (this kernel cannot have it); plus ``"persisted"``: the modules listed in
    the modules-load.d file (``None`` when the file does not exist).

    .. code:: python

        {"modules": {"iscsi_tcp": "available", "dm_crypt": "loaded"}, "persisted": ["dm_crypt"]}
    """

    def command(self, modules, conf="/etc/modules-load.d/longhorn.conf"):
        names = " ".join(shlex.quote(m) for m in modules)
        return (
            f"for m in {names}; do "
            f"if {_MODULE_PRESENT}; then echo \"mod $m loaded\"; "
            "elif modinfo \"$m\" >/dev/null 2>&1; then echo \"mod $m available\"; "
            "else echo \"mod $m missing\"; fi; done; "
            f"if [ -f {shlex.quote(conf)} ]; then echo conf; grep -vE '^[[:space:]]*(#|$)' {shlex.quote(conf)} "
            "| sed 's/^/persist /'; fi; true"
        )

    @staticmethod
    def default():
        return {"modules": {}, "persisted": None}

    def process(self, output):
        modules, persisted = {}, None
        for line in output:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "mod" and len(parts) == 3:
                modules[parts[1]] = parts[2]
            elif parts[0] == "conf":
                persisted = []
            elif parts[0] == "persist" and len(parts) >= 2 and persisted is not None:
                persisted.append(parts[1])
        return {"modules": modules, "persisted": persisted}


class LonghornIscsid(FactBase):
    """
    iscsid: installed (unit known), enabled, active, and whether the kernel offers iSCSI
    (``scsi_transport_iscsi``; without it iscsid cannot open its netlink socket and exits).

    .. code:: python

        {"installed": True, "enabled": True, "active": True, "kernel_iscsi": True}
    """

    def command(self):
        return (
            "systemctl show --property=LoadState,ActiveState,UnitFileState -- iscsid.service 2>/dev/null; "
            "if [ -d /sys/module/scsi_transport_iscsi ] || [ -d /sys/class/iscsi_transport ] || "
            "modinfo scsi_transport_iscsi >/dev/null 2>&1; then echo KernelIscsi=yes; else echo KernelIscsi=no; fi; true"
        )

    @staticmethod
    def default():
        return {"installed": False, "enabled": False, "active": False, "kernel_iscsi": False}

    def process(self, output):
        values = {}
        for line in output:
            key, _, value = line.strip().partition("=")
            values[key] = value
        return {
            "installed": values.get("LoadState") == "loaded",
            "enabled": values.get("UnitFileState") in ("enabled", "enabled-runtime"),
            "active": values.get("ActiveState") == "active",
            "kernel_iscsi": values.get("KernelIscsi") == "yes",
        }


class LonghornMultipath(FactBase):
    """
    multipathd: whether it is installed and running, and the lines of /etc/multipath.conf
    (``None`` when there is no such file).

    .. code:: python

        {"installed": True, "active": False, "conf": ["defaults {", "    user_friendly_names yes", "}"]}
    """

    def command(self, conf=MULTIPATH_CONF):
        q = shlex.quote(conf)
        return (
            "if command -v multipathd >/dev/null 2>&1 || [ -e /lib/systemd/system/multipathd.service ]; "
            "then echo 'installed=yes'; else echo 'installed=no'; fi; "
            "if systemctl is-active --quiet multipathd 2>/dev/null; then echo 'active=yes'; else echo 'active=no'; fi; "
            f"if [ -f {q} ]; then echo '--- conf'; cat {q}; fi; true"
        )

    @staticmethod
    def default():
        return {"installed": False, "active": False, "conf": None}

    def process(self, output):
        result = {"installed": False, "active": False, "conf": None}
        lines = list(output)
        for index, line in enumerate(lines):
            if line == "installed=yes":
                result["installed"] = True
            elif line == "active=yes":
                result["active"] = True
            elif line == "--- conf":
                result["conf"] = lines[index + 1 :]
                break
        return result
