import os
import stat

from homecloud.secrets import secret


def test_secret_is_generated_once_and_kept_private(tmp_path, monkeypatch):
    monkeypatch.delenv("HOMECLOUD_VRRP", raising=False)
    first = secret("vrrp", length=8, store="t", directory=tmp_path / "s")
    again = secret("vrrp", length=8, store="t", directory=tmp_path / "s")
    other = secret("samba_alice", store="t", directory=tmp_path / "s")
    assert first == again and len(first) == 8 and first.isalnum()
    assert other != first and len(other) == 32
    path = tmp_path / "s" / "t.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o700


def test_secret_from_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMECLOUD_VRRP", "fromenv1")
    assert secret("vrrp", store="t", directory=tmp_path) == "fromenv1"
    assert not (tmp_path / "t.json").exists()


def test_secret_facts_are_read_with_fact_output_off():
    """pyinfra -vvv prints every fact's output: the k3s token / admin kubeconfig facts are read
    with it off (also when such reads overlap, as parallel hosts do), and it comes back after."""
    from types import SimpleNamespace

    import pytest
    from pyinfra.context import ctx_state

    from operations import system

    fake_state = SimpleNamespace(print_fact_output=True)
    seen = []

    class Target:
        def get_fact(self, fact, nested=False, fail=False):
            seen.append(fake_state.print_fact_output)
            if nested:
                system.secret_fact(self, fact)
                seen.append(fake_state.print_fact_output)
            if fail:
                raise RuntimeError("connection lost")
            return "K10secret"

    with ctx_state.use(fake_state):
        assert system.secret_fact(Target(), object, nested=True) == "K10secret"
        assert fake_state.print_fact_output is True
        with pytest.raises(RuntimeError):
            system.secret_fact(Target(), object, fail=True)
    assert seen == [False, False, False, False]
    assert fake_state.print_fact_output is True


# --- The store: export / import / list / rotate --------------------------------------------------

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from homecloud import fingerprints as fp
from homecloud import secrets as store
from homecloud.model import InventoryError

PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def controller_a(tmp_path, monkeypatch):
    """A store folder with two stores, as a controller that deployed a cluster has it."""
    for name in ("KEEPALIVED_AUTH_PASS", "SAMBA_ALICE", "SAMBA_BOB", "K3S_TOKEN"):
        monkeypatch.delenv(f"HOMECLOUD_{name}", raising=False)
    folder = tmp_path / "a"
    values = {
        "keepalived_auth_pass": store.secret("keepalived_auth_pass", length=8, store="homecloud", directory=folder),
        "samba_alice": store.secret("samba_alice", length=16, store="homecloud", directory=folder),
        "samba_bob": store.secret("samba_bob", length=16, store="lab-hc", directory=folder),
    }
    return folder, values


def test_export_import_round_trip_and_no_plaintext(controller_a, tmp_path):
    folder, values = controller_a
    os.chmod(tmp_path, 0o755)
    export = tmp_path / "cluster.secrets"
    assert store.export_stores(folder, export, PASSPHRASE) == ["homecloud", "lab-hc"]
    assert stat.S_IMODE(os.stat(export).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o755, "the export's folder is not the store's: left as it is"
    raw = export.read_bytes()
    for name, value in values.items():
        assert value.encode() not in raw, f"{name} is readable in the export file"
        assert name.encode() not in raw, "even the names are encrypted"

    other = tmp_path / "b"
    assert store.import_stores(other, export, PASSPHRASE) == ["homecloud", "lab-hc"]
    for name in ("homecloud", "lab-hc"):
        assert store.load_store(other / f"{name}.json") == store.load_store(folder / f"{name}.json")
        assert stat.S_IMODE(os.stat(other / f"{name}.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(other).st_mode) == 0o700
    # A controller using the imported store gets the cluster's values, generates nothing.
    assert store.secret("samba_alice", length=16, store="homecloud", directory=other) == values["samba_alice"]
    assert all(o.source == "store" for o in store.origins(values["samba_alice"]) if o.store.startswith(str(other)))


def test_import_keeps_the_values_it_replaces(controller_a, tmp_path):
    folder, values = controller_a
    export = tmp_path / "cluster.secrets"
    store.export_stores(folder, export, PASSPHRASE, ["homecloud"])
    other = tmp_path / "b"
    generated = store.secret("samba_alice", length=16, store="homecloud", directory=other)
    store.import_stores(other, export, PASSPHRASE)
    assert store.load_store(other / "homecloud.json")[0]["samba_alice"] == values["samba_alice"]
    backups = list(other.glob("homecloud.json.*.bak"))
    assert len(backups) == 1 and json.loads(backups[0].read_text())["samba_alice"] == generated
    assert stat.S_IMODE(os.stat(backups[0]).st_mode) == 0o600


def run_cli(*args, env=None, folder=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HOMECLOUD_")}
    full_env.update(env or {})
    if folder is not None:
        full_env["HOMECLOUD_SECRETS_DIR"] = str(folder)
    return subprocess.run(
        [sys.executable, "-m", "homecloud.secrets", *args],
        capture_output=True, text=True, env=full_env, stdin=subprocess.DEVNULL, timeout=60,
    )


def test_cli_wrong_passphrase_fails_cleanly(controller_a, tmp_path):
    folder, values = controller_a
    export = tmp_path / "cluster.secrets"
    done = run_cli("export", str(export), env={store.PASSPHRASE_ENV: PASSPHRASE}, folder=folder)
    assert done.returncode == 0, done.stderr
    other = tmp_path / "b"
    wrong = run_cli("import", str(export), env={store.PASSPHRASE_ENV: "not the passphrase"}, folder=other)
    assert wrong.returncode == 1
    assert "wrong passphrase" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not other.exists() or not list(other.glob("*.json")), "nothing may be imported"
    # No passphrase and no terminal: a message, not a prompt that hangs.
    nopass = run_cli("import", str(export), folder=other)
    assert nopass.returncode == 1 and store.PASSPHRASE_ENV in nopass.stderr and "Traceback" not in nopass.stderr
    # Not an export at all.
    junk = tmp_path / "junk"
    junk.write_text("{}")
    bad = run_cli("import", str(junk), env={store.PASSPHRASE_ENV: PASSPHRASE}, folder=other)
    assert bad.returncode == 1 and "not a homecloud secrets export" in bad.stderr
    good = run_cli("import", str(export), env={store.PASSPHRASE_ENV: PASSPHRASE}, folder=other)
    assert good.returncode == 0, good.stderr
    assert store.load_store(other / "homecloud.json")[0]["samba_alice"] == values["samba_alice"]


def test_cli_list_shows_names_and_ages_never_values(controller_a):
    folder, values = controller_a
    listed = run_cli("list", folder=folder)
    assert listed.returncode == 0, listed.stderr
    for name, value in values.items():
        assert name in listed.stdout
        assert value not in listed.stdout + listed.stderr
    assert "< 1 hour" in listed.stdout


def test_cli_rotate_marks_one_name_with_a_new_value(controller_a):
    folder, values = controller_a
    rotated = run_cli("rotate", "samba_alice", folder=folder)
    assert rotated.returncode == 0, rotated.stderr
    assert values["samba_alice"] not in rotated.stdout + rotated.stderr
    new, meta = store.load_store(folder / "homecloud.json")
    assert new["samba_alice"] != values["samba_alice"] and len(new["samba_alice"]) == 16
    assert new["keepalived_auth_pass"] == values["keepalived_auth_pass"]
    assert list(meta["rotate"]) == ["samba_alice"]
    assert store.rotation_pending(folder / "homecloud.json", "samba_alice")
    assert not store.rotation_pending(folder / "homecloud.json", "keepalived_auth_pass")
    assert "rotation pending" in run_cli("list", folder=folder).stdout
    unknown = run_cli("rotate", "samba_carol", folder=folder)
    assert unknown.returncode == 1 and "no store holds" in unknown.stderr
    store.finish_rotation(folder / "homecloud.json", "samba_alice")
    assert not store.rotation_pending(folder / "homecloud.json", "samba_alice")


def test_store_folder_from_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HOMECLOUD_SAMBA_ALICE", raising=False)
    monkeypatch.setenv("HOMECLOUD_SECRETS_DIR", str(tmp_path / "elsewhere"))
    value = store.secret("samba_alice", store="lab-x")
    assert json.loads((tmp_path / "elsewhere" / "lab-x.json").read_text())["samba_alice"] == value
    assert store.Origin(str(tmp_path / "elsewhere" / "lab-x.json"), "samba_alice", "generated") in store.origins(value)


# --- Detection: no silent rotation ---------------------------------------------------------------

SALT = "00112233445566778899aabbccddeeff"
A = {"keepalived_auth_pass": "Vr8pass1", "samba_users.alice": "s3cretAlicePass1"}


def fact_for(values: dict, salt: str = SALT, present=None) -> dict:
    return {
        "file": {"mode": "600", "user": "root", "group": "root"},
        "salt": salt,
        "fingerprints": {k: fp.fingerprint(salt, k, v) for k, v in values.items()},
        "present": list(present if present is not None else values),
    }


FRESH = {"file": None, "salt": None, "fingerprints": {}, "present": []}


def origins_of(table: dict):
    """value -> origins, for values of a fake store `s.json`: table name -> (value, source)."""
    def lookup(value):
        return {store.Origin("s.json", name, source) for name, (v, source) in table.items() if v == value}
    return lookup


def never_pending(_store, _name):
    return False


def test_fingerprints_match():
    d = fp.evaluate({"node1": dict(A)}, {"node1": fact_for(A)}, origins_of({}), never_pending, "ff" * 16)
    assert d.problems == [] and d.rotations == {} and d.salts == {"node1": SALT}


def test_fingerprint_mismatch_stops():
    other = {**A, "samba_users.alice": "anotherValue1234"}
    d = fp.evaluate({"node1": other}, {"node1": fact_for(A)}, origins_of({"samba_alice": ("anotherValue1234", "store")}), never_pending, "ff" * 16)
    assert len(d.problems) == 1
    assert "node1: the Samba password of alice (samba_alice): this controller has another value" in d.problems[0]
    text = fp.format_problems(d)
    assert "does not hold the cluster's secrets" in text and "python -m homecloud.secrets import FILE" in text
    assert "anotherValue1234" not in text and "s3cretAlicePass1" not in text


def test_brand_new_cluster_gets_generated_secrets():
    table = {"keepalived_auth_pass": (A["keepalived_auth_pass"], "generated"), "samba_alice": (A["samba_users.alice"], "generated")}
    d = fp.evaluate({"node1": dict(A), "node2": dict(A)}, {"node1": FRESH, "node2": FRESH}, origins_of(table), never_pending, "ab" * 16)
    assert d.problems == []
    assert d.salts == {"node1": "ab" * 16, "node2": "ab" * 16}


def test_generated_value_for_a_secret_the_node_has_stops():
    """Fresh clone against a cluster deployed before fingerprints existed: no file, but the node
    has a keepalived password and the Samba user; generated values must not replace them."""
    table = {"keepalived_auth_pass": ("NewGen12", "generated"), "samba_alice": ("generatedAlice01", "generated")}
    values = {"keepalived_auth_pass": "NewGen12", "samba_users.alice": "generatedAlice01"}
    legacy = {**FRESH, "present": ["keepalived_auth_pass", "samba_users.alice"]}
    d = fp.evaluate({"node1": values}, {"node1": legacy}, origins_of(table), never_pending, "ab" * 16)
    assert len(d.problems) == 2 and all("generated a new value just now" in p for p in d.problems)
    assert d.generated == {("s.json", "keepalived_auth_pass"), ("s.json", "samba_alice")}
    # The same values taken from a store (not generated here) are the operator's: adopted.
    kept = {k: (v, "store") for k, (v, _) in table.items()}
    assert fp.evaluate({"node1": values}, {"node1": legacy}, origins_of(kept), never_pending, "ab" * 16).problems == []


def test_generated_value_against_fingerprints_stops():
    table = {"samba_alice": ("generatedAlice01", "generated")}
    d = fp.evaluate({"node1": {"samba_users.alice": "generatedAlice01"}}, {"node1": fact_for(A)}, origins_of(table), never_pending, "ab" * 16)
    assert len(d.problems) == 1 and "generated a new value just now" in d.problems[0]


def test_rotation_is_allowed_for_the_marked_name_only():
    new = {"keepalived_auth_pass": "Other999", "samba_users.alice": "rotatedAlice0001"}
    table = {"keepalived_auth_pass": ("Other999", "store"), "samba_alice": ("rotatedAlice0001", "store")}
    pending = lambda s, name: name == "samba_alice"  # noqa: E731
    hosts = {"node1": new, "node2": new}
    facts = {"node1": fact_for(A), "node2": fact_for(A)}
    d = fp.evaluate(hosts, facts, origins_of(table), pending, "ab" * 16)
    assert d.rotations == {"samba_users.alice": ["node1", "node2"]}
    assert len(d.problems) == 2 and all("keepalived" in p for p in d.problems)
    # With only alice's value changed, the run goes on and says who must update what.
    only_alice = {**A, "samba_users.alice": "rotatedAlice0001"}
    d = fp.evaluate({"node1": only_alice, "node2": only_alice}, facts, origins_of(table), pending, "ab" * 16)
    assert d.problems == [] and d.rotations == {"samba_users.alice": ["node1", "node2"]}
    assert d.finished == set()
    assert "update alice's devices" in fp.clients_to_update("samba_users.alice", ["node1", "node2"])


def test_rotation_finishes_when_every_node_has_the_new_value():
    rotated = {**A, "samba_users.alice": "rotatedAlice0001"}
    table = {"samba_alice": ("rotatedAlice0001", "store")}
    pending = lambda s, name: name == "samba_alice"  # noqa: E731
    done = {"node1": fact_for(rotated), "node2": fact_for(rotated)}
    d = fp.evaluate({"node1": rotated, "node2": rotated}, done, origins_of(table), pending, "ab" * 16)
    assert d.problems == [] and d.rotations == {} and d.finished == {("s.json", "samba_alice")}
    # Half done (node2 failed last time): the mark stays.
    half = {"node1": fact_for(rotated), "node2": fact_for(A)}
    d = fp.evaluate({"node1": rotated, "node2": rotated}, half, origins_of(table), pending, "ab" * 16)
    assert d.rotations == {"samba_users.alice": ["node2"]} and d.finished == set()
    # Hosts left out by --limit: not known to be done.
    d = fp.evaluate({"node1": rotated}, {"node1": fact_for(rotated)}, origins_of(table), pending, "ab" * 16, all_hosts_in_run=False)
    assert d.finished == set()


def test_keepalived_rotation_needs_every_peer_in_the_run():
    rotated = {**A, "keepalived_auth_pass": "Other999"}
    table = {"keepalived_auth_pass": ("Other999", "store")}
    pending = lambda s, name: name == "keepalived_auth_pass"  # noqa: E731
    d = fp.evaluate({"node1": rotated}, {"node1": fact_for(A)}, origins_of(table), pending, "ab" * 16, keepalived_members_missing=["node2", "node3"])
    assert len(d.problems) == 1 and "every keepalived peer in one run" in d.problems[0] and "node2, node3" in d.problems[0]
    d = fp.evaluate({"node1": rotated, "node2": rotated}, {"node1": fact_for(A), "node2": fact_for(A)}, origins_of(table), pending, "ab" * 16)
    assert d.problems == [] and d.rotations == {"keepalived_auth_pass": ["node1", "node2"]}


def test_k3s_token_is_never_rotated_by_a_deploy():
    d = fp.evaluate(
        {"server1": {"k3s_token": "K10new"}},
        {"server1": fact_for({"k3s_token": "K10old"})},
        origins_of({"k3s_token": ("K10new", "store")}),
        lambda s, name: True,
        "ab" * 16,
    )
    assert len(d.problems) == 1 and "k3s token rotate" in d.problems[0]


def test_node_secrets_follow_the_deploys():
    data = {
        "keepalived_enabled": True, "keepalived_group": "k3s_servers", "keepalived_auth_pass": "Vr8pass1",
        "k3s_install": "off", "k3s_token": "K10x",
        "samba_enabled": True, "samba_users": {"alice": "a" * 16, "bob": "b" * 16},
        "syncthing_enabled": True, "syncthing_gui_password": None,
    }
    assert fp.node_secrets(data, ["k3s_servers", "dnas"]) == {
        "keepalived_auth_pass": "Vr8pass1", "samba_users.alice": "a" * 16, "samba_users.bob": "b" * 16,
    }
    assert fp.node_secrets(data, ["k3s_agents"]) == {}
    assert fp.node_secrets({**data, "k3s_install": "download"}, ["k3s_agents"]) == {"k3s_token": "K10x"}
    assert fp.node_secrets({**data, "samba_enabled": False, "syncthing_gui_password": "g" * 20}, ["dnas"]) == {"syncthing_gui_password": "g" * 20}


def test_check_secrets_stops_the_deploy_before_any_change(monkeypatch, tmp_path):
    """The check a deploy runs first: once per state (every host's deploy file calls it), with one
    fact read per host, raising InventoryError on a silent rotation; values never in the message."""
    class FakeData(dict):
        pass

    hosts = [
        SimpleNamespace(name=n, groups=["all", "k3s_servers", "dnas"], data=FakeData({"keepalived_auth_pass": v, "samba_users": {}}))
        for n, v in (("node1", "Gener8d1"), ("node2", "Gener8d1"))
    ]
    inventory = type("Inventory", (), {"get_active_hosts": lambda self: hosts, "__iter__": lambda self: iter(hosts)})
    class FakeState(SimpleNamespace):
        """A stand-in State (homecloud.run keeps per-run records by weak reference to it)."""

        __hash__ = object.__hash__

    fake_state = FakeState(inventory=inventory())
    reads = []

    def fake_read(state, targets):
        reads.append([t.name for t in targets])
        return {"node1": fact_for({"keepalived_auth_pass": "Cluster1"}), "node2": FRESH}

    monkeypatch.setattr(fp, "_read_facts", fake_read)
    store._issue("Gener8d1", tmp_path / "s.json", "keepalived_auth_pass", "generated")
    with pytest.raises(InventoryError) as e:
        fp.check_secrets(fake_state)
    assert "node1: the keepalived (VRRP) password (keepalived_auth_pass)" in str(e.value)
    assert "node2" not in str(e.value) and "Gener8d1" not in str(e.value) and "Cluster1" not in str(e.value)
    with pytest.raises(InventoryError):
        fp.check_secrets(fake_state)  # the second host's deploy file: same answer, no new read
    assert reads == [["node1", "node2"]]
