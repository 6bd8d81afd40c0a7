"""
How fast is a homecloud deploy, and what does a re-run cost? Measured on the local lab
(instance $HOMECLOUD_LAB, default `bench` so it never disturbs a test lab), as root, from the
repository root:

    .venv/bin/python -m bench.deploy [--repeat 3] [--keep]

In one run it measures:

1. the first converge of deploys/all.py on 4 fresh nodes;
2. the no-op re-run of deploys/all.py (it must change nothing), each run right after a run of
3. the connection floor: `pyinfra -y inventories/lab.py exec -- true` on the same nodes (what
   any pyinfra run costs: start-up, inventory, SSH connections, one command per host);
4. the first-converge floor on 4 fresh nodes (bench/converge_floor.py): per node one
   `apt-get update` + one `apt-get install` of exactly the packages the first converge added
   to it (read with dpkg-query before and after), through the same apt proxy, and one file
   upload per file the converge uploaded - what a converge cannot do with less;
5. the same no-op re-run on 8 nodes (a fresh 8-node lab, converged first).

Targets: no-op re-run <= 3x the connection floor, first converge <= 1.5x its floor, and the
no-op re-run grows < 1.3x from 4 to 8 nodes. Exit status 0 when all are met, 1 when not, 2
when the run failed or a re-run was not a no-op (an idempotency defect: such runs are reported with what they changed and left out of
the timings; an extra run replaces each of them).

Round trips: every pyinfra run goes through this script's `count` mode, which runs the pyinfra
CLI in-process with pyinfra's own `Host.run_shell_command`, `Host.put_file`, `Host.get_file`
and fact loader (`pyinfra.api.facts._get_fact`) wrapped by counters keyed by host name. Every
fact is one remote command and every operation command goes through `Host.run_shell_command`,
so per host: facts = fact loads, commands = shell commands that are not fact loads, plus
uploads / downloads. This counts at the API, not by parsing log text, so it does not depend on
log formats; the counters are plain increments (no measurable cost next to an SSH round trip).
Timings are wall-clock times of the whole process (Python start-up and imports included,
as a user sees them); each timed measurement is repeated --repeat times and the median is used.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
INVENTORY = "inventories/lab.py"
DEPLOY = "deploys/all.py"
NOOP_FLOOR_RATIO = 3.0
CONVERGE_FLOOR_RATIO = 1.5
SCALING_RATIO = 1.3
FLOOR_DEPLOY = "bench/converge_floor.py"
# pyinfra runs as on a user's controller: Python caches the bytecode of the modules it imports
# (this machine's environment sets PYTHONDONTWRITEBYTECODE=1, which made every run compile
# homecloud's ~60 modules from source again: ~0.2 s in each deploy run, less in a floor run).
def run_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


# --- count mode: one pyinfra CLI run with round-trip counters ---------------------------------


def _count_run(out_file: str, pyinfra_args: list[str]) -> int:
    """Run the pyinfra CLI in this process with counters; write them (and the exit code) out."""
    from pyinfra.api import facts as facts_module
    from pyinfra.api.host import Host

    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"shell": 0, "facts": 0, "uploads": 0, "downloads": 0})

    def wrap(method_name: str, key: str) -> None:
        original = getattr(Host, method_name)

        def counted(self, *args, **kwargs):
            counts[self.name][key] += 1
            return original(self, *args, **kwargs)

        setattr(Host, method_name, counted)

    wrap("run_shell_command", "shell")
    wrap("put_file", "uploads")
    wrap("get_file", "downloads")
    original_get_fact = facts_module._get_fact
    # Per host: (fact, arguments) -> reads, and fact class -> [reads, seconds]. Seconds are wall
    # time inside the fact load; hosts run concurrently (gevent), so they include waiting.
    reads: dict[str, Counter] = defaultdict(Counter)
    by_fact: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(lambda: [0, 0.0]))

    def counted_get_fact(state, host, cls, args=None, kwargs=None, *rest, **more):
        counts[host.name]["facts"] += 1
        fact = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
        reads[host.name][f"{fact}({_short(args, kwargs)})"] += 1
        t0 = time.monotonic()
        try:
            return original_get_fact(state, host, cls, args, kwargs, *rest, **more)
        finally:
            entry = by_fact[host.name][fact]
            entry[0] += 1
            entry[1] += time.monotonic() - t0

    facts_module._get_fact = counted_get_fact

    from pyinfra_cli.main import main

    sys.argv = ["pyinfra", *pyinfra_args]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        result = {
            host: {
                "facts": c["facts"],
                "commands": c["shell"] - c["facts"],
                "uploads": c["uploads"],
                "downloads": c["downloads"],
                # The same fact with the same arguments read more than once in this run.
                "repeated_reads": {key: n for key, n in reads[host].most_common() if n > 1},
                "by_fact": {name: {"reads": n, "seconds": round(sec, 3)} for name, (n, sec) in by_fact[host].items()},
            }
            for host, c in sorted(counts.items())
        }
        Path(out_file).write_text(json.dumps({"exit": code, "counts": result}), encoding="utf-8")
    return code


def _short(args, kwargs) -> str:
    text = ", ".join([repr(a) for a in args or ()] + [f"{k}={v!r}" for k, v in sorted((kwargs or {}).items())])
    return text if len(text) <= 80 else text[:77] + "..."


# --- driver -----------------------------------------------------------------------------------


class BenchError(Exception):
    pass


def pyinfra_run(args: list[str], label: str, log_dir: Path) -> dict:
    """One counted pyinfra run in a fresh process: seconds, exit code, counts, JSON results."""
    with tempfile.NamedTemporaryFile(prefix="bench-count-", suffix=".json", delete=False) as f:
        count_file = f.name
    argv = [sys.executable, "-m", "bench.deploy", "count", count_file, "--", "-y", "--json", *args]
    t0 = time.monotonic()
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, env=run_env())
    seconds = time.monotonic() - t0
    safe = label.replace(" ", "-")
    (log_dir / f"{safe}.stdout.json").write_text(done.stdout)
    (log_dir / f"{safe}.stderr.log").write_text(done.stderr)
    try:
        counted = json.loads(Path(count_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        counted = {"exit": done.returncode, "counts": {}}
    finally:
        Path(count_file).unlink(missing_ok=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-25:])
        raise BenchError(f"{label}: pyinfra exited {done.returncode} after {seconds:.1f} s (log: {log_dir}/{safe}.stderr.log)\n{tail}")
    try:
        results = json.loads(done.stdout).get("results") or {}
    except ValueError:
        results = {}
    return {"seconds": seconds, "counts": counted["counts"], "results": results}


def changed_operations(run: dict) -> list[str]:
    """'operation on host' for every operation that reported a change."""
    return [f"{op['name']} on {', '.join(op['success'])}" for op in run["results"].get("operations", []) if op.get("success")]


def timed(label: str, func):
    t0 = time.monotonic()
    value = func()
    seconds = time.monotonic() - t0
    print(f"  {label}: {seconds:.1f} s", flush=True)
    return value, seconds


def fresh_lab(api, nodes: int) -> None:
    """A lab of exactly `nodes` fresh nodes (down + up: the base is cached, so this is quick)."""
    timed(f"lab down ({api.instance()})", api.down)
    timed(f"lab up --nodes {nodes}", lambda: api.up(nodes=nodes))
    got = len(api.nodes())
    if got != nodes:
        raise BenchError(f"lab up --nodes {nodes} gave {got} nodes")


def installed_packages(api) -> dict[str, set[str]]:
    """Per node: the packages dpkg has installed ("ii")."""
    out = {}
    for node in api.nodes():
        text = api.run(node["name"], "dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n'").stdout
        out[node["name"]] = {line.split()[1] for line in text.splitlines() if line.startswith("ii ")}
    return out


def measure_converge_floor(api, plan: dict, log_dir: Path) -> dict:
    """The first-converge floor on fresh nodes (see bench/converge_floor.py)."""
    fresh_lab(api, len(plan))
    plan_file = log_dir / "converge-floor-plan.json"
    plan_file.write_text(json.dumps(plan, indent=1, sort_keys=True), encoding="utf-8")
    os.environ["HOMECLOUD_BENCH_FLOOR_PLAN"] = str(plan_file)
    return pyinfra_run([INVENTORY, FLOOR_DEPLOY], "converge-floor-4", log_dir)


def measure_noop(label: str, repeat: int, log_dir: Path, not_idempotent: list[str], floors: list[dict] | None = None) -> tuple[float, list[dict]]:
    """
    `repeat` re-runs that change nothing, timed. A re-run that changes something is an
    idempotency defect: it is recorded in `not_idempotent` (the bench then exits 2) and not
    timed; one extra run is allowed per such run, up to `repeat` extra runs in all. With
    `floors`, a connection floor run goes before each re-run (alternating, on the same nodes in
    the same state) and is appended there.
    """
    runs: list[dict] = []
    attempt = 0
    while len(runs) < repeat and attempt < 2 * repeat:
        attempt += 1
        if floors is not None and len(floors) < repeat:
            floor = pyinfra_run([INVENTORY, "exec", "--", "true"], f"floor-4-{len(floors) + 1}", log_dir)
            floors.append(floor)
            print(f"  connection floor run {len(floors)}: {floor['seconds']:.1f} s", flush=True)
        run = pyinfra_run([INVENTORY, DEPLOY], f"{label}-{attempt}", log_dir)
        changed = changed_operations(run)
        if changed:
            not_idempotent.append(f"{label} run {attempt} changed: " + "; ".join(changed[:10]))
            print(f"  {label} run {attempt}: {run['seconds']:.1f} s, NOT a no-op, changed: " + "; ".join(changed[:10]), flush=True)
            continue
        print(f"  {label} run {attempt}: {run['seconds']:.1f} s, no change", flush=True)
        runs.append(run)
    if not runs:
        raise BenchError(f"{label}: no re-run was a no-op in {attempt} runs: " + " | ".join(not_idempotent))
    return statistics.median(r["seconds"] for r in runs), runs


def print_counts(title: str, counts: dict[str, dict], details: bool = False) -> None:
    print(f"\n{title}: round trips per host (facts + commands; uploads / downloads)")
    for host, c in counts.items():
        total = c["facts"] + c["commands"] + c["uploads"] + c["downloads"]
        repeated = sum(n - 1 for n in c.get("repeated_reads", {}).values())
        print(
            f"  {host:<8} facts {c['facts']:>4}  commands {c['commands']:>4}  uploads {c['uploads']:>3}  "
            f"downloads {c['downloads']:>3}  total {total:>4}  (repeated fact reads {repeated})"
        )
    if not details or not counts:
        return
    host, c = max(counts.items(), key=lambda item: item[1]["facts"])
    top = sorted(c.get("by_fact", {}).items(), key=lambda item: -item[1]["seconds"])[:12]
    print(f"  {host}, facts by time spent (reads, seconds):")
    for name, v in top:
        print(f"    {name:<40} {v['reads']:>4}  {v['seconds']:7.2f}")
    for key, n in list(c.get("repeated_reads", {}).items())[:10]:
        print(f"    read {n}x: {key}")


def bench(repeat: int, keep: bool) -> int:
    if os.geteuid() != 0:
        raise BenchError("run as root (the local lab needs root): sudo .venv/bin/python -m bench.deploy")
    os.environ.setdefault("HOMECLOUD_LAB", "bench")
    os.environ.setdefault("PYINFRA_PROGRESS", "off")
    os.chdir(REPO_ROOT)
    for path in (INVENTORY, DEPLOY):
        if not (REPO_ROOT / path).exists():
            raise BenchError(f"{path} is missing")
    from lab import api

    log_dir = Path(tempfile.mkdtemp(prefix=f"homecloud-bench-{api.instance()}-"))
    load = os.getloadavg()
    print(f"homecloud deploy benchmark: lab `{api.instance()}`, logs in {log_dir}")
    print(f"host: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other work skews timings)")
    print("pyinfra runs cache bytecode as on a user's controller (PYTHONDONTWRITEBYTECODE unset for them)\n")

    results: dict[str, float] = {}
    not_idempotent: list[str] = []
    try:
        print("4 nodes:")
        fresh_lab(api, 4)
        before = installed_packages(api)
        converge = pyinfra_run([INVENTORY, DEPLOY], "converge-4", log_dir)
        results["converge_4"] = converge["seconds"]
        print(f"  first converge: {converge['seconds']:.1f} s ({len(changed_operations(converge))} operations changed something on some host)", flush=True)
        after = installed_packages(api)
        plan = {
            host: {"packages": sorted(after[host] - before.get(host, set())), "uploads": converge["counts"].get(host, {}).get("uploads", 0)}
            for host in sorted(after)
        }
        floors: list[dict] = []
        results["noop_4"], noop4 = measure_noop("no-op-4", repeat, log_dir, not_idempotent, floors=floors)
        results["floor_4"] = statistics.median(r["seconds"] for r in floors)
        floor_run = measure_converge_floor(api, plan, log_dir)
        results["converge_floor_4"] = floor_run["seconds"]
        print(
            f"  first-converge floor: {floor_run['seconds']:.1f} s ("
            + ", ".join(f"{h} {p['uploads']} uploads + {len(p['packages'])} packages" for h, p in plan.items())
            + ")",
            flush=True,
        )

        print("\n8 nodes:")
        fresh_lab(api, 8)
        converge8 = pyinfra_run([INVENTORY, DEPLOY], "converge-8", log_dir)
        results["converge_8"] = converge8["seconds"]
        print(f"  first converge: {converge8['seconds']:.1f} s", flush=True)
        results["noop_8"], noop8 = measure_noop("no-op-8", repeat, log_dir, not_idempotent)
    finally:
        if not keep:
            try:
                timed("lab down", api.down)
            except Exception as e:  # noqa: BLE001 - report, the measurement error matters more
                print(f"  lab down failed: {e}", file=sys.stderr)

    print_counts("floor, 4 nodes", floors[0]["counts"])
    print_counts("no-op re-run, 4 nodes", noop4[0]["counts"], details=True)
    print_counts("no-op re-run, 8 nodes", noop8[0]["counts"])

    noop_ratio = results["noop_4"] / results["floor_4"]
    converge_ratio = results["converge_4"] / results["converge_floor_4"]
    scaling = results["noop_8"] / results["noop_4"]
    print("\nresults (median of %d runs where repeated)" % repeat)
    print(f"  connection floor (4 nodes)   {results['floor_4']:7.1f} s")
    print(f"  first converge (4 nodes)     {results['converge_4']:7.1f} s")
    print(f"  first-converge floor (4)     {results['converge_floor_4']:7.1f} s")
    print(f"  no-op re-run (4 nodes)       {results['noop_4']:7.1f} s")
    print(f"  first converge (8 nodes)     {results['converge_8']:7.1f} s")
    print(f"  no-op re-run (8 nodes)       {results['noop_8']:7.1f} s")
    ok_floor = noop_ratio <= NOOP_FLOOR_RATIO
    ok_scaling = scaling < SCALING_RATIO
    ok_converge = converge_ratio <= CONVERGE_FLOOR_RATIO
    print(f"  no-op / floor (4 nodes)      {noop_ratio:7.2f}x  target <= {NOOP_FLOOR_RATIO}x  {'PASS' if ok_floor else 'FAIL'}")
    print(f"  converge / its floor (4)     {converge_ratio:7.2f}x  target <= {CONVERGE_FLOOR_RATIO}x  {'PASS' if ok_converge else 'FAIL'}")
    print(f"  no-op 8 nodes / 4 nodes      {scaling:7.2f}x  target < {SCALING_RATIO}x   {'PASS' if ok_scaling else 'FAIL'}")
    if not_idempotent:
        print("\nNOT IDEMPOTENT (a re-run changed something; those runs are not in the timings):")
        for line in not_idempotent:
            print(f"  {line}")
        return 2
    return 0 if ok_floor and ok_scaling and ok_converge else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["count"]:
        # Internal: python -m bench.deploy count OUT.json -- <pyinfra arguments>
        if len(argv) < 3 or argv[2] != "--":
            print("usage: python -m bench.deploy count OUT.json -- <pyinfra arguments>", file=sys.stderr)
            return 2
        return _count_run(argv[1], argv[3:])
    parser = argparse.ArgumentParser(prog="python -m bench.deploy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per timed measurement (median used; default 3)")
    parser.add_argument("--keep", action="store_true", help="leave the (8-node) lab up at the end")
    args = parser.parse_args(argv)
    try:
        return bench(max(1, args.repeat), args.keep)
    except BenchError as e:
        print(f"\nbench.deploy: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
