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
