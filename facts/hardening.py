"""
hardening facts: how the deploying SSH session logged in (the lockout guard of the SSH part)
and the live hardening sysctls with whether this host lets them be written.
"""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand


class SshLogin(FactBase):
    """
    The user this session logged in as (``$SUDO_USER`` under sudo), how many keys its ``~/.ssh/authorized_keys`` holds (lines
    that are neither blank nor comments; None when the file is missing or unreadable) and the
    method sshd accepted for this very connection (``publickey``, ``password``,
    ``keyboard-interactive/pam``; None when the journal does not tell: no journal, rotated,
    or not an SSH session). The method comes from sshd's ``Accepted <method> for <user>`` line
    logged under the pid of this session's sshd process (found by walking up the parents of
    the fact's shell). ``client``: the address this session connects from (``$SSH_CONNECTION``,
    else the ``from`` of that journal line; None when neither tells), so the firewall can refuse
    rules that would shut the deploying controller out.

    .. code:: python

        {"user": "root", "keys": 2, "method": "publickey", "client": "192.168.1.50"}
    """

    @staticmethod
    def default():
        return {"user": None, "keys": None, "method": None, "client": None}

    def command(self) -> StringCommand:
        return StringCommand(
            'u=${SUDO_USER:-$(id -un)}; echo "user $u";',
            'if [ -n "${SSH_CONNECTION:-}" ]; then echo "client ${SSH_CONNECTION%% *}"; fi;',
            'h=$(getent passwd "$u" | cut -d: -f6);',
            'if [ -r "$h/.ssh/authorized_keys" ]; then echo "keys $(grep -cEv \'^[[:space:]]*(#|$)\' "$h/.ssh/authorized_keys")"; fi;',
            "p=$$; while [ \"${p:-1}\" -gt 1 ]; do",
            'if [ "$(cat /proc/$p/comm 2>/dev/null)" = sshd ]; then',
            "journalctl -q -o cat _PID=$p 2>/dev/null | grep -m1 '^Accepted ';",
            "fi;",
            "p=$(sed -n 's/.*) [A-Za-z] \\([0-9]*\\) .*/\\1/p' /proc/$p/stat 2>/dev/null);",
            "done; true",
        )

    def process(self, output):
        fact = self.default()
        for line in output:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "user" and len(parts) > 1:
                fact["user"] = parts[1]
            elif parts[0] == "keys" and len(parts) > 1 and parts[1].isdigit():
                fact["keys"] = int(parts[1])
            elif parts[0] == "client" and len(parts) > 1:
                fact["client"] = parts[1]
            elif parts[0] == "Accepted" and len(parts) > 1 and fact["method"] is None:
                fact["method"] = parts[1]
                if "from" in parts[:-1] and fact["client"] is None:
                    fact["client"] = parts[parts.index("from") + 1]
        return fact


class Sysctls(FactBase):
    """
    The live value of each sysctl key (whitespace normalised; None when the key does not exist
    in this kernel) and whether it can be written here (False in a container whose /proc/sys
    is read-only for that key).

    .. code:: python

        {
            "kernel.kptr_restrict": {"value": "0", "writable": False},
            "net.ipv4.conf.all.rp_filter": {"value": "2", "writable": True},
            "kernel.yama.ptrace_scope": {"value": None, "writable": False},
        }
    """

    default = dict

    def command(self, keys) -> StringCommand:
        # Read from /proc/sys with shell builtins (sysctl, tr and printf per key were three
        # processes each): key and path in pairs, the path as sysctl maps it (dots are
        # separators, a slash stands for a dot in a name such as an interface's).
        pairs = []
        for key in keys:
            pairs += [QuoteString(key), QuoteString("/proc/sys/" + "/".join(part.replace("/", ".") for part in key.split(".")))]
        return StringCommand(
            "set --",
            *pairs,
            '; while [ $# -gt 1 ]; do k=$1; f=$2; shift 2;',
            'if { IFS= read -r v < "$f"; } 2>/dev/null; then if [ -w "$f" ]; then w=rw; else w=ro; fi;',
            "printf '%s\\t%s\\t%s\\n' \"$k\" \"$w\" \"$v\";",
            "else printf '%s\\tabsent\\t\\n' \"$k\"; fi; done",
        )

    def process(self, output):
        result = {}
        for line in output:
            key, _, rest = line.partition("\t")
            access, _, value = rest.partition("\t")
            if not key:
                continue
            if access == "absent":
                result[key] = {"value": None, "writable": False}
            else:
                result[key] = {"value": " ".join(value.split()), "writable": access == "rw"}
        return result
