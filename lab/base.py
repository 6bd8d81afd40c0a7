"""
The base root filesystem every node boots from: Debian 12 (bookworm) as a fresh board has it.

Built once with debootstrap (``minbase`` + systemd, sshd, python3, ...: what Raspberry Pi OS
Lite or a Debian board image has, none of homecloud's layer packages), through the lab's apt
proxy, and cached under ``/var/cache/homecloud-lab/base/<arch>-<hash>/``. The hash covers the
whole recipe (suite, variant, package list, mirror, and the source of `_customize`): change the
recipe and the next ``up`` builds a new base; an unchanged recipe is reused by every instance.
A lock serialises builds between instances. Nodes never write to a base: each mounts it as the
read-only lower layer of an overlay.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import shutil
import time
from pathlib import Path

from . import proxy as apt_proxy
from .util import CACHE_ROOT, LabError, file_lock, host_debian_mirrors, log, sh

SUITE = "bookworm"
VARIANT = "minbase"
# What a fresh Raspberry Pi OS Lite / Debian board image has (not our layers' packages).
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "libpam-systemd", "udev", "kmod",
    "openssh-server", "python3", "iproute2", "iputils-ping", "ca-certificates",
    "procps", "sudo", "less", "nano", "curl", "wget", "gnupg", "apt-transport-https",
    "netbase", "psmisc", "file", "rsync", "fdisk", "locales", "tzdata",
]
BASE_ROOT = CACHE_ROOT / "base"


def native_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}.get(platform.machine(), platform.machine())


def _customize(root: Path, mirror: str, security: str) -> None:
    """Turn a fresh debootstrap into a generic board image (no identity, no keys, apt sources)."""
    # No identity baked in: every node gets its own machine-id and SSH host keys.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    (root / "etc/hostname").write_text("debian\n")
    (root / "etc/fstab").write_text("# <file system> <mount point> <type> <options> <dump> <pass>\n")
    # Nodes have no DNS: the only way out is the apt proxy, which receives full URLs.
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("# homecloud lab node: no DNS (nothing outside the lab is reachable)\n")
    (root / "etc/apt/sources.list").write_text(
        f"deb {mirror} {SUITE} main\n"
        f"deb {mirror} {SUITE}-updates main\n"
        f"deb {security} {SUITE}-security main\n"
    )
    (root / "etc/locale.gen").write_text("en_US.UTF-8 UTF-8\n")
    (root / "etc/default/locale").write_text("LANG=C.UTF-8\n")
    # Like a board image: package lists are not shipped (apt-get update first), caches empty.
    for folder in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for entry in (root / folder).glob("*"):
            if entry.is_file():
                entry.unlink()
    for entry in (root / "var/cache/apt").glob("*.bin"):
        entry.unlink()
    # Root logs in with the lab's SSH key only (Debian's default PermitRootLogin prohibit-password).
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)


def _customize_emulated(root: Path) -> None:
    """
    A base for an emulated architecture (qemu-user on this host): packages are not byte-compiled
    when they are installed. Debian's python packages run py3compile in their postinst; under
    qemu that was most of an arm64 node's first deploy (`apt-get install samba`: 4 min 44 s).
    py3compile is diverted (dpkg-divert, so an upgrade of python3-minimal keeps it aside) to a
    stub that does nothing; Python compiles a module when it is first imported instead. Real
    boards are not emulated and keep Debian's behaviour: this is the lab's base only.
    """
    real = "/usr/bin/py3compile"
    sh(["dpkg-divert", f"--root={root}", "--local", "--rename", "--divert", f"{real}.homecloud-lab", "--add", real])
    stub = root / real.lstrip("/")
    stub.write_text("#!/bin/sh\n# homecloud lab (emulated arch): no byte-compiling at install, see lab/base.py\nexit 0\n")
    stub.chmod(0o755)


def recipe(arch: str) -> dict:
    mirror, security = host_debian_mirrors()
    found = {
        "suite": SUITE,
        "variant": VARIANT,
        "arch": arch,
        "packages": sorted(PACKAGES),
        "mirror": mirror,
        "security": security,
        "customize": inspect.getsource(_customize),
    }
    if arch != native_arch():
        found["customize_emulated"] = inspect.getsource(_customize_emulated)
    return found


def recipe_hash(arch: str) -> str:
    return hashlib.sha256(json.dumps(recipe(arch), sort_keys=True).encode()).hexdigest()[:12]


def base_path(arch: str) -> Path:
    return BASE_ROOT / f"{SUITE}-{arch}-{recipe_hash(arch)}"


def is_cached(arch: str) -> bool:
    return (base_path(arch) / "rootfs" / "etc" / "os-release").exists() and (base_path(arch) / "recipe.json").exists()


def ensure_base(arch: str | None = None, log_dir: Path | None = None) -> tuple[Path, float, bool]:
    """
    The cached base rootfs for `arch` (built when missing). Returns (rootfs path, seconds taken,
    cached?). debootstrap fetches through the lab's apt proxy (`lab.proxy`), on loopback for
    the time of the build; its requests are logged in `log_dir`/base-proxy.log.
    """
    arch = arch or native_arch()
    start = time.monotonic()
    final = base_path(arch)
    with file_lock(BASE_ROOT / f"{arch}.lock", f"the {arch} base image"):
        if is_cached(arch):
            return final / "rootfs", time.monotonic() - start, True
        rec = recipe(arch)
        tmp = BASE_ROOT / f".build-{arch}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rootfs").mkdir(parents=True)
        cmd = ["debootstrap", f"--variant={VARIANT}", f"--arch={arch}", f"--include={','.join(PACKAGES)}"]
        if arch != native_arch():
            from .arm import ensure_binfmt

            ensure_binfmt(arch)
        cmd += [SUITE, str(tmp / "rootfs"), rec["mirror"]]
        log(f"building the {arch} base rootfs with debootstrap (once; cached in {final})")
        try:
            with apt_proxy.for_debootstrap(log_dir / "base-proxy.log" if log_dir else None) as url:
                proc = sh(cmd, check=False, env={**os.environ, "http_proxy": url}, timeout=3600)
            if proc.returncode != 0:
                tail = (tmp / "rootfs/debootstrap/debootstrap.log")
                detail = tail.read_text(errors="replace")[-3000:] if tail.exists() else ""
                raise LabError(f"debootstrap failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n{detail}")
            _customize(tmp / "rootfs", rec["mirror"], rec["security"])
            if arch != native_arch():
                _customize_emulated(tmp / "rootfs")
            (tmp / "recipe.json").write_text(json.dumps(rec, indent=2, sort_keys=True))
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        elapsed = time.monotonic() - start
        (final / "build-seconds").write_text(f"{elapsed:.1f}\n")
        log(f"base rootfs built in {elapsed:.0f} s")
        _remove_unused(arch, keep=final)
        return final / "rootfs", elapsed, False


def _remove_unused(arch: str, keep: Path) -> None:
    """Delete older bases of `arch` (from an older recipe) that no lab instance uses any more."""
    from .util import STATE_ROOT

    used = set()
    for state_file in STATE_ROOT.glob("*/state.json") if STATE_ROOT.is_dir() else []:
        try:
            used.update(node["base"] for node in json.loads(state_file.read_text())["nodes"])
        except Exception:
            return  # unreadable state: keep everything
    for old in BASE_ROOT.glob(f"{SUITE}-{arch}-*"):
        if old != keep and str(old / "rootfs") not in used:
            log(f"removing the unused older base {old}")
            shutil.rmtree(old, ignore_errors=True)
