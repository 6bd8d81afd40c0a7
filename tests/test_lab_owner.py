"""
Which lab instance a test session uses (lab.core.claim_for_session) and who a lab belongs to.

A CI run once reused a lab that another checkout's test session had brought up and was still
using: every deploy was refused ("this controller does not hold the cluster's secrets") and the
two sessions disturbed each other's nodes. These tests run the real locks and ownership files in
temporary folders; only "is the lab's bridge there" is simulated.
"""

from __future__ import annotations

import json
import os

import pytest

from lab import core


@pytest.fixture
def roots(tmp_path, monkeypatch):
    monkeypatch.setattr(core, "STATE_ROOT", tmp_path / "state")
    monkeypatch.setattr(core, "RUN_ROOT", tmp_path / "run")
    monkeypatch.setattr(core, "CHECKOUT", tmp_path / "checkout")
    bridges: set[str] = set()
    monkeypatch.setattr(core, "_link_exists", lambda name: name in bridges)
    opened: list[int] = []
    yield {"tmp": tmp_path, "bridges": bridges, "fds": opened}
    for fd in opened:
        os.close(fd)


def make_lab(roots, instance: str, owner: dict | None, up: bool = True) -> dict:
    state = {"instance": instance, "bridge": core.bridge_name(instance), "nodes": []}
    if owner is not None:
        state["owner"] = owner
    core.state_dir(instance).mkdir(parents=True)
    core.save_state(state)
    if up:
        roots["bridges"].add(state["bridge"])
    return state


def claim(roots, explicit=None):
    instance, fd, notes = core.claim_for_session(explicit)
    roots["fds"].append(fd)
    return instance, notes


def test_no_lab_yet_the_session_takes_hc(roots):
    assert claim(roots) == ("hc", [])


def test_a_lab_another_session_uses_is_passed_over(roots):
    assert claim(roots)[0] == "hc"
    instance, notes = claim(roots)
    assert instance == "hc2"
    assert notes == [f"lab `hc` is in use by test session pid {os.getpid()} from {core.CHECKOUT}"]


def test_the_session_lock_goes_with_the_session(roots):
    instance, fd, _ = core.claim_for_session(None)
    os.close(fd)  # what the kernel does when the session's process ends, however it ends
    assert claim(roots) == ("hc", [])


def test_a_lab_up_for_another_checkout_is_passed_over(roots):
    make_lab(roots, "hc", {"checkout": "/srv/other", "token": "f" * 32})
    instance, notes = claim(roots)
    assert instance == "hc2"
    assert notes[0].startswith("lab `hc` is up and was brought up by checkout /srv/other: its nodes hold")
    assert "`HOMECLOUD_LAB=hc python -m lab down` removes it" in notes[0]


def test_a_lab_from_an_earlier_clone_at_the_same_path_is_not_ours(roots):
    make_lab(roots, "hc", {"checkout": str(core.CHECKOUT), "token": "a" * 32})
    instance, notes = claim(roots)
    assert instance == "hc2"
    assert "another clone at this path" in notes[0]


def test_a_lab_this_checkout_brought_up_is_used(roots):
    state = make_lab(roots, "hc", None)
    core._record_owner(state)
    core.save_state(state)
    assert core.owned_here(core.load_state("hc"))
    assert claim(roots) == ("hc", [])


def test_a_foreign_lab_that_is_down_is_no_obstacle(roots):
    make_lab(roots, "hc", {"checkout": "/srv/other", "token": "f" * 32}, up=False)
    assert claim(roots) == ("hc", [])


def test_an_explicit_instance_is_refused_with_the_reason_and_the_fix(roots):
    make_lab(roots, "bk", {"checkout": "/srv/other", "token": "f" * 32})
    with pytest.raises(core.LabError) as e:
        claim(roots, "bk")
    message = str(e.value)
    assert "lab `bk` is up and was brought up by checkout /srv/other" in message
    assert message.endswith("Fix: wait for it, or set HOMECLOUD_LAB to another name")


def test_all_default_names_taken_is_an_error_not_a_wait(roots):
    for name in core.SESSION_NAMES:
        make_lab(roots, name, {"checkout": "/srv/other", "token": "f" * 32})
    with pytest.raises(core.LabError, match="no lab instance for this test session: .*Fix: remove the labs"):
        claim(roots)


def test_up_refuses_a_lab_of_another_checkout_before_touching_it(roots, monkeypatch):
    for quiet in ("require_root", "check_tools", "_ensure_inotify_instances"):
        monkeypatch.setattr(core, quiet, lambda: None)
    make_lab(roots, "hc", {"checkout": "/srv/other", "token": "f" * 32})
    before = core.state_path("hc").read_text()
    with pytest.raises(core.LabError, match=r"Fix: deploy and test from that checkout, or `HOMECLOUD_LAB=hc python -m lab down` first"):
        core.up("hc")
    assert core.state_path("hc").read_text() == before
    assert json.loads(before)["owner"]["checkout"] == "/srv/other"
