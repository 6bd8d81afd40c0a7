"""
arm64 nodes on an amd64 host: user-mode emulation (qemu-user-static) through binfmt_misc.

`ensure_binfmt("arm64")` mounts binfmt_misc if needed and enables Debian's qemu-aarch64 entry
(package qemu-user-static, with the F "fix binary" flag, so the emulator works inside the node's
root without being copied into it). This is a host-wide setting; it is left enabled by `down`
(other instances may use it). Emulated nodes are slow (debootstrap ~4 min, apt ~5x slower), and
systemd reports them `degraded`; see the lab notes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .util import LabError, sh

BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU = {"arm64": "qemu-aarch64", "armhf": "qemu-arm"}


def ensure_binfmt(arch: str) -> None:
    entry = QEMU.get(arch)
    if entry is None:
        raise LabError(f"no emulation known for {arch}")
    if shutil.which(f"{entry}-static") is None or shutil.which("update-binfmts") is None:
        raise LabError(f"{arch} nodes need qemu-user-static and binfmt-support: run `bash scripts/setup`")
    if not (BINFMT / "register").exists():
        sh(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
    if not (BINFMT / entry).exists():
        sh(["update-binfmts", "--enable", entry])
    status = (BINFMT / entry).read_text() if (BINFMT / entry).exists() else ""
    if not status.startswith("enabled"):
        raise LabError(f"binfmt_misc entry {entry} is not enabled:\n{status}")
    flags = next((line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("flags:")), "")
    if "F" not in flags:
        raise LabError(f"binfmt_misc entry {entry} lacks the F flag (flags: {flags}); the emulator would not be found inside the node")
