"""
The lab's only way out: an apt proxy per instance (`lab.aptproxy`).

Each instance runs one proxy process, listening on its controller address on the lab bridge,
port 3142, restricted to the Debian archive and security mirrors the host itself uses: nodes
cannot fetch anything else through it. Nodes have no default route and no DNS; their apt sends
full URLs to ``http://<controller>:3142``. The proxies of all instances share one cache,
``/var/cache/homecloud-lab/apt``, kept between runs (a cold deploy costs one download per
package, later ones none); `down` stops the instance's proxy.

``HOMECLOUD_LAB_APT_INDEX_TTL`` (seconds, default 300) is how long an index file (InRelease,
Release, ...) fetched for one request is served to later ones; 0 fetches it afresh for every
`apt-get update` that does not arrive while another one's download of it is under way (the
worst case for the proxy: the stress run of the lab tests uses it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from . import aptproxy
from .util import CACHE_ROOT, LabError, all_pids, host_debian_mirrors, pid_alive, proc_cmdline, wait_for

NODE_PROXY_PORT = 3142
APT_CACHE = CACHE_ROOT / "apt"
REPO_ROOT = Path(__file__).resolve().parents[1]


def index_ttl() -> float:
    return float(os.environ.get("HOMECLOUD_LAB_APT_INDEX_TTL", "300"))


def archive_cache() -> aptproxy.ArchiveCache:
    """The shared cache, allowing exactly the host's Debian mirrors."""
    return aptproxy.ArchiveCache(APT_CACHE, list(host_debian_mirrors()), index_ttl=index_ttl())


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def for_debootstrap(log_file: Path | None = None) -> Iterator[str]:
    """A proxy on loopback for the base build (before any bridge exists); yields its URL."""
    with aptproxy.serving(archive_cache(), "127.0.0.1", log_file) as url:
        yield url


def _marker(instance: str) -> list[str]:
    return ["-m", "lab.aptproxy", "--instance", instance]


def start(instance: str, controller_ip: str, log_file: Path) -> int:
    """The instance's proxy on <controller_ip>:3142 (the lab bridge); returns its pid."""
    argv = [sys.executable, *_marker(instance), "--bind", controller_ip, "--port", str(NODE_PROXY_PORT),
            "--cache", str(APT_CACHE), "--index-ttl", str(index_ttl()), "--log", str(log_file)]
    for prefix in host_debian_mirrors():
        argv += ["--allow", prefix]
    errors = log_file.with_suffix(".err")
    with open(errors, "ab") as err:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                start_new_session=True)
    if not wait_for(lambda: _port_open(controller_ip, NODE_PROXY_PORT) or proc.poll() is not None, 15) \
            or proc.poll() is not None:
        detail = errors.read_text(errors="replace")[-2000:] if errors.exists() else ""
        raise LabError(f"the apt proxy did not listen on {controller_ip}:{NODE_PROXY_PORT}: {detail}".rstrip())
    return proc.pid


def pids(instance: str) -> list[int]:
    """The instance's proxy processes, found by their command line (also without a state file)."""
    marker = _marker(instance)
    found = []
    for pid in all_pids():
        cmd = proc_cmdline(pid) or []
        if any(cmd[i:i + len(marker)] == marker for i in range(len(cmd))):
            found.append(pid)
    return found


def stop(instance: str) -> None:
    for pid in pids(instance):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if not wait_for(lambda: not [p for p in pids(instance) if pid_alive(p)], 5):
        for pid in pids(instance):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
