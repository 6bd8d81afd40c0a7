"""
The fingerprints of the secrets a node was given (see homecloud/fingerprints.py): a root-only
file of keyed fingerprints, plus, for clusters deployed before that file existed, which
secrets the node visibly holds already (a keepalived password, Samba users). No secret value
is ever read: only the salt, the fingerprints and names.
"""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand

FINGERPRINTS = "/etc/homecloud/secret-fingerprints"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"


def _file_section(path: str) -> list:
    return [
        "for f in",
        QuoteString(path),
        '; do if [ -f "$f" ]; then echo "[file] $(stat -c \'%a %U %G\' -- "$f")"; cat -- "$f"; fi; done;',
    ]


class SecretFingerprints(FactBase):
    """
    The fingerprint file (its mode and owner, its salt, one fingerprint per secret name) and
    the secrets present on the node without a fingerprint check (``present``: names).

    .. code:: python

        {
            "file": {"mode": "600", "user": "root", "group": "root"},
            "salt": "5f0c1a8e2b7d4c6e9a1b3d5f7e9c0a2b",
            "fingerprints": {
                "keepalived_auth_pass": "0b4f...e1",
                "samba_users.alice": "9a2c...47",
            },
            "present": ["keepalived_auth_pass", "samba_users.alice"],
        }

    Command output (file section, then presence markers)::

        [file] 600 root root
        # homecloud: keyed fingerprints ...
        salt 5f0c1a8e2b7d4c6e9a1b3d5f7e9c0a2b
        keepalived_auth_pass 0b4f...e1
        [present]
        keepalived_auth_pass
        samba_users.alice
    """

    @staticmethod
    def default():
        return {"file": None, "salt": None, "fingerprints": {}, "present": []}

    def command(self, path=FINGERPRINTS) -> StringCommand:
        return StringCommand(
            *_file_section(path),
            "echo '[present]';",
            f"grep -qsE '^[[:space:]]*auth_pass[[:space:]]' {KEEPALIVED_CONF} && echo keepalived_auth_pass;",
            "if command -v pdbedit >/dev/null 2>&1; then pdbedit -L 2>/dev/null | cut -d: -f1 | sed 's/^/samba_users./'; fi;",
            "true",
        )

    def process(self, output):
        fact = self.default()
        section = None
        for line in output:
            line = line.rstrip("\n")
            if line.startswith("[file] "):
                parts = line.split()[1:]
                if len(parts) == 3:
                    fact["file"] = {"mode": parts[0], "user": parts[1], "group": parts[2]}
                section = "file"
            elif line == "[present]":
                section = "present"
            elif section == "file":
                parts = line.split()
                if len(parts) != 2 or line.startswith("#"):
                    continue
                if parts[0] == "salt":
                    fact["salt"] = parts[1]
                else:
                    fact["fingerprints"][parts[0]] = parts[1]
            elif section == "present" and line.strip():
                fact["present"].append(line.strip())
        return fact


class FingerprintFile(SecretFingerprints):
    """
    The fingerprint file alone: what ``secrets.fingerprints`` needs to update it. The same
    value as ``SecretFingerprints`` with ``present`` always empty; the presence markers (which
    run ``pdbedit -L``, ~100 ms) matter only to the check before a deploy.

    .. code:: python

        {
            "file": {"mode": "600", "user": "root", "group": "root"},
            "salt": "5f0c1a8e2b7d4c6e9a1b3d5f7e9c0a2b",
            "fingerprints": {"keepalived_auth_pass": "0b4f...e1"},
            "present": [],
        }

    Command output::

        [file] 600 root root
        # homecloud: keyed fingerprints ...
        salt 5f0c1a8e2b7d4c6e9a1b3d5f7e9c0a2b
        keepalived_auth_pass 0b4f...e1
    """

    def command(self, path=FINGERPRINTS) -> StringCommand:
        return StringCommand(*_file_section(path), "true")
