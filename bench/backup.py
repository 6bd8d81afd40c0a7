"""
restic against duplicity on the same data, on a lab node (run as root from the repository root,
with the lab up: HOMECLOUD_LAB names the instance):

    .venv/bin/python -m bench.backup [--node node1] [--size-mb 1024]

On the node: installs restic, duplicity and GNU time from Debian (the versions Debian 12 ships),
generates `--size-mb` of mixed data in /root/bench-data (60 % photo-like incompressible files of
1-4 MB, 25 % text documents of 20-200 kB, 15 % many small files of 1-8 kB), then for each tool,
into a local repository on the node's root filesystem, with encryption on (restic's repository
password; duplicity's symmetric GnuPG passphrase), both read from the environment of the remote
shell only:

    first backup, unchanged re-backup, re-backup after changing 10 % of the files
    (half rewritten, half appended to), full restore into an empty folder

and prints wall seconds and peak RSS (`/usr/bin/time -v`) of each step, the repository size
after each backup and whether the restore is byte-identical (`diff -r`).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

from lab.api import Lab

GEN = r"""
import os, random, sys
root, size = sys.argv[1], int(sys.argv[2]) * 1024 * 1024
rnd = random.Random(13)
words = [''.join(rnd.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rnd.randint(2, 9))) for _ in range(3000)]
def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)
done, i = 0, 0
while done < size * 0.60:
    n = rnd.randint(1, 4) * 1024 * 1024
    write(f'{root}/photos/{i // 50:03}/IMG_{i:05}.jpg', os.urandom(n)); done += n; i += 1
while done < size * 0.85:
    n = rnd.randint(20, 200) * 1024
    text = ' '.join(rnd.choice(words) for _ in range(n // 5)).encode()[:n]
    write(f'{root}/documents/{i // 100:03}/doc_{i:05}.txt', text); done += len(text); i += 1
while done < size:
    n = rnd.randint(1, 8) * 1024
    write(f'{root}/small/{i // 500:03}/{i:06}.dat', os.urandom(n // 2) + b'x' * (n - n // 2)); done += n; i += 1
print(i)
"""

CHANGE = r"""
import os, random, sys
root = sys.argv[1]
rnd = random.Random(7)
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
picked = rnd.sample(files, len(files) // 10)
for k, path in enumerate(picked):
    size = os.path.getsize(path)
    if k % 2:
        with open(path, 'ab') as f:
            f.write(os.urandom(max(1024, size // 10)))
    else:
        with open(path, 'wb') as f:
            f.write(os.urandom(size))
print(len(picked))
"""

TOOLS = {
    "restic": {
        "init": "restic init -q --repo /root/bench-repo-restic",
        "backup": "restic backup -q --repo /root/bench-repo-restic /root/bench-data",
        "restore": "restic restore latest -q --repo /root/bench-repo-restic --target /root/bench-restore",
        "restored": "/root/bench-restore/root/bench-data",
        "repo": "/root/bench-repo-restic",
    },
    "duplicity": {
        "init": "true",
        # incremental after the first full; no volume upload to a remote: a file:// target.
        "backup": "duplicity --no-print-statistics --verbosity error /root/bench-data file:///root/bench-repo-duplicity",
        "restore": "duplicity restore --verbosity error file:///root/bench-repo-duplicity /root/bench-restore",
        "restored": "/root/bench-restore",
        "repo": "/root/bench-repo-duplicity",
    },
}


def timed(lab: Lab, node: str, cmd: str) -> tuple[float, int]:
    """Wall seconds and peak RSS (kB) of `cmd` on the node (GNU time -v)."""
    env = "export RESTIC_PASSWORD=bench-only PASSPHRASE=bench-only; "
    out = lab.run(node, env + f"/usr/bin/time -v sh -c {shlex.quote(cmd)} 2>&1 >/dev/null", timeout=7200).stdout
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", out)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    if not wall or not rss:
        raise RuntimeError(f"no /usr/bin/time output for {cmd}:\n{out}")
    hours, minutes, seconds = wall.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds), int(rss.group(1))


def size_mb(lab: Lab, node: str, path: str) -> float:
    return int(lab.run(node, f"du -sk {path} | cut -f1").stdout.split()[0]) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", default="node1")
    parser.add_argument("--size-mb", type=int, default=1024, help="data generated (default 1024)")
    args = parser.parse_args(argv)
    lab, node = Lab(), args.node
    lab.run(node, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q restic duplicity time python3 >/dev/null", timeout=900)
    versions = lab.run(node, "restic version | cut -d' ' -f1-2; duplicity --version").stdout.split("\n")
    rows = []
    for tool, cmd in TOOLS.items():
        lab.run(node, f"rm -rf /root/bench-data /root/bench-restore {cmd['repo']} /root/.cache/duplicity /root/.cache/restic")
        files = lab.run(node, f"python3 -c {shlex.quote(GEN)} /root/bench-data {args.size_mb}", timeout=3600).stdout.strip()
        data = size_mb(lab, node, "/root/bench-data")
        lab.run(node, "export RESTIC_PASSWORD=bench-only; " + cmd["init"])
        result = {"tool": tool, "files": files, "data": data}
        result["first"] = timed(lab, node, cmd["backup"])
        result["repo_first"] = size_mb(lab, node, cmd["repo"])
        result["unchanged"] = timed(lab, node, cmd["backup"])
        result["repo_unchanged"] = size_mb(lab, node, cmd["repo"])
        lab.run(node, f"python3 -c {shlex.quote(CHANGE)} /root/bench-data")
        result["changed"] = timed(lab, node, cmd["backup"])
        result["repo_changed"] = size_mb(lab, node, cmd["repo"])
        result["restore"] = timed(lab, node, cmd["restore"])
        same = lab.run(node, f"diff -r -q /root/bench-data {cmd['restored']} >/dev/null && echo identical || echo DIFFERENT").stdout.strip()
        result["identical"] = same
        rows.append(result)
        lab.run(node, f"rm -rf /root/bench-restore {cmd['repo']}")
    lab.run(node, "rm -rf /root/bench-data")

    print(f"node {node}: {' / '.join(v for v in versions if v)}; data {rows[0]['data']:.0f} MB, {rows[0]['files']} files")
    print(f"{'tool':10} {'first s':>8} {'same s':>7} {'10% s':>7} {'restore s':>9} {'repo MB':>8} {'+same MB':>8} {'+10% MB':>8} {'peak RSS MB':>11}  restore")
    for r in rows:
        peak = max(r[k][1] for k in ("first", "unchanged", "changed", "restore")) / 1024
        print(
            f"{r['tool']:10} {r['first'][0]:8.1f} {r['unchanged'][0]:7.1f} {r['changed'][0]:7.1f} {r['restore'][0]:9.1f} "
            f"{r['repo_first']:8.0f} {r['repo_unchanged'] - r['repo_first']:8.1f} {r['repo_changed'] - r['repo_unchanged']:8.0f} {peak:11.0f}  {r['identical']}"
        )
    return 0 if all(r["identical"] == "identical" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
