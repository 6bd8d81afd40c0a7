"""
Fixtures for the lab tier (tests/lab/test_*.py). Selected with the options of tests/conftest.py:

- ``--lab=local``: the nspawn lab of this host (instance $HOMECLOUD_LAB, else the first of `hc`,
  `hc2` ... that no other session holds and no other checkout owns: tests/conftest.py; root
  needed). Brought up when it is not (``$HOMECLOUD_LAB_NODES`` nodes, default 4) and taken down
  at the end only if this session brought it up (``HOMECLOUD_LAB_KEEP=1`` keeps it);
- ``--lab=vagrant``: lab/vagrant.py (``available()``, ``up()``, ``destroy()``) and
  inventories/vagrant.py;
- ``--inventory PATH``: a real, already deployed cluster: the checks run, nothing is deployed,
  destructive tests are skipped.

Fixtures:

- ``lab_mode``: "local", "vagrant" or "inventory" (skips the test when no lab is selected);
- ``lab_inventory``: path of the inventory file of the selected target;
- ``deployed``: runs ``pyinfra -y --json <inventory> deploys/all.py`` once per session
  (``$HOMECLOUD_TEST_DEPLOY`` names another deploy file, to develop one layer) and
  returns the parsed JSON (see lab/results.py: per operation ``success`` = hosts changed,
  ``no_change``, ``error``); fails every dependent test with pyinfra's report when the deploy
  fails. With --inventory: no deploy, ``{"results": None, "mode": "inventory"}``;
- ``pyinfra_run(deploy_file, *extra_args)``: run another deploy (path relative to the repository
  root) against the same inventory; parsed JSON plus ``returncode``/``stderr``;
- ``inventory_hosts``: the inventory's hosts as pyinfra loads them ([{"name", "groups", "data"}]);
- ``testinfra_hosts(group)``: testinfra hosts (SSH, built from the inventory's ssh data) of a
  group ("all" for every host);
- ``lab_api``: the `lab.api` module (local lab only; skips otherwise).

Marker ``destructive``: only on a lab (local or vagrant), never with --inventory. In this folder
the idempotence test runs first (right after the deploy) and destructive tests last.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import results as pyinfra_results

REPO_ROOT = Path(__file__).resolve().parents[2]
SKIP_REASON = "run with --lab=local (root, Debian) or --inventory"
HERE = Path(__file__).resolve().parent
# How long the end of the session waits for a still running arm64 job before taking its lab down.
FIRST_DEPLOY_GRACE = 60


def main_deploy() -> str:
    """The deploy the session deploys and re-runs: deploys/all.py ($HOMECLOUD_TEST_DEPLOY to try
    one layer while developing it)."""
    return os.environ.get("HOMECLOUD_TEST_DEPLOY", "deploys/all.py")


def _mode(config) -> str:
    if config.getoption("--inventory"):
        return "inventory"
    return config.getoption("--lab")


def pytest_collection_modifyitems(config, items):
    """Mark this folder's tests `lab`; among them run the idempotence test first (right after the
    deploy) and destructive tests last. Other tests keep their places."""

    def mine(item) -> bool:
        return HERE in Path(str(item.fspath)).resolve().parents

    def key(item) -> int:
        if "idempotence" in item.nodeid:
            return 0
        if Path(str(item.fspath)).name == "test_arm64.py":
            return 3  # waits for the arm64 job (tests/lab/arm64_job.py), which ran meanwhile
        return 2 if item.get_closest_marker("destructive") else 1

    positions = [i for i, item in enumerate(items) if mine(item)]
    ordered = sorted((items[i] for i in positions), key=key)
    for i, item in zip(positions, ordered):
        item.add_marker(pytest.mark.lab)
        items[i] = item


def pytest_collection_finish(session):
    """--lab=local with a test of test_arm64.py selected (after -k / deselection): start the
    arm64 job now, in the background, before the first test runs."""
    config = session.config
    if _mode(config) != "local" or os.geteuid() != 0 or config.option.collectonly or getattr(config, "_homecloud_arm64_job", None):
        return
    if not any(Path(str(item.fspath)).name == "test_arm64.py" for item in session.items):
        return
    from arm64_job import Arm64Job, mode

    if mode() != "job":
        return
    from lab import core

    job = Arm64Job(core.instance_name())
    job.start()
    config._homecloud_arm64_job = job


def pytest_sessionfinish(session, exitstatus):
    """The arm64 job's lab goes down with the session (HOMECLOUD_LAB_KEEP=1 keeps it)."""
    job = getattr(session.config, "_homecloud_arm64_job", None)
    if job is None or os.environ.get("HOMECLOUD_LAB_KEEP"):
        return
    job.wait(FIRST_DEPLOY_GRACE)
    job.down()


@pytest.fixture(scope="session")
def make_testinfra_host():
    """`testinfra_host` as a fixture (for hosts of another lab instance, e.g. the arm64 job's)."""
    return testinfra_host


@pytest.fixture(scope="session")
def arm64_job(request):
    """The arm64 job started with the session (tests/lab/arm64_job.py); skips when there is none."""
    from arm64_job import mode

    job = getattr(request.config, "_homecloud_arm64_job", None)
    if job is None:
        if mode() == "main-lab":
            pytest.skip("HOMECLOUD_LAB_ARM64=1: the main lab has the arm64 node (test_dnas_sync checks it)")
        if mode() == "off":
            pytest.skip("HOMECLOUD_LAB_ARM64=0: no arm64 node in this run")
        if _mode(request.config) == "local" and os.geteuid() == 0:
            pytest.fail("the arm64 job was not started (pytest_collection_finish in tests/lab/conftest.py)")
        pytest.skip("the arm64 job runs with --lab=local as root")
    return job


@pytest.fixture(autouse=True)
def _lab_gate(request):
    mode = _mode(request.config)
    if mode == "none":
        pytest.skip(SKIP_REASON)
    if request.node.get_closest_marker("destructive") and mode == "inventory":
        pytest.skip("destructive test: only on a lab (--lab=local or --lab=vagrant), never against --inventory")


@pytest.fixture(scope="session")
def lab_mode(request) -> str:
    mode = _mode(request.config)
    if mode == "none":
        pytest.skip(SKIP_REASON)
    if mode == "inventory" and request.config.getoption("--lab") != "none":
        pytest.fail("give either --lab or --inventory, not both")
    return mode


@pytest.fixture(scope="session")
def lab_inventory(request, lab_mode):
    keep = bool(os.environ.get("HOMECLOUD_LAB_KEEP"))
    if lab_mode == "inventory":
        path = Path(request.config.getoption("--inventory")).resolve()
        if not path.is_file():
            pytest.fail(f"--inventory {path}: no such file")
        yield path
        return
    if lab_mode == "local":
        if os.geteuid() != 0:
            pytest.skip("--lab=local needs root (network namespaces, mounts, loop devices)")
        from lab import api

        started = not api.is_up()
        # also restarts stopped nodes; HOMECLOUD_LAB_ARM64=1 adds an arm64 dnas node (qemu-user)
        api.up(nodes=int(os.environ.get("HOMECLOUD_LAB_NODES", "4")), arm64=os.environ.get("HOMECLOUD_LAB_ARM64") == "1")
        try:
            yield REPO_ROOT / "inventories" / "lab.py"
        finally:
            if started and not keep:
                api.down()
        return
    # vagrant
    try:
        from lab import vagrant
    except ImportError as e:
        pytest.skip(f"--lab=vagrant: lab/vagrant.py is not available ({e})")
    ok, reason = vagrant.available()
    if not ok:
        pytest.skip(f"--lab=vagrant: {reason}")
    vagrant.up()
    try:
        yield REPO_ROOT / "inventories" / "vagrant.py"
    finally:
        if not keep:
            vagrant.destroy()


def _run_timeout(lab_mode: str) -> float:
    """Seconds one pyinfra run may take: a first converge of the local lab takes 1-3 minutes, so
    a run still going after 20 is stuck (fail it, don't eat CI's time); VMs and real clusters
    download k3s and wait for nodes to be Ready, so they get an hour."""
    return 1200 if lab_mode == "local" else 3600


@pytest.fixture(scope="session")
def pyinfra_run(lab_mode, lab_inventory):
    """pyinfra_run("deploys/x.py", "--limit", "node1") -> parsed --json results."""

    def run(deploy_file, *extra_args, timeout: float | None = None):
        if lab_mode == "inventory" and "--dry" not in extra_args:
            pytest.skip("no deploy against a real cluster (--inventory): checks only")
        deploy = Path(deploy_file)
        if not deploy.is_absolute():
            deploy = REPO_ROOT / deploy
        return pyinfra_results.run_pyinfra(lab_inventory, deploy, *extra_args, timeout=timeout or _run_timeout(lab_mode))

    return run


@pytest.fixture(scope="session")
def deployed(lab_mode, lab_inventory):
    if lab_mode == "inventory":
        return {"results": None, "mode": "inventory", "returncode": 0}
    deploy = REPO_ROOT / main_deploy()
    result = pyinfra_results.run_pyinfra(lab_inventory, deploy, timeout=_run_timeout(lab_mode))
    if result["returncode"] != 0 or pyinfra_results.errors(result) or pyinfra_results.failed_hosts(result):
        pytest.fail(f"the deploy ({deploy}) failed:\n" + pyinfra_results.summary(result), pytrace=False)
    return result


@pytest.fixture(scope="session")
def main_deploy_file() -> str:
    """Path (relative to the repository root) of the deploy `deployed` ran."""
    return main_deploy()


@pytest.fixture(scope="session")
def inventory_hosts(lab_inventory):
    return pyinfra_results.inventory_hosts(lab_inventory)


def testinfra_host(host: dict):
    """A testinfra host (over SSH) for an inventory host as `inventory_hosts` gives it."""
    import testinfra

    data = host["data"]
    address = data.get("ssh_hostname") or host["name"]
    user = data.get("ssh_user") or "root"
    port = data.get("ssh_port") or 22
    extra = []
    if data.get("ssh_known_hosts_file"):
        extra += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}"]
    if str(data.get("ssh_strict_host_key_checking", "")).lower() in ("off", "no", "false"):
        extra += ["-o", "StrictHostKeyChecking=no"]
    kwargs = {"ssh_extra_args": " ".join(extra + ["-o", "LogLevel=ERROR"])}
    if data.get("ssh_key"):
        kwargs["ssh_identity_file"] = os.path.expanduser(data["ssh_key"])
    return testinfra.get_host(f"ssh://{user}@{address}:{port}", sudo=bool(data.get("_sudo")), **kwargs)


@pytest.fixture(scope="session")
def testinfra_hosts(inventory_hosts):
    cache: dict[str, list] = {}

    def hosts(group: str = "all"):
        if group not in cache:
            members = [h for h in inventory_hosts if group == "all" or group in h["groups"]]
            cache[group] = [testinfra_host(h) for h in members]
        return cache[group]

    return hosts


@pytest.fixture(scope="session")
def dnas_nodes(inventory_hosts, testinfra_hosts):
    """A function of a data key (e.g. "samba_enabled"): (HostSpec, testinfra host) of every dnas
    node that has it on, in inventory order; skips the test when none has."""
    from homecloud.model import HostSpec

    def select(flag: str):
        members = [h for h in inventory_hosts if "dnas" in h["groups"]]
        pairs = [
            (HostSpec(h["name"], tuple(h["groups"]), h["data"]), host)
            for h, host in zip(members, testinfra_hosts("dnas"))
            if h["data"].get(flag)
        ]
        if not pairs:
            pytest.skip(f"no dnas node has {flag}")
        return pairs

    return select


@pytest.fixture(scope="session")
def lab_api(lab_mode, lab_inventory):
    if lab_mode != "local":
        pytest.skip(f"needs the local lab's node API (--lab=local); running with {lab_mode}")
    from lab import api

    return api
