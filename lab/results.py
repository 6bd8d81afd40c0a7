"""
Running pyinfra from tests and reading its ``--json`` results.

`run_pyinfra(inventory, deploy, *args)` runs ``pyinfra -y --json INVENTORY DEPLOY ARGS...`` from
the repository root and returns the parsed JSON (``{"plan": [...], "results": {"operations":
[{"name", "success": [hosts changed], "no_change": [...], "error": [...]}, ...], "totals",
"failed_hosts"}}``) plus ``returncode`` and ``stderr`` (pyinfra's log). The helpers below read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class PyinfraRunError(RuntimeError):
    """pyinfra did not produce JSON results (e.g. the inventory or a deploy file failed to load)."""


def pyinfra_bin() -> str:
    candidate = Path(sys.executable).with_name("pyinfra")
    return str(candidate) if candidate.exists() else "pyinfra"


def run_pyinfra(inventory: str | os.PathLike, deploy: str | os.PathLike, *args: str,
                timeout: float = 3600, env: dict | None = None) -> dict:
    argv = [pyinfra_bin(), "-y", "--json", str(inventory), str(deploy), *map(str, args)]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    try:
        payload = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise PyinfraRunError(
            f"`{' '.join(argv)}` exited {proc.returncode} without JSON results:\n"
            f"{proc.stderr[-6000:]}\n{proc.stdout[-2000:]}"
        ) from None
    payload["returncode"] = proc.returncode
    payload["stderr"] = proc.stderr
    payload["argv"] = argv
    return payload


def operations(result: dict) -> list[dict]:
    return ((result or {}).get("results") or {}).get("operations") or []


def changed(result: dict) -> dict[str, list[str]]:
    """{host: [names of the operations that changed something on it]}, in run order."""
    out: dict[str, list[str]] = {}
    for op in operations(result):
        for host in op.get("success", []):
            out.setdefault(host, []).append(op["name"])
    return out


def errors(result: dict) -> dict[str, list[str]]:
    """{host: [names of the operations that failed on it]}."""
    out: dict[str, list[str]] = {}
    for op in operations(result):
        for host in op.get("error", []):
            out.setdefault(host, []).append(op["name"])
    return out


def failed_hosts(result: dict) -> list[str]:
    return sorted(((result or {}).get("results") or {}).get("failed_hosts") or [])


def summary(result: dict) -> str:
    """A readable report of a run: changed and failed operations per host, and pyinfra's log tail."""
    lines = [f"pyinfra exit code {result.get('returncode')}; failed hosts: {failed_hosts(result) or 'none'}"]
    for host, ops in sorted(changed(result).items()):
        lines.append(f"  {host}: changed: " + "; ".join(ops))
    for host, ops in sorted(errors(result).items()):
        lines.append(f"  {host}: FAILED: " + "; ".join(ops))
    reported = error_lines(result.get("stderr") or "")
    if reported:
        lines.append("--- what the failed operations reported\n" + "\n".join(reported))
    tail = (result.get("stderr") or "")[-4000:]
    if tail:
        lines.append("--- pyinfra log (tail)\n" + tail)
    return "\n".join(lines)


def _routine(message: str) -> bool:
    return message in ("Success", "No changes", "Skipped", "Connected") or message.startswith("Ready: ")


def error_lines(log: str, limit: int = 40) -> list[str]:
    """The lines of a pyinfra log a host reported other than Success / No changes, each after
    the operation it belongs to (the tail of a long log may not reach back to them)."""
    out: list[str] = []
    operation = None
    for line in log.splitlines():
        text = line.strip()
        if text.startswith("--> Starting operation:"):
            operation = text
        elif text.startswith("[") and "] " in text and not _routine(text.split("] ", 1)[1]):
            if operation:
                out.append(operation)
                operation = None
            out.append("    " + text)
    return out[-limit:]


def inventory_hosts(inventory: str | os.PathLike, env: dict | None = None) -> list[dict]:
    """The inventory's hosts as pyinfra loads them: [{"name", "groups", "data"}] (data merged)."""
    argv = [pyinfra_bin(), "--json", str(inventory), "debug-inventory"]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise PyinfraRunError(f"`{' '.join(argv)}` failed ({proc.returncode}):\n{proc.stderr[-4000:]}") from None
