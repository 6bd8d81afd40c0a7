"""
Concurrent index refreshes through an apt proxy: what the lab's nodes do at the start of a
converge (every node asks for the same InRelease files at once). Run from the repository root:

    .venv/bin/python -m bench.aptproxy [--rounds 30] [--clients 12] [--acng]

Each round sends `--clients` concurrent GETs of the bookworm, bookworm-updates and
bookworm-security InRelease files (from the host's own mirrors) through the proxy, and counts
answers that are not a complete 200: error statuses, and responses that announce a length and
then close early. The proxy is the lab's (`lab/aptproxy.py`, index TTL 0, so every round goes
to the mirror unless a concurrent request's download is under way) on a scratch cache; with
`--acng`, apt-cacher-ng as the lab configured it before (it must be installed: `apt-get install
apt-cacher-ng`; it is not part of scripts/setup any more), for comparison. Network: only the
host's Debian mirrors, through the proxy on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab import aptproxy
from lab.util import host_debian_mirrors, wait_for

ACNG_PORT = 3159


def _start_acng(root: Path, mirror: str, security: str) -> subprocess.Popen:
    conf = root / "conf"
    for sub in ("conf", "cache", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (conf / "backends_debian").write_text(mirror + "/\n")
    (conf / "backends_debsec").write_text(security + "/\n")
    (conf / "acng.conf").write_text(
        f"CacheDir: {root / 'cache'}\nLogDir: {root / 'log'}\nSupportDir: /usr/lib/apt-cacher-ng\n"
        f"Port: {ACNG_PORT}\nBindAddress: 127.0.0.1\nForeGround: 1\n"
        "Remap-debrep: file:deb_mirror*.gz /debian ; file:backends_debian\n"
        "Remap-secdeb: security.debian.org security.debian.org/debian-security deb.debian.org/debian-security "
        "/debian-security ; file:backends_debsec\n"
        "ForceManaged: 1\nExThreshold: 4\nFollowIndexFileRemoval: 1\n"
    )
    proc = subprocess.Popen(["apt-cacher-ng", "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_for(lambda: _answers(f"http://127.0.0.1:{ACNG_PORT}"), 15):
        proc.kill()
        raise SystemExit("apt-cacher-ng did not start")
    return proc


def _answers(proxy: str) -> bool:
    try:
        urllib.request.urlopen(proxy, timeout=1).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def hammer(proxy: str, urls: list[str], rounds: int, clients: int) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))

    def get(url: str) -> tuple[str, float]:
        t0 = time.monotonic()
        try:
            with opener.open(url, timeout=60) as resp:
                resp.read()
                outcome = "ok"
        except Exception as e:  # noqa: BLE001 (every failure is a result here)
            outcome = type(e).__name__ + (f" {e.code}" if hasattr(e, "code") else "")
        return outcome, time.monotonic() - t0

    outcomes: dict[str, int] = {}
    worst = 0.0
    for _ in range(rounds):
        with ThreadPoolExecutor(clients) as pool:
            for outcome, seconds in pool.map(get, [urls[i % len(urls)] for i in range(clients)]):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                worst = max(worst, seconds)
    total = rounds * clients
    return {"requests": total, "complete": outcomes.pop("ok", 0), "failures": outcomes, "worst_seconds": round(worst, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.aptproxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--acng", action="store_true", help="measure apt-cacher-ng instead of the lab's proxy")
    args = parser.parse_args(argv)
    mirror, security = host_debian_mirrors()
    urls = [f"{mirror}/dists/bookworm/InRelease", f"{mirror}/dists/bookworm-updates/InRelease",
            f"{security}/dists/bookworm-security/InRelease"]
    scratch = Path(tempfile.mkdtemp(prefix="homecloud-bench-aptproxy-"))
    try:
        if args.acng:
            if not shutil.which("apt-cacher-ng"):
                print("apt-cacher-ng is not installed (apt-get install apt-cacher-ng)", file=sys.stderr)
                return 2
            proc = _start_acng(scratch, mirror, security)
            try:
                result = hammer(f"http://127.0.0.1:{ACNG_PORT}", urls, args.rounds, args.clients)
            finally:
                proc.terminate()
                proc.wait(10)
            name = "apt-cacher-ng"
        else:
            cache = aptproxy.ArchiveCache(scratch / "cache", [mirror, security], index_ttl=0)
            with aptproxy.serving(cache) as url:
                result = hammer(url, urls, args.rounds, args.clients)
            name = "lab/aptproxy.py"
            result["mirror_downloads"] = cache.downloads
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"proxy": name, "rounds": args.rounds, "clients": args.clients, **result}))
    return 0 if not result["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
