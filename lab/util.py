"""
Small helpers shared by the lab modules: paths, command runner, file locks, host checks.

Everything the lab creates lives under three roots (overridable for tests of the lab itself):

- ``CACHE_ROOT`` (``/var/cache/homecloud-lab``): shared by every lab instance: the debootstrapped
  base root filesystems and the apt proxy's cache;
- ``STATE_ROOT`` (``/var/lib/homecloud-lab``): one folder per instance (``state.json``, SSH key,
  node overlays, disk images, logs); removed by ``down``;
- ``RUN_ROOT`` (``/run/homecloud-lab``): pid files and locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

CACHE_ROOT = Path(os.environ.get("HOMECLOUD_LAB_CACHE", "/var/cache/homecloud-lab"))
STATE_ROOT = Path(os.environ.get("HOMECLOUD_LAB_STATE_ROOT", "/var/lib/homecloud-lab"))
RUN_ROOT = Path(os.environ.get("HOMECLOUD_LAB_RUN", "/run/homecloud-lab"))

# Host tools the lab needs, with the Debian package that provides each (scripts/setup installs them).
REQUIRED_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "mkfs.ext4": "e2fsprogs",
    "losetup": "mount",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "setsid": "util-linux",
}

VERBOSE = bool(os.environ.get("HOMECLOUD_LAB_VERBOSE"))


class LabError(RuntimeError):
    """Something the lab cannot do; the message says what and how to fix it."""


def log(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


def sh(cmd: Sequence[str] | str, check: bool = True, input: str | bytes | None = None,
       timeout: float | None = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command (argv list, or a string for /bin/sh), capture text output, raise LabError."""
    shell = isinstance(cmd, str)
    if VERBOSE:
        log("+ " + (cmd if shell else shlex.join(cmd)))
    proc = subprocess.run(
        cmd, shell=shell, input=input, capture_output=True, text=not isinstance(input, bytes),
        timeout=timeout, env=env,
    )
    if check and proc.returncode != 0:
        shown = cmd if shell else shlex.join(cmd)
        raise LabError(f"command failed ({proc.returncode}): {shown}\n{proc.stderr or ''}{proc.stdout or ''}".rstrip())
    return proc


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, mounts, loop devices): run it with sudo")


def check_tools() -> None:
    import shutil

    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise LabError(f"missing host packages: {' '.join(missing)}. Fix: run `bash scripts/setup` (or apt-get install them)")


@contextlib.contextmanager
def file_lock(path: Path, what: str = "", timeout: float = 900) -> Iterator[None]:
    """An exclusive flock on `path` (created), waiting at most `timeout` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced and what:
                    log(f"waiting for the lock on {what} ({path})")
                    announced = True
                if time.monotonic() > deadline:
                    raise LabError(f"timed out waiting for the lock {path}")
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def pid_alive(pid: int | None) -> bool:
    """True when the process exists and is not a zombie."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def proc_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def host_debian_mirrors() -> tuple[str, str]:
    """
    The Debian mirror and security mirror URLs the host's apt uses (deb822 `.sources` files or
    sources.list), so the lab fetches from the same place as the host (which may be a pinned
    snapshot or a local mirror). Defaults: deb.debian.org.
    """
    mirror, security = "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"
    uris: list[tuple[str, str]] = []  # (uri, suites)
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    uris.append((uri, fields.get("suites", "")))
    for path in [Path("/etc/apt/sources.list")] + (sorted(sources.glob("*.list")) if sources.is_dir() else []):
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 3 and parts[0] == "deb":
                rest = [p for p in parts[1:] if not p.startswith("[")]
                if len(rest) >= 2:
                    uris.append((rest[0], rest[1]))
    for uri, suites in uris:
        if not uri.startswith("http://"):
            continue
        if "security" in suites or uri.rstrip("/").endswith("-security"):
            security = uri.rstrip("/")
        elif uri.rstrip("/").endswith("/debian") or "bookworm" in suites.split():
            mirror = uri.rstrip("/")
    return mirror, security
