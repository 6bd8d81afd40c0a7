"""
No silent rotation of the cluster's secrets (issue #16), on the session's deployed lab:

- a second controller (the same repository with an empty store folder, through
  $HOMECLOUD_SECRETS_DIR) generates new secrets, and its deploy stops before any change with the
  message; a re-run from the original store then changes nothing (so nothing had changed);
- the store exported from the first controller and imported into the second: the second
  controller's deploy changes nothing;
- `rotate` of a Samba user's password: the next deploy sets it (and says which clients must be
  updated), the user logs in with the new password and not with the old one, the second
  controller (still holding the old value) is now the one stopped, and one more run from the
  first controller changes nothing and clears the rotation mark;
- `rotate` of the keepalived password: every peer gets it in the same run, and keepalived's
  journal shows that no backup took the VIP meanwhile (one VIP holder throughout).

Local lab only: it deploys from other stores (not against --inventory, where nothing is
deployed). Passphrases and passwords go through the environment and 0600 files, never argv.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest

from facts.keepalived import STATE_FILE
from homecloud import secrets as store
from homecloud.model import node_ip
from lab import results
from lab.results import PyinfraRunError
from tests.lab.test_samba import refused, smbclient

pytestmark = pytest.mark.skipif(shutil.which("smbclient") is None, reason="smbclient is not installed on the controller (apt-get install smbclient)")

REPO_ROOT = results.REPO_ROOT
PASSPHRASE = "lab passphrase for the secrets export test"
STOPPED = "this controller does not hold the cluster's secrets"
ROTATED_USER = "bob"


@pytest.fixture(scope="module")
def lab(deployed, lab_mode, lab_inventory, main_deploy_file):
    if lab_mode != "local":
        pytest.skip("deploys from a second secret store: local lab only (--lab=local)")
    from lab import core

    store_name = f"lab-{core.instance_name()}"
    folder_a = store.secrets_dir()
    assert (folder_a / f"{store_name}.json").exists(), f"the session's deploy did not use {folder_a / store_name}.json"
    return {"inventory": lab_inventory, "deploy": main_deploy_file, "store": store_name, "a": folder_a}


@pytest.fixture(scope="module")
def folder_b(tmp_path_factory):
    """The second controller's store folder: like the repository's .secrets/, but empty."""
    folder = tmp_path_factory.mktemp("controller-b") / ".secrets"
    folder.mkdir(mode=0o700)
    return folder


def deploy(lab, folder=None, *args) -> dict:
    """The whole deploy from the store in `folder` (None: the session's own store); a run that
    stops while pyinfra loads the deploy prints no JSON: its log is returned as stderr."""
    env = {"HOMECLOUD_SECRETS_DIR": str(folder)} if folder else {}
    try:
        return results.run_pyinfra(lab["inventory"], REPO_ROOT / lab["deploy"], *args, timeout=1200, env=env)
    except PyinfraRunError as e:
        return {"returncode": None, "stderr": str(e), "results": None}


def secrets_cli(*args, folder=None) -> subprocess.CompletedProcess:
    env = {**os.environ, store.PASSPHRASE_ENV: PASSPHRASE}
    if folder:
        env["HOMECLOUD_SECRETS_DIR"] = str(folder)
    return subprocess.run(
        [sys.executable, "-m", "homecloud.secrets", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
    )


def values(folder, lab) -> dict[str, str]:
    return store.load_store(folder / f"{lab['store']}.json")[0]


def test_a_second_controller_is_stopped_before_any_change(lab, folder_b):
    stopped = deploy(lab, folder_b)
    assert stopped["returncode"] != 0 and STOPPED in stopped["stderr"], stopped["stderr"][-3000:]
    assert "python -m homecloud.secrets import FILE" in stopped["stderr"]
    assert "Starting operation" not in stopped["stderr"], "an operation ran"
    generated = values(folder_b, lab)
    assert generated and all(generated[k] != v for k, v in values(lab["a"], lab).items())
    for name, value in generated.items():
        assert value not in stopped["stderr"], f"{name} shows in the output"

    again = deploy(lab)
    assert again["returncode"] == 0 and not results.errors(again), results.summary(again)
    assert results.changed(again) == {}, "the stopped run had changed something:\n" + results.summary(again)


def test_export_import_then_the_second_controller_changes_nothing(lab, folder_b, tmp_path):
    export = tmp_path / "cluster.secrets"
    exported = secrets_cli("export", str(export), "--store", lab["store"])
    assert exported.returncode == 0, exported.stderr
    assert stat.S_IMODE(os.stat(export).st_mode) == 0o600
    raw = export.read_text()
    for name, value in values(lab["a"], lab).items():
        assert value not in raw, f"{name} is readable in the export"

    imported = secrets_cli("import", str(export), folder=folder_b)
    assert imported.returncode == 0, imported.stderr
    assert values(folder_b, lab) == values(lab["a"], lab)

    from_b = deploy(lab, folder_b)
    assert from_b["returncode"] == 0 and not results.errors(from_b), results.summary(from_b)
    assert results.changed(from_b) == {}, "the second controller changed things:\n" + results.summary(from_b)


def login(spec, password) -> subprocess.CompletedProcess:
    share = next(s["name"] for s in spec.data["samba_shares"] if ROTATED_USER in (s.get("valid_users") or [ROTATED_USER]))
    return smbclient(node_ip(spec), share, "ls", ROTATED_USER, password)


def test_rotating_a_samba_password(lab, folder_b, dnas_nodes):
    nas = [spec for spec, _ in dnas_nodes("samba_enabled") if ROTATED_USER in (spec.data.get("samba_users") or {})]
    if not nas:
        pytest.skip(f"no dnas node has the Samba user {ROTATED_USER}")
    name = f"samba_{ROTATED_USER}"
    old = values(lab["a"], lab)[name]
    rotated = secrets_cli("rotate", name, "--store", lab["store"])
    assert rotated.returncode == 0, rotated.stderr
    new = values(lab["a"], lab)[name]
    assert new != old and store.rotation_pending(lab["a"] / f"{lab['store']}.json", name)

    run = deploy(lab)
    assert run["returncode"] == 0 and not results.errors(run), results.summary(run)
    assert f"Samba password of {ROTATED_USER} changed on" in run["stderr"] and f"update {ROTATED_USER}'s devices" in run["stderr"]
    changed_ops = {op for ops in results.changed(run).values() for op in ops}
    # Operation names carry their layers (dnas calls samba).
    assert changed_ops and changed_ops <= {f"dnas | samba | Samba user {ROTATED_USER}",
                                           "dnas | samba | Fingerprints of the Samba passwords (no secret stored)"}, changed_ops
    assert new not in run["stderr"] and old not in run["stderr"]
    for spec in nas:
        ok = login(spec, new)
        assert ok.returncode == 0, f"{spec.name}: {ROTATED_USER} cannot log in with the new password: {ok.stdout}{ok.stderr}"
        assert refused(login(spec, old)), f"{spec.name}: the old password of {ROTATED_USER} still works"

    # The second controller still has the old value: now it is the one stopped, for that name only.
    from_b = deploy(lab, folder_b)
    assert from_b["returncode"] != 0 and STOPPED in from_b["stderr"]
    assert f"({name})" in from_b["stderr"] and "keepalived" not in from_b["stderr"].split(STOPPED, 1)[1]

    final = deploy(lab)
    assert final["returncode"] == 0 and results.changed(final) == {}, results.summary(final)
    assert not store.rotation_pending(lab["a"] / f"{lab['store']}.json", name), "the rotation mark was not cleared"


def test_rotating_the_keepalived_password_keeps_one_vip_holder(lab, inventory_hosts, testinfra_hosts):
    """All peers get the new VRRP password in one parallel operation: no backup takes the VIP
    while the others still have the old password (keepalived's own journal says so)."""
    members = [h for h in inventory_hosts if h["data"].get("keepalived_enabled", True) and "k3s_servers" in h["groups"]]
    if len(members) < 2:
        pytest.skip("needs two keepalived peers")
    nodes = dict(zip([h["name"] for h in inventory_hosts if "k3s_servers" in h["groups"]], testinfra_hosts("k3s_servers")))
    before = {name: nodes[name].check_output(f"cat {STATE_FILE}").split()[0] for name in nodes}
    assert list(before.values()).count("MASTER") == 1, before
    since = nodes[next(iter(nodes))].check_output("date +%s")

    rotated = secrets_cli("rotate", "keepalived_auth_pass", "--store", lab["store"])
    assert rotated.returncode == 0, rotated.stderr
    run = deploy(lab)
    assert run["returncode"] == 0 and not results.errors(run), results.summary(run)
    assert "keepalived (VRRP) password changed on " + ", ".join(sorted(nodes)) in run["stderr"]

    for name, host in nodes.items():
        journal = host.check_output(f"journalctl -u keepalived.service --no-pager --since @{since}")
        assert "Reload complete" in journal, f"{name}: keepalived was not reloaded"
        if before[name] == "BACKUP":
            assert "Entering MASTER STATE" not in journal, f"{name} took the VIP during the rotation:\n{journal}"
        after = host.check_output(f"cat {STATE_FILE}").split()[0]
        assert after == before[name], f"{name}: {before[name]} -> {after}"

    final = deploy(lab)
    assert final["returncode"] == 0 and results.changed(final) == {}, results.summary(final)
    assert not store.rotation_pending(lab["a"] / f"{lab['store']}.json", "keepalived_auth_pass")
