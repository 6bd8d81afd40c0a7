"""
The commands of ``system.write_file`` / ``replace_file`` run in a real shell on files in a
temporary folder (the fixtures pin their text; this proves what they do): a failing check
leaves the live file untouched and fails, backups are 0600 and never overwritten, a secret
candidate is never readable by others, the new file lands with its mode in one rename.
"""

import grp
import hashlib
import os
import pwd
import stat
import subprocess
from pathlib import Path
from unittest.mock import patch

import pytest
from pyinfra.api import FileUploadCommand, StringCommand
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from operations import system

USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def _run(commands, cwd: Path) -> tuple[int, str]:
    """Run the commands like pyinfra does (stop at the first failure); uploads are written
    into the destination the way ``cp`` does: an existing file keeps its mode."""
    for command in commands:
        if isinstance(command, FileUploadCommand):
            command.src.seek(0)
            with open(cwd / command.dest if not os.path.isabs(command.dest) else command.dest, "w") as f:
                f.write(command.src.read())
            continue
        raw = command.get_raw_value() if isinstance(command, StringCommand) else command
        done = subprocess.run(["sh", "-c", raw], cwd=cwd, capture_output=True, text=True)
        if done.returncode:
            return done.returncode, done.stderr
    return 0, ""


def _commands(generator_function, *args, timestamp="2612021200", **kwargs):
    state = FakeState()
    host = create_host(state, facts={})
    with ctx_state.use(state), ctx_host.use(host), patch(
        "pyinfra.operations.util.files.get_timestamp", lambda: timestamp
    ):
        return list(generator_function(*args, **kwargs))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def live(tmp_path):
    path = tmp_path / "app.conf"
    path.write_text("user's own line\n")
    path.chmod(0o644)
    return path


def test_a_failing_check_leaves_the_live_file_and_fails(live, tmp_path):
    commands = _commands(
        system.replace_file, str(live), "new\n", True, user=USER, group=GROUP, check="grep -q never {}", backup=True
    )
    rc, stderr = _run(commands, tmp_path)
    assert rc != 0
    assert f"homecloud: grep rejected the new {live}; {live} was not changed" in stderr
    assert live.read_text() == "user's own line\n"
    assert (tmp_path / "app.conf.homecloud-new").read_text() == "new\n"  # left to read
    assert not list(tmp_path.glob("app.conf.2*"))  # no backup before the check passed


def test_replace_keeps_every_backup_0600_and_sets_the_mode(live, tmp_path):
    for text in ("first\n", "second\n"):  # twice in the same minute
        commands = _commands(
            system.replace_file, str(live), text, True, mode="640", user=USER, group=GROUP, check="grep -q . {}", backup=True
        )
        assert _run(commands, tmp_path) == (0, "")
    assert live.read_text() == "second\n" and _mode(live) == 0o640
    backups = {p.name: p for p in tmp_path.glob("app.conf.2612021200*")}
    assert sorted(backups) == ["app.conf.2612021200", "app.conf.2612021200.~1~"]
    assert backups["app.conf.2612021200.~1~"].read_text() == "user's own line\n"  # the original
    assert backups["app.conf.2612021200"].read_text() == "first\n"
    assert all(_mode(p) == 0o600 for p in backups.values())
    assert not (tmp_path / "app.conf.homecloud-new").exists()


def test_a_secret_candidate_is_0600_before_it_holds_anything(tmp_path):
    dest = tmp_path / "sub" / "token"
    commands = _commands(system.replace_file, str(dest), "s3cret\n", False, mode="600", user=USER, group=GROUP, secret=True)
    upload = next(i for i, c in enumerate(commands) if isinstance(c, FileUploadCommand))
    # Everything up to the upload: the candidate exists empty with mode 0600 when bytes arrive.
    assert _run(commands[:upload], tmp_path) == (0, "")
    candidate = tmp_path / "sub" / "token.homecloud-new"
    assert candidate.read_text() == "" and _mode(candidate) == 0o600
    assert _run(commands[upload:], tmp_path) == (0, "")
    assert dest.read_text() == "s3cret\n" and _mode(dest) == 0o600


def test_write_file_only_fixes_mode_of_equal_content_and_never_backs_it_up(live, tmp_path):
    state = {"mode": "600", "user": USER, "group": GROUP, "sha1": hashlib.sha1(live.read_bytes()).hexdigest()}
    commands = _commands(system.write_file, str(live), live.read_text(), state, mode="644", user=USER, group=GROUP, backup=True)
    assert [c.get_raw_value() for c in commands] == [f"chmod 644 {live}"]
    state["mode"] = "644"
    assert _commands(system.write_file, str(live), live.read_text(), state, user=USER, group=GROUP, backup=True) == []


def test_restore_latest_backup_puts_back_the_newest(tmp_path):
    conf = tmp_path / "zram.conf"
    conf.write_text("homecloud's\n")
    (tmp_path / "zram.conf.2612011200").write_text("older\n")
    (tmp_path / "zram.conf.2612021200").write_text("newest\n")
    (tmp_path / "zram.conf.2612021200.~1~").write_text("same minute, older\n")
    assert _run([system.restore_latest_backup(str(conf))], tmp_path) == (0, "")
    assert conf.read_text() == "newest\n" and _mode(conf) == 0o644
    (tmp_path / "zram.conf.2612011200").unlink()
    conf.write_text("homecloud's\n")
    rc, _ = _run([system.restore_latest_backup(str(conf))], tmp_path)
    assert rc == 1 and conf.read_text() == "homecloud's\n"  # nothing to restore
