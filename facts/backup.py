"""
Backup facts: what the backup wrapper (homecloud-backup) recorded, the node's SSH keys the
SFTP targets need, and the state of the backup units.
"""

from __future__ import annotations

import json

from pyinfra.api import FactBase, QuoteString, StringCommand

STATUS_FILE = "/var/lib/homecloud/backup/status.json"


class BackupStatus(FactBase):
    """
    Per target, the last successful backup (epoch seconds, snapshot, bytes backed up, repository
    size) and the last attempt with its error ("" when it succeeded), from the status file the
    wrapper writes after every run; plus the state of the backup service and timer.
    Empty targets when no run happened yet.

    .. code:: python

        {
            "service": "failed",
            "timer": "active",
            "targets": {
                "node3": {"last_success": 1764230000, "last_attempt": 1764233600, "snapshot": "9f2c...",
                          "bytes": 52428800, "repository_bytes": 40960000, "files": 1200,
                          "error": "restic backup failed (exit 1): ... connection refused"},
            },
        }
    """

    def command(self):
        return (
            'echo "service $(systemctl is-failed homecloud-backup.service 2>/dev/null)"; '
            'echo "timer $(systemctl is-active homecloud-backup.timer 2>/dev/null)"; '
            f"cat {STATUS_FILE} 2>/dev/null; true"
        )

    def process(self, output):
        result = {"service": None, "timer": None, "targets": {}}
        rest = []
        for line in output:
            word, _, value = line.partition(" ")
            if word in ("service", "timer") and result[word] is None and not rest:
                result[word] = value.strip() or None
            else:
                rest.append(line)
        text = "\n".join(rest).strip()
        if text:
            try:
                result["targets"] = json.loads(text)
            except ValueError:
                result["targets"] = {}
        return result


class PublicKeys(FactBase):
    """
    The OpenSSH public keys at some paths (a node's backup client key, its sshd host key):
    path -> "ssh-ed25519 AAAA..." (type and key, no comment), or None when absent.

    .. code:: python

        {"/etc/homecloud/backup/id_ed25519.pub": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF...",
         "/etc/ssh/ssh_host_ed25519_key.pub": None}
    """

    default = dict

    def command(self, paths):
        return StringCommand(
            "for p in",
            *[QuoteString(p) for p in paths],
            "; do if [ -f \"$p\" ]; then printf '%s\\t%s\\n' \"$p\" \"$(cut -d' ' -f1,2 \"$p\")\"; else printf '%s\\t-\\n' \"$p\"; fi; done",
        )

    def process(self, output):
        keys = {}
        for line in output:
            path, _, key = line.rstrip("\n").partition("\t")
            keys[path] = None if key in ("-", "") else key
        return keys


class RestoreMarker(FactBase):
    """
    The marker file a finished restore leaves (what it restored, JSON), or None when there is
    none; "notempty" when there is no marker but `folder` (where it restores to) has files.

    .. code:: python

        {"snapshot": "latest", "paths": ["/srv/dnas/data"], "target": "node3"}
    """

    def command(self, marker, folder):
        q = QuoteString(folder)
        marker = QuoteString(marker)
        return StringCommand(
            "if [ -f", marker, "]; then cat", marker, "; elif [ -d", q, "] && [ -n \"$(ls -A", q, "2>/dev/null)\" ]; then echo notempty; fi; true"
        )

    def process(self, output):
        text = "\n".join(output).strip()
        if not text:
            return None
        if text == "notempty":
            return "notempty"
        try:
            return json.loads(text)
        except ValueError:
            return "notempty"
