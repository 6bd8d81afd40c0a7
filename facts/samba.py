"""
Facts about Samba on a dnas node: its users (passdb), its effective shares, and Unix accounts.

The password state of a Samba user is read as a *fingerprint*, never as the NT hash itself: the
node computes sha256("<user>:<NT hash in upper-case hex>") and only that digest leaves it. The
NT hash is password-equivalent (pass-the-hash); the fingerprint is not, and it is enough for
the controller to tell whether the password it holds is the one Samba has (see
`operations/samba.py`, `nt_fingerprint`).
"""

from __future__ import annotations

import re

from pyinfra.api import FactBase

SECTION_RE = re.compile(r"^\[(?P<name>[^\]]+)\]\s*$")
KEY_RE = re.compile(r"^\s+(?P<key>[^=]+?)\s*=\s?(?P<value>.*)$")


class SambaUsers(FactBase):
    """
    The users in Samba's password database (`pdbedit -L -w`), with a fingerprint of each
    password: sha256 of "<user>:<NT hash>", computed on the node so the NT hash never leaves it.
    `disabled` is True when the account flags carry D. Empty when Samba is not installed.

    .. code:: python

        {
            "alice": {
                "uid": 1001,
                "fingerprint": "0c5a...e1",
                "flags": "U",
                "disabled": False,
            },
        }
    """

    requires_command = "pdbedit"
    default = dict

    def command(self):
        # One line per user: name:uid:fingerprint:[flags]. The NT hash goes to sha256sum on
        # stdin (printf is a shell builtin), so it is in no process's argument list either.
        return (
            "pdbedit -L -w 2>/dev/null | "
            "while IFS=: read -r u id lm nt flags rest; do "
            'fp=$(printf "%s:%s" "$u" "$nt" | sha256sum | cut -d" " -f1); '
            'printf "%s:%s:%s:%s\\n" "$u" "$id" "$fp" "$flags"; '
            "done || true"
        )

    def process(self, output):
        users = {}
        for line in output:
            parts = line.strip().split(":", 3)
            if len(parts) != 4 or not parts[0]:
                continue
            name, uid, fingerprint, flags = parts
            flags = flags.strip().strip("[]").replace(" ", "")
            users[name] = {
                "uid": int(uid) if uid.isdigit() else None,
                "fingerprint": fingerprint,
                "flags": flags,
                "disabled": "D" in flags,
            }
        return users


class SambaShares(FactBase):
    """
    The shares Samba serves, as `testparm -s` reports the effective configuration (includes
    resolved, defaults left out): share name -> {parameter: value}. The `[global]` section is
    not a share and is left out. Empty when Samba is not installed or the config is broken.

    .. code:: python

        {
            "data": {
                "path": "/srv/dnas/data",
                "force user": "dnas",
                "read only": "No",
                "valid users": "alice bob",
            },
        }
    """

    requires_command = "testparm"
    default = dict

    def command(self):
        return "testparm -s 2>/dev/null || true"

    def process(self, output):
        sections: dict[str, dict[str, str]] = {}
        current = None
        for line in output:
            if not line.strip() or line.lstrip().startswith(("#", ";")):
                continue
            match = SECTION_RE.match(line.strip())
            if match:
                current = match.group("name")
                sections.setdefault(current, {})
                continue
            match = KEY_RE.match(line)
            if match and current is not None:
                sections[current][match.group("key").strip()] = match.group("value").strip()
        sections.pop("global", None)
        return sections
