"""
Facts about a cluster node's base layer: swap, time sync, kernel modules, sysctls, iptables.

Every command exits 0 when the thing it looks at is absent and the fact then returns an empty
or "absent" value, so an operation can decide from the fact alone.
"""

from __future__ import annotations

import re

from pyinfra.api import FactBase, QuoteString, StringCommand

# The prefix deploys/base.py writes in front of fstab swap lines it turns off.
FSTAB_SWAP_OFF_MARK = "#homecloud-swap-off# "

# NTP daemons that keep the clock on their own; timesyncd must not fight them.
OTHER_NTP_DAEMONS = ("chrony", "ntp", "ntpsec", "openntpd")

ZRAM_GENERATOR = "/usr/lib/systemd/system-generators/zram-generator"
ZRAM_GENERATOR_CONF = "/etc/systemd/zram-generator.conf"


def _sections(output) -> dict[str, list[str]]:
    """Split `[name]`-headed output into {name: [lines]}."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in output:
        match = re.match(r"^\[([a-z0-9_-]+)\]$", line.strip())
        if match:
            current = match.group(1)
            sections.setdefault(current, [])
        elif current is not None and line.strip():
            sections[current].append(line.rstrip("\n"))
    return sections


def _unit_lines(units: tuple[str, ...], prefix: str = "") -> str:
    """
    Shell: one line ``<prefix><unit> <enabled> <active>`` per service unit, from one
    ``systemctl show`` (``systemctl is-enabled`` and ``is-active`` per unit were two processes
    each, ~25 ms apiece). ``enabled`` is the unit-file state (enabled, disabled, masked, ...)
    or ``absent`` for a unit systemd does not know; ``active`` the active state. systemctl
    answers in the order asked, under the unit's own name (an alias shows its target), so the
    answers are matched to the names by position.
    """
    names = " ".join(units)
    services = " ".join(f"{unit}.service" for unit in units)
    program = (
        'BEGIN { n = split(names, u, " ") } '
        '$1 == "Id" { i++ } $1 == "LoadState" { l[i] = $2 } $1 == "UnitFileState" { f[i] = $2 } $1 == "ActiveState" { a[i] = $2 } '
        'END { for (j = 1; j <= n; j++) printf "%s%s %s %s\\n", prefix, u[j], '
        '(l[j] == "not-found" || f[j] == "") ? "absent" : f[j], (a[j] == "") ? "inactive" : a[j] }'
    )
    return (
        f"systemctl show -p Id -p LoadState -p UnitFileState -p ActiveState -- {services} 2>/dev/null "
        f"| awk -F= -v names='{names}' -v prefix='{prefix}' '{program}'"
    )


class Swap(FactBase):
    """
    Swap on the node: active swap areas (/proc/swaps), active swap lines of /etc/fstab, fstab
    lines homecloud turned off before, the dphys-swapfile (Raspberry Pi OS) and zramswap
    (zram-tools) services, and systemd's zram-generator.

    .. code:: python

        {
            "active": [{"name": "/var/swap", "type": "file", "size": 102396}],
            "fstab": ["/swapfile none swap sw 0 0"],
            "fstab_off": [],
            "services": {"dphys-swapfile": {"enabled": "enabled", "active": "active"}},
            "zram_generator": {"installed": False, "disabled": False},
        }
    """

    @staticmethod
    def default():
        return {
            "active": [],
            "fstab": [],
            "fstab_off": [],
            "services": {},
            "zram_generator": {"installed": False, "disabled": False},
        }

    def command(self) -> str:
        return (
            "echo '[swaps]'; tail -n +2 /proc/swaps 2>/dev/null; "
            "echo '[fstab]'; awk '$1 !~ /^#/ && $3 == \"swap\"' /etc/fstab 2>/dev/null; "
            f"echo '[fstab_off]'; grep '^{FSTAB_SWAP_OFF_MARK}' /etc/fstab 2>/dev/null; "
            "echo '[services]'; "
            f"{_unit_lines(('dphys-swapfile', 'zramswap'))}; "
            "echo '[zram_generator]'; "
            f"for f in {ZRAM_GENERATOR} /lib/systemd/system-generators/zram-generator; do "
            'test -e "$f" && echo installed; done; '
            f"grep -qs '^\\[zram' {ZRAM_GENERATOR_CONF} || {{ test -e {ZRAM_GENERATOR_CONF} && echo disabled; }}; "
            "true"
        )

    def process(self, output):
        sections = _sections(output)
        active = []
        for line in sections.get("swaps", []):
            parts = line.split()
            if len(parts) >= 3:
                active.append({"name": parts[0], "type": parts[1], "size": int(parts[2]) if parts[2].isdigit() else 0})
        services = {}
        for line in sections.get("services", []):
            parts = line.split()
            if len(parts) == 3 and parts[1] != "absent":
                services[parts[0]] = {"enabled": parts[1], "active": parts[2]}
        generator = sections.get("zram_generator", [])
        return {
            "active": active,
            "fstab": sections.get("fstab", []),
            "fstab_off": sections.get("fstab_off", []),
            "services": services,
            "zram_generator": {"installed": "installed" in generator, "disabled": "disabled" in generator},
        }


class TimeSync(FactBase):
    """
    The time-sync daemons of the node (systemd unit state: enabled / active, "absent" when the
    unit does not exist) and the container type (systemd-timesyncd does not run in containers:
    its unit has ``ConditionVirtualization=!container``).

    .. code:: python

        {
            "units": {
                "systemd-timesyncd": {"enabled": "enabled", "active": "active"},
                "chrony": {"enabled": "absent", "active": "inactive"},
            },
            "container": None,
        }
    """

    @staticmethod
    def default():
        return {"units": {}, "container": None}

    def command(self) -> str:
        return (
            f"{_unit_lines(('systemd-timesyncd',) + OTHER_NTP_DAEMONS, prefix='unit ')}; "
            'echo "container $(systemd-detect-virt --container 2>/dev/null || true)"'
        )

    def process(self, output):
        units = {}
        container = None
        for line in output:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "unit":
                units[parts[1]] = {"enabled": parts[2], "active": parts[3]}
            elif parts and parts[0] == "container":
                value = parts[1] if len(parts) > 1 else ""
                container = None if value in ("", "none") else value
        return {"units": units, "container": container}


class KernelModuleStatus(FactBase):
    """
    For each kernel module: ``present`` (loaded or built in: /sys/module/<name>, the running
    kernel's modules.builtin, or the feature it provides: overlay in /proc/filesystems,
    br_netfilter as /proc/sys/net/bridge), ``loadable`` (``modprobe -n`` finds it) or
    ``missing`` (neither).

    .. code:: python

        {"overlay": "present", "br_netfilter": "loadable", "ip_vs": "missing"}
    """

    default = dict

    def command(self, modules) -> StringCommand:
        return StringCommand(
            "for m in",
            *[QuoteString(m) for m in modules],
            "; do u=$(echo \"$m\" | tr - _); "
            'if [ -d "/sys/module/$u" ] '
            '|| grep -qsE "/$m\\.ko" "/lib/modules/$(uname -r)/modules.builtin" '
            '|| { [ "$u" = overlay ] && grep -qsw overlay /proc/filesystems; } '
            '|| { [ "$u" = br_netfilter ] && [ -d /proc/sys/net/bridge ]; }; then s=present; '
            'elif modprobe -n -q "$m" 2>/dev/null; then s=loadable; else s=missing; fi; '
            'echo "$m $s"; done',
        )

    def process(self, output):
        result = {}
        for line in output:
            parts = line.split()
            if len(parts) == 2:
                result[parts[0]] = parts[1]
        return result


class SysctlValues(FactBase):
    """
    The live value of each sysctl key (whitespace normalised), or None when the key does not
    exist on the node (e.g. ``net.bridge.*`` before br_netfilter is loaded).

    .. code:: python

        {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": None}
    """

    default = dict

    def command(self, keys) -> StringCommand:
        return StringCommand(
            "for k in",
            *[QuoteString(k) for k in keys],
            '; do if v=$(sysctl -n "$k" 2>/dev/null); then printf \'%s\\t%s\\n\' "$k" "$v"; '
            "else printf '%s\\t%s\\n' \"$k\" '<absent>'; fi; done",
        )

    def process(self, output):
        result = {}
        for line in output:
            key, _, value = line.partition("\t")
            if not key:
                continue
            value = " ".join(value.split())
            result[key] = None if value == "<absent>" else value
        return result


IPTABLES_VERSION_RE = re.compile(r"iptables v(\d+)\.(\d+)\.(\d+)(?:\s+\((\w+)\))?")


class Iptables(FactBase):
    """
    The installed iptables: version, backend (``nf_tables`` or ``legacy``; ``legacy`` when the
    version string names none, as before 1.8), the alternative currently selected and whether
    iptables-legacy is installed. ``version`` is None when iptables is not installed.

    .. code:: python

        {
            "version": [1, 8, 9],
            "backend": "nf_tables",
            "selected": "/usr/sbin/iptables-nft",
            "legacy_available": True,
        }
    """

    @staticmethod
    def default():
        return {"version": None, "backend": None, "selected": None, "legacy_available": False}

    def command(self) -> str:
        return (
            "echo \"version $(iptables --version 2>/dev/null | head -n 1)\"; "
            "echo \"selected $(update-alternatives --query iptables 2>/dev/null | sed -n 's/^Value: //p')\"; "
            "for f in /usr/sbin/iptables-legacy /sbin/iptables-legacy; do "
            'test -x "$f" && echo "legacy $f"; done; true'
        )

    def process(self, output):
        fact = self.default()
        for line in output:
            kind, _, rest = line.partition(" ")
            rest = rest.strip()
            if kind == "version" and rest:
                match = IPTABLES_VERSION_RE.search(rest)
                if match:
                    fact["version"] = [int(match.group(1)), int(match.group(2)), int(match.group(3))]
                    fact["backend"] = match.group(4) or "legacy"
            elif kind == "selected" and rest:
                fact["selected"] = rest
            elif kind == "legacy" and rest:
                fact["legacy_available"] = True
        return fact
