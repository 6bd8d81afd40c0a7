"""
Fresh-node converges in a row: does the lab's package path hold under repetition? Run as root
from the repository root (its own lab instance, `stress` unless $HOMECLOUD_LAB names another):

    .venv/bin/python -m bench.converge [--runs 10] [--index-ttl 0] [--timeout 900] [--keep]

The lab is brought up afresh with the apt proxy's index TTL set (default 0: every `apt-get
update` fetches InRelease from the mirror unless another node's download of it is under way,
the most concurrent case for the proxy). Then, per run: `lab reset` puts every node back to
the fresh base (no package lists, nothing installed), and `pyinfra -y --json
inventories/lab.py deploys/all.py` converges them, with a hard timeout. Printed per run: the
seconds, changed and failed operations, and what the apt proxy saw during the run (requests,
downloads from the mirror, answers shared with a concurrent download, errors, the slowest
request). A run that times out is reported as a hang with each node's apt processes and TCP
connections, and the tail of the proxy's log.

Exit status 0 when every run converged without error within the timeout, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lab import results as pyinfra_results

REPO_ROOT = Path(__file__).resolve().parent.parent


def proxy_stats(lines: list[str]) -> dict:
    """Counts from lab.aptproxy log lines (time client method status bytes result seconds url)."""
    stats = {"requests": 0, "downloads": 0, "shared": 0, "hits": 0, "errors": 0, "slowest": 0.0, "slowest_url": ""}
    for line in lines:
        parts = line.split()
        if len(parts) < 8:
            continue
        stats["requests"] += 1
        status, result, seconds = parts[3], parts[5], float(parts[6].rstrip("s"))
        if status != "200":
            stats["errors"] += 1
        elif result.startswith("miss"):
            stats["downloads"] += 1
        elif result.startswith("shared"):
            stats["shared"] += 1
        elif result.startswith("hit"):
            stats["hits"] += 1
        if seconds > stats["slowest"]:
            stats["slowest"], stats["slowest_url"] = seconds, parts[-1]
    return stats


def _hang_report(lab, log_lines: list[str]) -> str:
    out = []
    for node in lab.nodes():
        probe = lab.run(node["name"], "ps -eo pid,etime,args | grep -E '[a]pt|[d]pkg' ; ss -tnp | grep -v ':22 ' || true",
                        check=False, timeout=30)
        out.append(f"--- {node['name']}\n{probe.stdout.strip()}")
    out.append("--- apt proxy log (tail)\n" + "\n".join(log_lines[-30:]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.converge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--index-ttl", type=float, default=0.0, help="the apt proxy's index TTL in seconds")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one converge may take")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args(argv)

    os.environ.setdefault("HOMECLOUD_LAB", "stress")
    os.environ["HOMECLOUD_LAB_APT_INDEX_TTL"] = str(args.index_ttl)
    from lab import api, core

    instance = api.instance()
    print(f"lab {instance}: {args.runs} fresh-node converges of deploys/all.py on {args.nodes} nodes, "
          f"apt index TTL {args.index_ttl:g} s, timeout {args.timeout:g} s per run", flush=True)
    api.down()
    api.up(nodes=args.nodes)
    log_file = core.state_dir(instance) / "logs" / "proxy.log"
    seconds: list[float] = []
    failures = 0
    try:
        for run in range(1, args.runs + 1):
            t0 = time.monotonic()
            core.reset(instance)
            reset_s = time.monotonic() - t0
            offset = log_file.stat().st_size if log_file.exists() else 0
            t1 = time.monotonic()
            hung, report = False, ""
            try:
                result = pyinfra_results.run_pyinfra("inventories/lab.py", "deploys/all.py", timeout=args.timeout,
                                                     env={"HOMECLOUD_LAB": instance})
            except subprocess.TimeoutExpired:
                hung, result = True, None
            except pyinfra_results.PyinfraRunError as e:
                result, report = None, str(e)
            took = time.monotonic() - t1
            with open(log_file, encoding="utf-8", errors="replace") as f:
                f.seek(offset)
                lines = f.read().splitlines()
            stats = proxy_stats(lines)
            ok = result is not None and result["returncode"] == 0 and not pyinfra_results.errors(result)
            changed = sum(len(ops) for ops in pyinfra_results.changed(result).values()) if result else 0
            verdict = "HUNG" if hung else ("ok" if ok else "FAILED")
            print(
                f"run {run:2d}: {verdict:6s} converge {took:6.1f} s (reset {reset_s:.1f} s), {changed} changes; "
                f"apt proxy: {stats['requests']} requests, {stats['downloads']} downloads, {stats['shared']} shared, "
                f"{stats['hits']} cached, {stats['errors']} errors, slowest {stats['slowest']:.1f} s",
                flush=True,
            )
            if ok:
                seconds.append(took)
                continue
            failures += 1
            if hung:
                print(_hang_report(api, lines), flush=True)
            elif result is not None:
                print(pyinfra_results.summary(result)[-4000:], flush=True)
            else:
                print(report[-4000:], flush=True)
    finally:
        if not args.keep:
            api.down()
    if seconds:
        print(f"converged {len(seconds)}/{args.runs}: median {statistics.median(seconds):.1f} s, "
              f"min {min(seconds):.1f} s, max {max(seconds):.1f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
