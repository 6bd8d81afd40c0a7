"""
The fingerprints of the secrets a node was given, kept on the node so that the next deploy
(from this controller or another one) can tell whether it holds the same secrets
(homecloud/fingerprints.py). Each layer records the secrets it delivered, after the
configurations that carry them.
"""

from __future__ import annotations

import re
import shlex

from pyinfra import host
from pyinfra.api import HiddenValue, OperationError, StringCommand, QuoteString, operation

from facts.secrets import FINGERPRINTS, FingerprintFile
from homecloud.fingerprints import fingerprint
from operations.system import secret_fact, upload_private

NAME_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_-]+)?$")
SALT_RE = re.compile(r"^[0-9a-f]{16,128}$")
HEADER = (
    "# homecloud: keyed fingerprints (HMAC-SHA256, keyed by the salt) of the secrets this node was given.\n"
    "# No secret is stored here. Written by operations/secrets.py, read before every deploy.\n"
)


def render(salt: str, fingerprints: dict[str, str]) -> str:
    return HEADER + f"salt {salt}\n" + "".join(f"{name} {value}\n" for name, value in sorted(fingerprints.items()))


@operation()
def fingerprints(
    secrets: dict[str, str | HiddenValue] | list[str],
    salt: str | None = None,
    present: bool = True,
    path: str = FINGERPRINTS,
):
    """
    Record keyed fingerprints of secrets in a root-only file (0600); other names in it are kept.

    + secrets: name -> value (wrap values in ``HiddenValue``); names like
      ``keepalived_auth_pass`` or ``samba_users.alice``; with present=False, the names alone
    + salt: the salt for a node that has no file yet (hex; required when present); a node keeps
      its own salt
    + present: False forgets these names (the file goes when no name is left)
    + path: the fingerprint file

    **Example:**

    .. code:: python

        secrets.fingerprints(
            name="Fingerprint of the keepalived password",
            salt=salt_for(state, host),
            secrets={"keepalived_auth_pass": HiddenValue(secret("keepalived_auth_pass", length=8))},
        )
    """
    if present and not SALT_RE.match(salt or ""):
        raise OperationError("salt must be 16-128 lower-case hex digits")
    if present and not isinstance(secrets, dict):
        raise OperationError("secrets must map each name to its value")
    for name in secrets:
        if not NAME_RE.match(name):
            raise OperationError(f"`{name}` is not a secret name")
    current = secret_fact(host, FingerprintFile, path=path)
    salt = current["salt"] or salt
    recorded = dict(current["fingerprints"])
    wanted = dict(recorded)
    if present:
        for name, value in secrets.items():
            clear = value.unmask() if isinstance(value, HiddenValue) else str(value)
            wanted[name] = fingerprint(salt, name, clear)
    else:
        for name in secrets:
            wanted.pop(name, None)
        if not current["file"]:
            host.noop(f"{path} does not exist")
            return
        if wanted == recorded:
            host.noop(f"{path} has no fingerprint of {', '.join(sorted(secrets))}")
            return
        if not wanted:
            yield StringCommand("rm", "-f", QuoteString(path))
            return
    if current["file"] and wanted == recorded and current["salt"]:
        if current["file"] != {"mode": "600", "user": "root", "group": "root"}:
            yield StringCommand("chown", "root:root", QuoteString(path))
            yield StringCommand("chmod", "600", QuoteString(path))
        else:
            host.noop(f"{path} has the fingerprints of {', '.join(sorted(secrets))}")
        return
    folder = path.rsplit("/", 1)[0]
    if not current["file"]:
        yield f"mkdir -p -m 700 {shlex.quote(folder)}"
    yield from upload_private(render(salt, wanted), path)
    if current["file"] and current["file"]["user"] != "root":
        yield StringCommand("chown", "root:root", QuoteString(path))
