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

    from operations import k3s

    fake_state = SimpleNamespace(print_fact_output=True)
    seen = []

    class Target:
        def get_fact(self, fact, nested=False, fail=False):
            seen.append(fake_state.print_fact_output)
            if nested:
                k3s._secret_fact(self, fact)
                seen.append(fake_state.print_fact_output)
            if fail:
                raise RuntimeError("connection lost")
            return "K10secret"

    with ctx_state.use(fake_state):
        assert k3s._secret_fact(Target(), object, nested=True) == "K10secret"
        assert fake_state.print_fact_output is True
        with pytest.raises(RuntimeError):
            k3s._secret_fact(Target(), object, fail=True)
    assert seen == [False, False, False, False]
    assert fake_state.print_fact_output is True


# --- The store: export / import / list / rotate --------------------------------------------------

import json
import subprocess
import sys

import pytest

from homecloud import secrets as store

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
    export = tmp_path / "cluster.secrets"
    assert store.export_stores(folder, export, PASSPHRASE) == ["homecloud", "lab-hc"]
    assert stat.S_IMODE(os.stat(export).st_mode) == 0o600
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

