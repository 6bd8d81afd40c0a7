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
