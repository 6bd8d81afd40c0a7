"""
Which programs the test suite runs on the controller, and whether `scripts/setup` installs them.

CI runs on a fresh machine: a program that a test runs but setup does not install makes CI green
for whoever installed it by hand and red for everyone else. Two views of "what the tests run":

- ``scan()``: read from the code (tests, the lab, homecloud, inventories): argv lists with a literal
  program name passed to subprocess/`sh`-style runners or assigned as ``cmd``/``argv``, returned
  as a command line, and ``shutil.which("name")`` probes;
- ``Recorder``: an audit hook that records every program the pytest process really starts
  (helpers such as ``nfs("nfs-cat", ...)`` or testinfra's ``ssh`` included); tests/conftest.py
  checks it at the end of every session.

``problems(commands)`` names each program that is neither installed from a package in setup's
list, nor part of every Debian system (Essential or Priority: required), nor in the project's
virtualenv, nor one of ``NOT_INSTALLABLE`` (hypervisor-level things no setup can provide; code
that uses them checks for them and says so).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP = REPO_ROOT / "scripts" / "setup"
SCANNED = ("tests", "lab", "homecloud", "inventories")  # bench/ is not run by the tests
RUNNERS = {"run", "Popen", "check_output", "check_call", "call", "sh", "_run", "_sh"}
ARGV_NAMES = {"cmd", "argv", "command", "args"}
PROGRAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")

# Programs no setup can install here, each with the reason and what the code does without it.
NOT_INSTALLABLE = {
    "VBoxManage": "VirtualBox is a hypervisor (no VMs on this kind of machine): lab.vagrant.provider() "
                  "reports it missing; the Vagrantfile tests use a stand-in VBoxManage",
    "prlctl": "Parallels exists only on macOS: lab.vagrant.provider() reports it missing",
    "virsh": "libvirt is installed only with a hypervisor: lab.vagrant.provider() reports it missing; the "
             "vagrant-libvirt plugin that `vagrant validate` needs is installed by setup",
}


def setup_packages(text: str | None = None) -> set[str]:
    """The Debian packages in the PACKAGES=( ... ) list of scripts/setup."""
    text = SETUP.read_text(encoding="utf-8") if text is None else text
    found = re.search(r"^PACKAGES=\((.*?)\)", text, re.S | re.M)
    if not found:
        raise AssertionError(f"{SETUP}: no PACKAGES=( ... ) list")
    return set(re.sub(r"#[^\n]*", "", found.group(1)).split())


# --- what the code runs ---------------------------------------------------------------------


def _argv0(node: ast.AST) -> str | None:
    """The literal program of an argv display: ["prog", ...], ("prog", ...), ["prog", ...] + x."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _argv0(node.left)
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        first = node.elts[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str) and PROGRAM.fullmatch(first.value):
            return first.value
    return None


def scan_source(text: str, where: str = "<source>") -> dict[str, set[str]]:
    """{program: {"file:line", ...}} for one Python source (see the module docstring)."""
    found: dict[str, set[str]] = {}

    def add(program: str | None, node: ast.AST) -> None:
        if program:
            found.setdefault(program, set()).add(f"{where}:{node.lineno}")

    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "which" and node.args and isinstance(node.args[0], ast.Constant):
                add(str(node.args[0].value), node)
            elif name in RUNNERS and node.args:
                add(_argv0(node.args[0]), node)
            for kw in node.keywords:
                if kw.arg == "executable" and isinstance(kw.value, ast.Constant):
                    add(os.path.basename(str(kw.value.value)), node)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in ARGV_NAMES for t in node.targets):
            add(_argv0(node.value), node)
        elif isinstance(node, ast.Return) and node.value is not None:
            program = _argv0(node.value)
            # A returned list is a command line only when it looks like one (options follow).
            if program and isinstance(node.value, (ast.List, ast.Tuple)) and any(
                isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value.startswith("-")
                for e in node.value.elts[1:]
            ):
                add(program, node)
    return found


def scan(root: Path = REPO_ROOT) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for folder in SCANNED:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root)
            if rel.parts[:2] in (("tests", "operations"), ("tests", "facts")):
                continue
            for program, places in scan_source(path.read_text(encoding="utf-8"), str(rel)).items():
                found.setdefault(program, set()).update(places)
    return found


class Recorder:
    """
    Records the programs this process starts: the standard library's ``subprocess.Popen``
    through its audit event (audit hooks cannot be removed), and gevent's ``Popen``, which
    replaces it once pyinfra's CLI module is imported (gevent's monkey patching) and raises no
    audit event, by wrapping its constructor.
    """

    def __init__(self) -> None:
        self.programs: dict[str, str] = {}  # name -> how it was started
        sys.addaudithook(self._hook)
        try:
            import gevent.subprocess as gevent_subprocess
        except ImportError:
            return
        original = gevent_subprocess.Popen.__init__
        record = self._record

        def recording_init(popen, args, *more, **kwargs):
            record(kwargs.get("executable"), args)
            return original(popen, args, *more, **kwargs)

        gevent_subprocess.Popen.__init__ = recording_init

    def _hook(self, event: str, args: tuple) -> None:
        if event == "subprocess.Popen":
            self._record(args[0], args[1])

    def _record(self, executable, argv) -> None:
        if isinstance(argv, (str, bytes, os.PathLike)):
            argv = os.fsdecode(argv).split()  # a shell string or a bare program
        argv = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in argv or []]
        program = os.fsdecode(executable) if executable else (argv[0] if argv else None)
        if program:
            self.programs.setdefault(os.path.basename(program), " ".join(argv)[:200])


# --- where a program comes from ---------------------------------------------------------------


@lru_cache(maxsize=None)
def _package_of(path: str) -> str | None:
    candidates = {path, os.path.realpath(path)}
    for p in list(candidates):  # usr-merged systems list files under /bin or /usr/bin
        if p.startswith("/usr/"):
            candidates.add(p[len("/usr"):])
        elif p.startswith(("/bin/", "/sbin/")):
            candidates.add("/usr" + p)
    for candidate in sorted(candidates):
        done = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        if done.returncode == 0 and ":" in done.stdout:
            return done.stdout.split(":")[0].split(",")[0].strip()
    return None


@lru_cache(maxsize=None)
def _on_every_debian(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Essential} ${Priority}", package], capture_output=True, text=True)
    return done.returncode == 0 and (done.stdout.startswith("yes") or done.stdout.split()[-1:] == ["required"])


def _in_venv(path: str) -> bool:
    return Path(path).resolve().is_relative_to(Path(sys.prefix).resolve()) or Path(path).parent == Path(sys.executable).parent


def problems(programs: dict[str, object], packages: set[str] | None = None) -> list[str]:
    """One line per program the tests run that setup would not give a fresh machine."""
    packages = setup_packages() if packages is None else packages
    out = []
    for program in sorted(programs):
        where = programs[program]
        where = ", ".join(sorted(where)[:3]) if isinstance(where, (set, list)) else str(where)
        if program in NOT_INSTALLABLE or (Path(sys.executable).parent / program).exists():
            continue  # hypervisor-level, or the virtualenv's own (pyproject.toml installs it)
        path = shutil.which(program)
        if path is None:
            if os.path.isabs(program) or "/" in program:
                continue
            out.append(f"{program} (run by {where}) is not installed: add its Debian package to PACKAGES in scripts/setup")
            continue
        if _in_venv(path):
            continue
        package = _package_of(path)
        if package is None:
            out.append(f"{program} (run by {where}) is {path}, which no Debian package installed: install it from a "
                       f"package in scripts/setup, or add it to NOT_INSTALLABLE in tests/controller_tools.py with the reason")
        elif package not in packages and not _on_every_debian(package):
            out.append(f"{program} (run by {where}) comes from the Debian package {package}, which scripts/setup does "
                       f"not install: add {package} to PACKAGES in scripts/setup")
    return out
