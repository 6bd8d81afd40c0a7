"""
The Kubernetes platform on a k3s server: the built add-on manifests (homecloud/platform.py
`build_all`) as k3s auto-deploy files, /var/lib/rancher/k3s/server/manifests/homecloud-<addon>.yaml.

k3s applies every file of that folder and re-applies one when it changes, on every server, so
each server gets the same files. They are written 0600 root (a manifest may hold a Secret, such
as Longhorn's backup credentials) through the one file writer: the candidate is 0600 before any
byte is written, then renamed over the file. One fact read for all files; a second run changes
nothing.

The deploy (homecloud/layers/platform.py) builds on the server instead: `tree` uploads the
modules and overlays to a root-only folder, `builds` runs `k3s kubectl kustomize` there and
writes a manifest only when the build differs from it (facts.platform.PlatformBuilds).
A disabled add-on's manifest is replaced by an empty one (homecloud.platform.tombstone): k3s
then deletes what the add-on created. Removing the file would leave it all in the cluster.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex

from pyinfra import host
from pyinfra.api import HiddenValue, OperationError, QuoteString, StringCommand, operation

from facts.platform import PlatformBuilds, PlatformFiles
from facts.system import FileStates
from homecloud.platform import tombstone
from operations.system import write_file

STAGE_DIR = "/var/lib/homecloud/platform"
K3S = "/usr/local/bin/k3s"
# Add-ons whose removal deletes user data: homecloud never empties their manifest on its own.
# Longhorn's chart refuses to uninstall unless its deleting-confirmation-flag setting is true, and
# an uninstall deletes every volume. Nextcloud's data manifest (homecloud/services.py DATA_ADDON)
# holds its namespace and volume claims; the services layer never disables it (only nextcloud-app).
KEEP_ON_DISABLE = {
    "longhorn": (
        "that deletes every Longhorn volume. Move the data off its volumes, set Longhorn's "
        "deleting-confirmation-flag setting to true and delete the HelmChart yourself"
    ),
    "nextcloud": (
        "that deletes its volume claims (Nextcloud's files, config and database). Take a database dump "
        "and a copy of the data, then delete the namespace nextcloud yourself"
    ),
}
_REL = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")

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
    + present: False replaces these add-ons' files by an empty manifest
      (``homecloud.platform.tombstone``): k3s then deletes what they created (absent files stay absent)
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
            if current is not None and (yield from write_file(path, tombstone(addon), current, mode="600")):
                changed = True
            continue
        text = manifests[addon]
        if not isinstance(text, str) or not text.strip():
            raise OperationError(f"the manifest of {addon} is empty")
        if (yield from write_file(path, text, current, mode="600", secret=True)):
            changed = True
    if not changed:
        verb = "are up to date" if present else "are absent or disabled"
        host.noop(f"{', '.join(paths.values())} {verb}")


@operation()
def tree(files: dict[str, str | HiddenValue], secret_files: list[str] | None = None, root: str = STAGE_DIR, present: bool = True):
    """
    The platform's kustomize tree (modules and overlays) in a root-only folder on a k3s server:
    every file 0600, the folder 0700; files not in ``files`` are removed (an overlay that no
    longer needs a file, an add-on turned off).

    + files: {path relative to root: text} (``homecloud.platform.stage``); secret texts as
      ``HiddenValue`` so pyinfra never prints them with the operation's arguments
    + secret_files: the paths of ``files`` that hold secrets: uploaded without passing through a
      command line or a world-readable temporary file
    + root: the folder
    + present: False removes the folder and everything in it (``files`` must then be empty)

    **Example:**

    .. code:: python

        platform.tree(files={"overlays/traefik/kustomization.yaml": "..."}, secret_files=[])
    """
    if not present:
        if files or secret_files:
            raise OperationError("present=False removes the whole folder: give no files")
        if not posixpath.isabs(root) or posixpath.normpath(root).count("/") < 3:
            raise OperationError(f"{root!r}: refusing to remove a folder that is not at least three levels deep")
        if host.get_fact(PlatformFiles, root=root)["dir"] is None:
            host.noop(f"{root} is absent")
            return
        yield StringCommand("rm", "-rf", "--", QuoteString(root))
        return
    secret = set(secret_files or [])
    for rel in files:
        if not _REL.fullmatch(rel) or ".." in rel.split("/"):
            raise OperationError(f"{rel!r}: a path relative to {root} without .. is expected")
    if secret - set(files):
        raise OperationError(f"secret_files not in files: {', '.join(sorted(secret - set(files)))}")
    state = host.get_fact(PlatformFiles, root=root)
    current = state["files"]
    changed = False
    if state["dir"] is None or state["dir"]["mode"] != "700":
        yield StringCommand("install", "-d", "-m", "700", "-o", "root", "-g", "root", QuoteString(root))
        changed = True
    for rel in sorted(files):
        dest = posixpath.join(root, rel)
        text = files[rel].unmask() if isinstance(files[rel], HiddenValue) else files[rel]
        if (yield from write_file(dest, text, current.get(rel), mode="600", secret=rel in secret)):
            changed = True
    for rel in sorted(set(current) - set(files)):
        yield StringCommand("rm", "-f", QuoteString(posixpath.join(root, rel)))
        changed = True
    if not changed:
        host.noop(f"{root}: {len(files)} files up to date")


def _build_command(addon: str, root: str, manifests_dir: str, k3s: str) -> StringCommand:
    q = shlex.quote
    final = manifest_path(addon, manifests_dir)
    temp = posixpath.join(manifests_dir, f".homecloud-{addon}.yaml.tmp")  # k3s skips dotfiles
    return StringCommand(
        f"cd {q(root)} && umask 077 && mkdir -p {q(manifests_dir)} && out=$({q(k3s)} kubectl kustomize {q('overlays/' + addon)}) "
        f"&& printf '%s\\n' \"$out\" > {q(temp)} && chmod 600 {q(temp)} && mv -f {q(temp)} {q(final)}"
    )


@operation()
def builds(
    digests: dict[str, str],
    disabled: list[str] | None = None,
    root: str = STAGE_DIR,
    manifests_dir: str = MANIFESTS_DIR,
    k3s: str = K3S,
):
    """
    Build each add-on's overlay on this server with ``k3s kubectl kustomize`` and write the
    result 0600 to k3s's auto-deploy folder, only when it differs from the manifest there.

    + digests: {add-on: ``homecloud.platform.tree_digest`` of its files}: when the uploaded tree
      differs (a dry run, before ``tree`` ran) the manifest is reported as rebuilt
    + disabled: add-ons whose manifest, if there is one, becomes an empty manifest
      (``homecloud.platform.tombstone``: k3s deletes what they created); Longhorn is refused
      (uninstalling it deletes every volume)
    + root: the folder ``tree`` wrote
    + manifests_dir: k3s's server manifests folder
    + k3s: the k3s binary (its ``kubectl kustomize``)

    **Example:**

    .. code:: python

        platform.builds(digests={"traefik": homecloud.platform.tree_digest(files, "traefik")})
    """
    disabled = sorted(disabled or [])
    both = set(digests) & set(disabled)
    if both:
        raise OperationError(f"add-ons both built and disabled: {', '.join(sorted(both))}")
    addons = sorted(set(digests) | set(disabled))
    if not addons:
        raise OperationError("no add-ons given")
    for addon in addons:
        manifest_path(addon, manifests_dir)
    facts = host.get_fact(PlatformBuilds, root=root, addons=addons, manifests_dir=manifests_dir, k3s=k3s)
    changed = False
    for addon in addons:
        fact = facts.get(addon) or {}
        path = manifest_path(addon, manifests_dir)
        if addon in disabled:
            if fact.get("manifest") is None:
                continue
            empty = tombstone(addon)
            if fact["manifest"] == hashlib.sha256(empty.encode()).hexdigest():
                continue
            if addon in KEEP_ON_DISABLE:
                raise OperationError(
                    f"{path}: {addon} is deployed and now disabled; homecloud does not uninstall it, because "
                    f"{KEEP_ON_DISABLE[addon]}, then remove {path}; or turn the add-on back on"
                )
            yield from write_file(path, empty, {"sha256": fact["manifest"], "mode": fact.get("mode") or "600"}, mode="600")
            changed = True
            continue
        built, current = fact.get("built"), fact.get("manifest")
        if fact.get("tree") != digests[addon] or built is None or built != current:
            # The tree is not uploaded yet (dry run), k3s is not installed yet, or the build differs.
            yield _build_command(addon, root, manifests_dir, k3s)
            changed = True
        elif fact.get("mode") != "600":
            yield StringCommand("chmod", "600", QuoteString(path))
            changed = True
    if not changed:
        host.noop(f"the manifests of {', '.join(addons)} are up to date")
