"""
Test options for the whole suite.

    pytest                          # unit tier only; lab tests are skipped
    pytest --lab=local              # + the local nspawn lab (root, Debian host): brought up if
                                    #   needed, deployed once, checked, destructive tests included
    pytest --lab=vagrant            # + a Vagrant lab (lab/vagrant.py, inventories/vagrant.py)
    pytest --inventory inventories/home.py
                                    # post-deploy checks against a real cluster: no deploy, no
                                    #   destructive test; the cluster must be deployed already

The default of --lab can also come from $HOMECLOUD_TEST_LAB.

Every program the session starts on the controller is recorded; a program that scripts/setup
would not install on a fresh machine fails the session at its end (tests/controller_tools.py).
"""

import os

import pytest

from tests import controller_tools

LAB_MODES = ("none", "local", "vagrant")


def pytest_addoption(parser):
    group = parser.getgroup("homecloud")
    group.addoption(
        "--lab",
        choices=LAB_MODES,
        default=os.environ.get("HOMECLOUD_TEST_LAB", "none"),
        help="where the lab tests run: none (skip them, default), local (nspawn lab on this host, "
        "needs root), vagrant (Vagrant VMs)",
    )
    group.addoption(
        "--inventory",
        default=None,
        metavar="PATH",
        help="run the post-deploy checks against the real cluster of this inventory (no deploy, "
        "no destructive tests)",
    )


_recorder = None


def pytest_configure(config):
    global _recorder
    if _recorder is None:
        _recorder = controller_tools.Recorder()
    config.addinivalue_line(
        "markers",
        "destructive: crashes, powers off or cuts nodes; runs only on a lab (--lab=local/vagrant), "
        "never with --inventory",
    )
    _claim_local_lab(config)


def _claim_local_lab(config):
    """--lab=local: pick the lab instance this session uses and hold its session lock until the
    session ends (lab.core.claim_for_session): never one another session is using, nor one
    another checkout brought up (its nodes hold that checkout's secrets). The choice goes to
    $HOMECLOUD_LAB, which the lab API, the lab inventory and every pyinfra run read."""
    if config.getoption("--lab") != "local" or config.getoption("--inventory") or os.geteuid() != 0:
        return
    if getattr(config, "_homecloud_lab_lock", None) is not None:
        return
    from lab import core

    try:
        instance, fd, notes = core.claim_for_session(os.environ.get("HOMECLOUD_LAB"))
    except core.LabError as e:
        raise pytest.UsageError(str(e)) from None
    config._homecloud_lab_lock = fd
    os.environ["HOMECLOUD_LAB"] = instance
    if notes:
        import sys

        print(f"lab tier: using lab `{instance}`: " + "; ".join(notes), file=sys.stderr)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Fail the session when it ran a controller program that scripts/setup does not install."""
    if _recorder is None or not _recorder.programs:
        return
    problems = controller_tools.problems(dict(_recorder.programs))
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for line in ["", "programs this session ran that a fresh machine would lack (CI would fail there):", *problems]:
            if reporter:
                reporter.write_line(line, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
