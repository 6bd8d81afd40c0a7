"""The backup layer's plain functions: what is backed up, the units, the etcd snapshot keys."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml

from homecloud import k3s_config
from homecloud.layers import backup, k3s, settings_of

REPO = Path(__file__).resolve().parents[1]


def data(**extra):
    return {"backup_enabled": True, "backup_passphrase": "x" * 32, **extra}


def test_etcd_snapshot_keys_reach_config_yaml_for_the_pinned_version():
    config = settings_of("k3s", {})
    keys = k3s_config.etcd_snapshots(config.k3s_etcd_snapshot_schedule, config.k3s_etcd_snapshot_retention, config.k3s_etcd_snapshot_dir)
    text = k3s_config.render_config("server", config.k3s_version, "192.168.1.11", "pi1", cluster_init=True, extra=keys)
    written = yaml.safe_load(text)
    assert written["etcd-snapshot-schedule-cron"] == "0 */6 * * *"
    assert written["etcd-snapshot-retention"] == 12
    assert written["etcd-snapshot-dir"] == "/var/lib/rancher/k3s/server/db/snapshots"
    assert "etcd-snapshot-dir" in (REPO / "homecloud" / "layers" / "k3s.py").read_text()


def test_what_a_dnas_node_and_a_k3s_server_back_up():
    config = settings_of("backup", data())
    paths, excludes = backup.backed_up(config, is_dnas=True, is_k3s_server=True)
    assert "/srv/dnas" in paths and "/etc/samba" in paths
    assert "/var/lib/rancher/k3s/server/db/snapshots" in paths
    assert ".stversions" in excludes and "/srv/dnas/restored-*" in excludes
    agent_paths, _ = backup.backed_up(config, is_dnas=False, is_k3s_server=False)
    assert "/srv/dnas" not in agent_paths and "/var/lib/rancher/k3s/server/db/snapshots" not in agent_paths
    kept = settings_of("backup", data(backup_syncthing_versions=True))
    assert backup.backed_up(kept, True, False)[1] == ["/srv/dnas/restored-*"]


def test_units_never_overlap_and_catch_up():
    units = backup.units(settings_of("backup", data()))
    assert "Type=oneshot" in units["homecloud-backup.service"] and "flock -n" in units["homecloud-backup.service"]
    for timer in ("homecloud-backup.timer", "homecloud-backup-check.timer"):
        assert "Persistent=true" in units[timer] and "RandomizedDelaySec=1800" in units[timer]
    assert "homecloud-backup check" in units["homecloud-backup-check.service"]  # the wrapper adds --read-data-subset from config
    assert "TimeoutStartSec=" in units["homecloud-backup.service"]  # a hung run (full disk) fails the unit


def test_repositories_of_each_target_kind():
    config = settings_of("backup", data())
    sftp = backup.repository(config, "pi1", {"name": "pi3", "type": "sftp", "host": "pi3"}, "192.168.1.13")
    assert sftp["repo"] == "sftp:hcbackup@192.168.1.13:/pi1"
    assert "StrictHostKeyChecking=yes" in sftp["ssh"] and "BatchMode=yes" in sftp["ssh"]
    local = backup.repository(config, "pi1", {"name": "usb", "type": "local", "device": "LABEL=b"}, None)
    assert local["repo"] == "/run/homecloud-backup/usb/restic" and local["device"] == "LABEL=b"
    s3 = backup.repository(config, "pi1", {"name": "c", "type": "s3", "url": "s3:https://h/b"}, None)
    assert s3["repo"] == "s3:https://h/b" and s3["env_file"].endswith("s3.env")


def _wrapper():
    spec = importlib.util.spec_from_file_location("backup_run", REPO / "operations" / "backup_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wrapper_reads_restic_times_and_keeps_the_password_out_of_argv(tmp_path, monkeypatch):
    run = _wrapper()
    assert abs(run._parse_time("2026-12-03T07:15:14.610298247Z") - 1796282114.610298) < 1e-5
    assert abs(run._parse_time("2026-12-03T08:15:14.5+01:00") - 1796282114.5) < 1e-6
    seen = {}

    def fake_run(argv, env, **kwargs):
        seen["argv"], seen["env"] = argv, env
        return subprocess.CompletedProcess(argv, 0, stdout="", stderr="")

    monkeypatch.setattr(run.subprocess, "run", fake_run)
    monkeypatch.setenv("RESTIC_PASSWORD", "leak")
    config = {"password_file": "/etc/homecloud/backup/passphrase"}
    run.restic(config, {"type": "local", "repo": "/r"}, "snapshots")
    assert seen["env"]["RESTIC_PASSWORD_FILE"] == "/etc/homecloud/backup/passphrase"
    assert "RESTIC_PASSWORD" not in seen["env"] and not any("passphrase" in a for a in seen["argv"][1:] if a != "/r")


def test_wrapper_refuses_a_restore_into_a_folder_with_files(tmp_path, capsys):
    run = _wrapper()
    (tmp_path / "keep.txt").write_text("mine")
    config = {"targets": [{"name": "t", "type": "local", "repo": "/nonexistent"}], "node": "n"}
    try:
        run.cmd_restore(config, ["--to", str(tmp_path)])
    except run.Failed as e:
        assert "is not empty" in str(e)
    else:
        raise AssertionError("restore into a folder with files was not refused")
    assert (tmp_path / "keep.txt").read_text() == "mine"
