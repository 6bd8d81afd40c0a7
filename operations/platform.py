"""
The Kubernetes platform on a k3s server: the built add-on manifests (homecloud/platform.py
`build_all`) as k3s auto-deploy files, /var/lib/rancher/k3s/server/manifests/homecloud-<addon>.yaml.

k3s applies every file of that folder and re-applies one when it changes, on every server, so
each server gets the same files. They are written 0600 root (a manifest may hold a Secret, such
as Longhorn's backup credentials) through the one file writer: the candidate is 0600 before any
byte is written, then renamed over the file. One fact read for all files; a second run changes
nothing.

Not wired into a deploy yet (no inventory key drives the platform settings).
"""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import OperationError, QuoteString, StringCommand, operation

from facts.system import FileStates
from operations.system import write_file

MANIFESTS_DIR = "/var/lib/rancher/k3s/server/manifests"
_ADDON = re.compile(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?")


def manifest_path(addon: str, manifests_dir: str = MANIFESTS_DIR) -> str:
    if not isinstance(addon, str) or not _ADDON.fullmatch(addon):
        raise OperationError(f"add-on name {addon!r}: lower-case letters, digits and dashes only")
    return f"{manifests_dir.rstrip('/')}/homecloud-{addon}.yaml"


@operation()
def manifests(manifests: dict[str, str], present: bool = True, manifests_dir: str = MANIFESTS_DIR):
    """
    The platform's add-on manifests in k3s's auto-deploy folder, one file per add-on, 0600 root.

    + manifests: {add-on: built YAML}; with ``present=False`` only the names count
    + present: False removes these add-ons' files. k3s then stops re-applying them; what they
      created stays in the cluster (delete it with kubectl first when that is what you want)
    + manifests_dir: k3s's server manifests folder

    **Example:**

    .. code:: python

        platform.manifests(manifests=homecloud.platform.build_all(overlay_dir))
    """
    if not manifests:
        raise OperationError("no manifests given")
    paths = {addon: manifest_path(addon, manifests_dir) for addon in sorted(manifests)}
    states = host.get_fact(FileStates, paths=list(paths.values()))
    changed = False
    for addon, path in paths.items():
        current = states.get(path)
        if not present:
            if current is not None:
                yield StringCommand("rm", "-f", QuoteString(path))
                changed = True
            continue
        text = manifests[addon]
        if not isinstance(text, str) or not text.strip():
            raise OperationError(f"the manifest of {addon} is empty")
        if (yield from write_file(path, text, current, mode="600", secret=True)):
            changed = True
    if not changed:
        verb = "are up to date" if present else "are absent"
        host.noop(f"{', '.join(paths.values())} {verb}")
