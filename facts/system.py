"""
Generic facts about a node's system, read in one command for several items at once: Debian
package states, file states (mode, owner, checksum), systemd unit states, a unit's age against
its configuration, a Unix account.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from pyinfra.api import FactBase, QuoteString, StringCommand


class DebStatus(FactBase):
    """
    The dpkg state of some packages (``dpkg-query -W``): name -> its three-letter status
    abbreviation (desired action, state, error: ``ii `` is installed). Packages dpkg does not
    know are left out. Unlike pyinfra's ``deb.DebPackages`` it reads only the packages asked
    for (one short answer instead of every installed package).

    .. code:: python

        {"keepalived": "ii", "curl": "ii", "samba": "rc"}
    """

    requires_command = "dpkg-query"
    default = dict

    def command(self, packages):
        # Exits 1 when a package is unknown (reported on stderr): that is an answer, not an error.
        return StringCommand(
            "dpkg-query -W -f '${Package}\\t${db:Status-Abbrev}\\n' --",
            *[QuoteString(p) for p in packages],
            "2>/dev/null || true",
        )

    def process(self, output):
        status = {}
        for line in output:
            name, _, abbrev = line.strip().partition("\t")
            if name and abbrev.strip():
                status[name] = abbrev.strip()
        return status


def _stat_each(paths, test: str, third: str) -> StringCommand:
    """One line per path: path, `stat` mode/user/group and the output of `third`, tab-separated
    (`path<TAB>-` when `[ test path ]` fails)."""
    return StringCommand(
        "for p in",
        *[QuoteString(p) for p in paths],
        f"; do if [ {test} \"$p\" ]; then printf '%s\\t%s\\t%s\\n' \"$p\" \"$(stat -c '%a %U %G' -- \"$p\")\" "
        f"\"$({third})\"; else printf '%s\\t-\\n' \"$p\"; fi; done",
    )


def _parse_stat_each(output, third) -> dict:
    """The lines of `_stat_each`: path -> {mode, user, group, **third(its third field)} or None."""
    found: dict = {}
    for line in output:
        fields = line.rstrip("\n").split("\t")
        if len(fields) == 2 and fields[1] == "-":
            found[fields[0]] = None
        elif len(fields) == 3 and len(fields[1].split()) == 3:
            extra = third(fields[2])
            if extra is not None:
                mode, user, group = fields[1].split()
                found[fields[0]] = {"mode": mode, "user": user, "group": group, **extra}
    return found


class FileStates(FactBase):
    """
    Mode, owner, group and sha1 of several regular files in one command: path -> a dict, or
    None when the path is not a regular file. The checksum is taken from the file's contents
    on stdin, so a path with a backslash (systemd unit names) is not escaped in the output.

    .. code:: python

        {
            "/etc/sysctl.d/90-homecloud.conf": {
                "mode": "644", "user": "root", "group": "root",
                "sha1": "0a4d55a8d778e5022fab701977c5d840bbc486d0",
            },
            "/etc/modules-load.d/homecloud.conf": None,
        }
    """

    default = dict

    def command(self, paths):
        return _stat_each(paths, "-f", "sha1sum < \"$p\"")

    def process(self, output):
        return _parse_stat_each(output, lambda third: {"sha1": third.split()[0]} if third.split() else None)


class UnitStates(FactBase):
    """
    The state of some systemd units, from one ``systemctl show``: unit -> its ``SubState``
    (running, exited, dead, ...) and ``UnitFileState`` (enabled, disabled, static, masked, ...;
    empty for a unit systemd does not know). pyinfra's ``SystemdStatus`` and ``SystemdEnabled``
    take two reads.

    .. code:: python

        {
            "keepalived.service": {"sub": "running", "file": "enabled"},
            "nfs-server.service": {"sub": "dead", "file": ""},
        }
    """

    requires_command = "systemctl"
    default = dict

    def command(self, units):
        # The names asked for come first: systemctl answers in their order, but under the
        # unit's own name (an alias such as nfs-kernel-server shows as nfs-server).
        quoted = [QuoteString(u) for u in units]
        return StringCommand(
            "printf 'unit\\t%s\\n'",
            *quoted,
            "; systemctl show -p Id -p SubState -p UnitFileState --",
            *quoted,
            "2>/dev/null || true",
        )

    def process(self, output):
        names: list[str] = []
        blocks: list[dict] = []
        for line in output:
            line = line.rstrip("\n")
            if line.startswith("unit\t"):
                names.append(line[5:])
            elif "=" in line:
                key, _, value = line.partition("=")
                if key == "Id":
                    blocks.append({})
                if blocks:
                    blocks[-1][key] = value.strip()
        if len(names) != len(blocks):
            # Not one answer per unit asked for: trust only the answers that name themselves.
            names = [block.get("Id", "") for block in blocks]
        return {
            name: {"sub": block.get("SubState", ""), "file": block.get("UnitFileState", "")}
            for name, block in zip(names, blocks)
            if name
        }


_UTC_STAMP_RE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}) UTC$")


class ServiceAge(FactBase):
    """
    Whether a systemd unit is active, when it last became active, and the newest change time of
    some files (seconds since the epoch, to the microsecond; files that do not exist are left
    out): a service active since before its configuration last changed still runs the old one.

    .. code:: python

        {
            "active": True,
            "since": 1796313261.939978,
            "newest": 1796313200.5,
            "newest_path": "/etc/ganesha/ganesha.conf",
        }
    """

    requires_command = "systemctl"

    def default(self):
        return {"active": False, "since": None, "newest": None, "newest_path": None}

    def command(self, unit, paths):
        return StringCommand(
            "systemctl show -p ActiveState -p ActiveEnterTimestamp --timestamp=us+utc --",
            QuoteString(unit),
            "2>/dev/null; stat -c 'mtime %.6Y %n' --",
            *[QuoteString(p) for p in paths],
            "2>/dev/null || true",
        )

    def process(self, output):
        result = self.default()
        for line in output:
            line = line.rstrip("\n")
            if line.startswith("ActiveState="):
                result["active"] = line.partition("=")[2] in ("active", "reloading")
            elif line.startswith("ActiveEnterTimestamp="):
                # "Thu 2026-12-03 23:00:00.123456 UTC" (the weekday follows the locale); empty
                # when the unit never started.
                match = _UTC_STAMP_RE.search(line)
                if match:
                    stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
                    result["since"] = stamp.timestamp()
            elif line.startswith("mtime "):
                _, seconds, path = line.split(" ", 2)
                if result["newest"] is None or float(seconds) > result["newest"]:
                    result["newest"], result["newest_path"] = float(seconds), path
        return result


class UnixAccount(FactBase):
    """
    A Unix user and a group by name (`getent`): each None when absent.

    .. code:: python

        {
            "user": {"uid": 2000, "gid": 2000, "home": "/srv/dnas", "shell": "/usr/sbin/nologin"},
            "group": {"gid": 2000},
        }
    """

    def default(self):
        return {"user": None, "group": None}

    def command(self, user, group):
        return StringCommand(
            "echo user:; getent passwd",
            QuoteString(user),
            "|| true; echo group:; getent group",
            QuoteString(group),
            "|| true",
        )

    def process(self, output):
        result = self.default()
        section = None
        for line in output:
            line = line.strip()
            if line in ("user:", "group:"):
                section = line[:-1]
                continue
            fields = line.split(":")
            if section == "user" and len(fields) >= 7:
                result["user"] = {
                    "uid": int(fields[2]),
                    "gid": int(fields[3]),
                    "home": fields[5],
                    "shell": fields[6],
                }
            elif section == "group" and len(fields) >= 3:
                result["group"] = {"gid": int(fields[2])}
        return result


class FolderAccess(FactBase):
    """
    Mode, owner, group and default ACL (``getfacl -d``; empty without one, or without getfacl)
    of several folders in one command: path -> a dict, or None when the path is not a folder.

    .. code:: python

        {
            "/srv/dnas/data": {
                "mode": "770", "user": "dnas", "group": "dnas",
                "default_acl": ["user::rwx", "group::rwx", "other::---"],
            },
            "/srv/dnas/photos": None,
        }
    """

    default = dict

    def command(self, paths):
        return _stat_each(paths, "-d", "getfacl -dcpE -- \"$p\" 2>/dev/null | tr '\\n' ' '")

    def process(self, output):
        return _parse_stat_each(output, lambda third: {"default_acl": third.split()})
