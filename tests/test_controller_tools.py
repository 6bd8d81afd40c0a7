"""
Every program the tests run on the controller is installed by scripts/setup (CI may run on a
fresh machine), or is a hypervisor-level program the code checks for and reports missing. See
tests/controller_tools.py; the same check runs on what a test session really started
(tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lab.util import REQUIRED_TOOLS
from tests import controller_tools as tools


def test_every_program_the_tests_run_is_installed_by_setup():
    found = tools.scan()
    # The scan sees the programs it must (so this test can fail): a few known ones.
    for program in ("modprobe", "smbclient", "nfs-cp", "debootstrap", "systemd-nspawn", "nft", "vagrant", "ssh"):
        assert program in found, f"the scan no longer finds {program}: {sorted(found)}"
    assert tools.problems(found) == []


def test_the_lab_tool_table_names_packages_setup_installs():
    packages = tools.setup_packages()
    missing = {tool: pkg for tool, pkg in REQUIRED_TOOLS.items() if pkg not in packages and not tools._on_every_debian(pkg)}
    assert missing == {}


SOURCE = '''
import shutil, subprocess
subprocess.run(["frobnicate", "-x"])
sh(["ip", "link"] + extra)
cmd = ("debootstrap", "--variant=minbase")
if shutil.which("nfs-cp"): pass
def base(): return ["ssh", "-i", key]
def names(): return ["node1", "node2"]
p = subprocess.Popen(argv, executable="/usr/bin/socat")
'''


def test_the_scan_finds_each_way_a_program_is_started():
    assert set(tools.scan_source(SOURCE)) == {"frobnicate", "ip", "debootstrap", "nfs-cp", "ssh", "socat"}


def test_a_program_setup_does_not_install_is_reported():
    # Not installed at all.
    [line] = tools.problems({"frobnicate-no-such-tool": {"tests/x.py:3"}})
    assert line.startswith("frobnicate-no-such-tool (run by tests/x.py:3) is not installed")
    # Installed, but from a package missing from setup's list (dpkg itself here: required, so
    # it only counts once it is taken out of the "on every Debian system" set).
    [line] = tools.problems({"smbclient": {"tests/y.py:1"}}, packages=set())
    assert "comes from the Debian package smbclient, which scripts/setup does not install" in line
    assert tools.problems({"smbclient": {"tests/y.py:1"}}) == []
    # Hypervisor-level programs are allowed to be missing, with their reason.
    assert tools.problems({"VBoxManage": {"lab/vagrant.py:1"}}, packages=set()) == []
    # The virtualenv's own programs come from pyproject.toml, not from setup.
    assert tools.problems({"pyinfra": {"tests/z.py:1"}}, packages=set()) == []


def test_setup_package_list_is_parsed():
    text = 'X=1\nPACKAGES=(a b  # comment c\n          d)\nOTHER=(e)\n'
    assert tools.setup_packages(text) == {"a", "b", "d"}


RECORD_IN_A_FRESH_PROCESS = """
import json, subprocess, sys
from tests import controller_tools
recorder = controller_tools.Recorder()
subprocess.run([sys.executable, "-c", "pass"], check=True)
subprocess.run("true --ignored", shell=True, check=True)
subprocess.run(["env", "true"], check=True)
print(json.dumps(sorted(recorder.programs)))
"""


def test_the_recorder_sees_programs_the_standard_library_starts():
    done = subprocess.run([sys.executable, "-c", RECORD_IN_A_FRESH_PROCESS], cwd=tools.REPO_ROOT,
                          capture_output=True, text=True, check=True)
    programs = set(json.loads(done.stdout))
    assert {"sh", "env"} <= programs and any(p.startswith("python") for p in programs), programs


def test_the_recorder_sees_programs_gevent_starts():
    """pyinfra's CLI module monkey-patches subprocess with gevent's, which raises no audit event."""
    import gevent.subprocess

    recorder = tools.Recorder()
    gevent.subprocess.Popen(["env", "true"]).wait()
    gevent.subprocess.run("printf x", shell=True, check=True, capture_output=True)
    assert "env" in recorder.programs and "printf" in recorder.programs


@pytest.mark.parametrize("program", sorted(tools.NOT_INSTALLABLE))
def test_not_installable_programs_are_checked_before_use(program):
    """The code that runs a hypervisor-level program probes for it first (shutil.which)."""
    places = tools.scan().get(program, set())
    assert places, f"{program} is listed as not installable but nothing runs it: remove it from NOT_INSTALLABLE"
    source = (tools.REPO_ROOT / "lab" / "vagrant.py").read_text()
    assert f'shutil.which("{program}")' in source


def test_a_session_that_ran_a_stray_program_fails(tmp_path):
    """The end-of-session check (tests/conftest.py) on a session that runs a program from no package."""
    (tmp_path / "bin").mkdir()
    stray = tmp_path / "bin" / "homecloud-stray-tool"
    stray.write_text("#!/bin/sh\nexit 0\n")
    stray.chmod(0o755)
    (tmp_path / "test_stray.py").write_text(
        "import subprocess\n\ndef test_runs_it():\n    subprocess.run(['homecloud-stray-tool'], check=True)\n"
    )
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--rootdir", str(tmp_path), str(tmp_path / "test_stray.py")],
        cwd=tools.REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert "1 passed" in done.stdout  # the test itself passed ...
    assert done.returncode == 1  # ... but the session fails, naming the program
    assert "homecloud-stray-tool (run by homecloud-stray-tool) is " in done.stdout
