"""
keepalived facts: the VRRP state of the node and whether it holds the virtual IP.

Where the VRRP state comes from: keepalived runs /etc/keepalived/homecloud-notify (rendered by
operations/keepalived.py as notify_master / notify_backup / notify_fault / notify_stop) on every
state change of the homecloud instance, and that script writes the new state and the time to
/run/homecloud/keepalived.state. This is keepalived's own, documented hook: it fires on every
transition, costs nothing, needs no signal round trip (the SIGUSR1 data dump is written
asynchronously to /tmp) and no log parsing (journal lines rotate and their wording changes
between versions). /run is emptied at boot, so a state never survives a reboot; a state file
left by a keepalived that was killed (no notify_stop) is ignored because the service is then
not active.
"""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand

STATE_FILE = "/run/homecloud/keepalived.state"


class VrrpStatus(FactBase):
    """
    The keepalived service state, the VRRP state of the homecloud instance (MASTER, BACKUP,
    FAULT, STOP; STOPPED when keepalived is not running; None when running but no state
    change was recorded yet), the time of the last transition (epoch seconds), the IPv4
    addresses on the interface and whether the VIP is one of them.

    .. code:: python

        {
            "service": "active",
            "state": "MASTER",
            "since": 1764230000,
            "addresses": ["192.168.1.11/24", "192.168.1.240/24"],
            "holds_vip": True,
        }
    """

    @staticmethod
    def default():
        return {"service": "inactive", "state": "STOPPED", "since": None, "addresses": [], "holds_vip": False}

    def command(self, interface, vip) -> StringCommand:
        return StringCommand(
            'echo "service $(systemctl is-active keepalived.service 2>/dev/null)";',
            f"if [ -r {STATE_FILE} ]; then echo \"state $(cat {STATE_FILE})\"; fi;",
            "echo vip",
            QuoteString(vip),
            "; ip -o -4 addr show dev",
            QuoteString(interface),
            "2>/dev/null | awk '{ print \"addr\", $4 }'; true",
        )

    def process(self, output):
        fact = self.default()
        fact["service"] = "unknown"
        state = None
        vip = None
        for line in output:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "service":
                fact["service"] = parts[1] if len(parts) > 1 else "unknown"
            elif parts[0] == "state" and len(parts) > 1:
                state = parts[1]
                fact["since"] = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
            elif parts[0] == "vip" and len(parts) > 1:
                vip = parts[1]
            elif parts[0] == "addr" and len(parts) > 1:
                fact["addresses"].append(parts[1])
        if fact["service"] == "active":
            fact["state"] = state
        else:
            fact["state"] = "STOPPED"
            fact["since"] = None
        fact["holds_vip"] = bool(vip) and any(a.split("/")[0] == vip for a in fact["addresses"])
        return fact
