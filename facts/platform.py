"""
Facts of the Kubernetes platform on a k3s server: the kustomize tree uploaded to a root-only
folder (modules and overlays), and for each add-on the digest of that tree, the sha256 of
what `k3s kubectl kustomize` builds from it and of the manifest k3s applies.
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase, QuoteString, StringCommand


class PlatformFiles(FactBase):
    """
    The regular files under the platform folder (relative path -> mode, owner, sha1) and the
    folder's own mode; ``{"dir": None, "files": {}}`` when the folder does not exist.

    .. code:: python

        {
            "dir": {"mode": "700", "user": "root", "group": "root"},
            "files": {
                "overlays/traefik/kustomization.yaml": {
                    "mode": "600", "user": "root", "group": "root",
                    "sha1": "0a4d55a8d778e5022fab701977c5d840bbc486d0",
                },
            },
        }
    """

    @staticmethod
    def default():
        return {"dir": None, "files": {}}

    def command(self, root):
        r = QuoteString(root)
        return StringCommand(
            "if [ -d", r, "]; then printf 'dir\\t%s\\n' \"$(stat -c '%a %U %G' --", r, ")\"; cd", r,
            "&& find . -type f | LC_ALL=C sort | while IFS= read -r p; do "
            "printf 'file\\t%s\\t%s\\t%s\\n' \"${p#./}\" \"$(stat -c '%a %U %G' -- \"$p\")\" \"$(sha1sum < \"$p\")\"; "
            "done; fi",
        )

    def process(self, output):
        result = self.default()
        for line in output:
            fields = line.rstrip("\n").split("\t")
            if fields[0] == "dir" and len(fields) == 2 and len(fields[1].split()) == 3:
                mode, user, group = fields[1].split()
                result["dir"] = {"mode": mode, "user": user, "group": group}
            elif fields[0] == "file" and len(fields) == 4 and len(fields[2].split()) == 3 and fields[3].split():
                mode, user, group = fields[2].split()
                result["files"][fields[1]] = {"mode": mode, "user": user, "group": group, "sha1": fields[3].split()[0]}
        return result


class PlatformBuilds(FactBase):
    """
    Per add-on: ``tree``, the digest of its uploaded files (``sha1sum`` of every file of
    ``modules/<addon>`` and ``overlays/<addon>`` in C-locale order, hashed again: what
    ``homecloud.platform.tree_digest`` computes on the controller), ``built``, the sha256 of
    what ``k3s kubectl kustomize overlays/<addon>`` prints (None when k3s is not installed or
    the build fails), and ``manifest`` / ``mode``, the sha256 and mode of
    ``<manifests_dir>/homecloud-<addon>.yaml`` (None when absent).

    .. code:: python

        {
            "traefik": {
                "tree": "5d41402abc4b2a76b9719d911017c592ae8bdd1a",
                "built": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "manifest": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "mode": "600",
            },
        }
    """

    default = dict

    def command(self, root, addons, manifests_dir, k3s="/usr/local/bin/k3s"):
        q = shlex.quote
        return StringCommand(
            f"cd {q(root)} 2>/dev/null || cd /; for a in {' '.join(q(a) for a in addons)}; do "
            "t=$(find \"modules/$a\" \"overlays/$a\" -type f 2>/dev/null | LC_ALL=C sort | while IFS= read -r p; do sha1sum \"$p\"; done | sha1sum); "
            f"if [ -x {q(k3s)} ] && [ -d \"overlays/$a\" ] && out=$({q(k3s)} kubectl kustomize \"overlays/$a\" 2>/dev/null); "
            "then b=$(printf '%s\\n' \"$out\" | sha256sum); else b=-; fi; "
            f"m={q(manifests_dir.rstrip('/'))}/homecloud-$a.yaml; "
            "if [ -f \"$m\" ]; then h=$(sha256sum < \"$m\"); o=$(stat -c %a -- \"$m\"); else h=-; o=-; fi; "
            "printf '%s\\t%s\\t%s\\t%s\\t%s\\n' \"$a\" \"${t%% *}\" \"${b%% *}\" \"${h%% *}\" \"$o\"; done"
        )

    def process(self, output):
        builds = {}
        for line in output:
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 5:
                continue
            addon, tree, built, manifest, mode = fields
            builds[addon] = {
                "tree": tree,
                "built": None if built == "-" else built,
                "manifest": None if manifest == "-" else manifest,
                "mode": None if mode == "-" else mode,
            }
        return builds
