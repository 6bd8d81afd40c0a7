"""
The lab's only way out: an apt proxy.

One apt-cacher-ng process is shared by every lab instance. It listens on 127.0.0.1 only (port
``HOMECLOUD_LAB_ACNG_PORT``, default 3149), keeps its cache under
``/var/cache/homecloud-lab/apt-cacher-ng`` between runs, and is restricted (``ForceManaged``) to
the Debian archive and security mirrors the host itself uses: nodes cannot fetch anything else
through it. Each instance then runs a small socat forwarder listening on its controller address
on the lab bridge, port 3142, to that loopback port. Nodes have no default route and no DNS;
their apt sends full URLs to ``http://<controller>:3142``.

apt-cacher-ng is started by the first ``up`` that needs it (its pid file records that the lab
started it) and stopped by the ``down`` of the last instance.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from .util import CACHE_ROOT, RUN_ROOT, LabError, file_lock, log, pid_alive, proc_cmdline, wait_for, host_debian_mirrors

ACNG_PORT = int(os.environ.get("HOMECLOUD_LAB_ACNG_PORT", "3149"))
NODE_PROXY_PORT = 3142
ACNG_DIR = CACHE_ROOT / "apt-cacher-ng"
ACNG_PIDFILE = RUN_ROOT / "apt-cacher-ng.pid"


def acng_url() -> str:
    return f"http://127.0.0.1:{ACNG_PORT}"


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _write_config() -> Path:
    mirror, security = host_debian_mirrors()
    conf = ACNG_DIR / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (ACNG_DIR / "cache").mkdir(exist_ok=True)
    (ACNG_DIR / "log").mkdir(exist_ok=True)
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    # The backend is the host's own mirror: the mirror list shipped with apt-cacher-ng would
    # otherwise send requests to hosts that do not resolve here.
    (conf / "backends_debian").write_text(mirror + "/\n", encoding="utf-8")
    (conf / "backends_debsec").write_text(security + "/\n", encoding="utf-8")
    sec = urlparse(security)
    (conf / "acng.conf").write_text(
        "# Written by the homecloud lab (lab/proxy.py); rewritten on every start.\n"
        f"CacheDir: {ACNG_DIR / 'cache'}\n"
        f"LogDir: {ACNG_DIR / 'log'}\n"
        "SupportDir: /usr/lib/apt-cacher-ng\n"
        f"Port: {ACNG_PORT}\n"
        "BindAddress: 127.0.0.1\n"
        f"PidFile: {ACNG_PIDFILE}\n"
        "Remap-debrep: file:deb_mirror*.gz /debian ; file:backends_debian\n"
        f"Remap-secdeb: security.debian.org security.debian.org/debian-security deb.debian.org/debian-security "
        f"{sec.netloc}{sec.path} /debian-security ; file:backends_debsec\n"
        # Only the remapped Debian archives: the proxy is not a way out to anything else.
        "ForceManaged: 1\n"
        "ExThreshold: 4\n"
        "FollowIndexFileRemoval: 1\n",
        encoding="utf-8",
    )
    return conf


def acng_pid() -> int | None:
    try:
        pid = int(ACNG_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    cmd = proc_cmdline(pid)
    if pid_alive(pid) and cmd and "apt-cacher-ng" in cmd[0]:
        return pid
    return None


def ensure_acng() -> bool:
    """Start the shared apt-cacher-ng unless it answers already. True if this call started it."""
    with file_lock(RUN_ROOT / "apt-cacher-ng.lock", "the apt proxy"):
        if _port_open("127.0.0.1", ACNG_PORT):
            if acng_pid() is None:
                log(f"note: 127.0.0.1:{ACNG_PORT} answers but is not the lab's apt-cacher-ng; using it as the apt proxy")
            return False
        conf = _write_config()
        subprocess.run(
            ["apt-cacher-ng", "-c", str(conf), "ForeGround=0"],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not wait_for(lambda: _port_open("127.0.0.1", ACNG_PORT), 15):
            raise LabError(f"apt-cacher-ng did not start on 127.0.0.1:{ACNG_PORT} (see {ACNG_DIR / 'log'})")
        return True


def stop_acng() -> None:
    """Stop the shared apt-cacher-ng (only the one the lab started, found by its pid file)."""
    with file_lock(RUN_ROOT / "apt-cacher-ng.lock", "the apt proxy"):
        pid = acng_pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            if not wait_for(lambda: not pid_alive(pid), 10):
                os.kill(pid, signal.SIGKILL)
        ACNG_PIDFILE.unlink(missing_ok=True)


def forwarder_argv0(instance: str) -> str:
    """argv[0] of an instance's forwarder: how `down` finds it even without a state file."""
    return f"homecloud-lab-proxy-{instance}"


def start_forwarder(instance: str, controller_ip: str, log_file: Path) -> int:
    """socat on <controller_ip>:3142 (the lab bridge) to the shared apt-cacher-ng; returns its pid."""
    out = open(log_file, "ab")
    proc = subprocess.Popen(
        [forwarder_argv0(instance), f"TCP-LISTEN:{NODE_PROXY_PORT},bind={controller_ip},fork,reuseaddr",
         f"TCP:127.0.0.1:{ACNG_PORT}"],
        executable="/usr/bin/socat", stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
    )
    out.close()
    if not wait_for(lambda: _port_open(controller_ip, NODE_PROXY_PORT), 10):
        raise LabError(f"the apt proxy forwarder did not listen on {controller_ip}:{NODE_PROXY_PORT} (see {log_file})")
    return proc.pid


def forwarder_pids(instance: str) -> list[int]:
    from .util import all_pids

    name = forwarder_argv0(instance)
    return [pid for pid in all_pids() if (cmd := proc_cmdline(pid)) and cmd[0] == name]


def stop_forwarder(instance: str) -> None:
    for pid in forwarder_pids(instance):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not [p for p in forwarder_pids(instance) if pid_alive(p)], 5)
