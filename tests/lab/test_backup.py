"""
Backups are restorable: node1 backs up (inventories/lab.py) over SFTP to node3 (a restricted,
chrooted account) and to its spare disk (LABEL=homecloud-spare, mounted for the run only).

    HOMECLOUD_LAB=bk pytest --lab=local -s tests/lab/test_backup.py

- the timer is scheduled; starting the service by hand backs up to both targets;
- delete, modify and corrupt files, restore: every file's sha256, owner and mode are the
  original's (from each target into a new folder; in place: deleted and corrupted files back,
  a file changed after the snapshot kept, nothing deleted);
- a second backup of unchanged data grows the repository by under 1 %;
- node3's sshd stopped: the run fails, the unit is failed with the reason in the journal, the
  BackupStatus fact keeps the last good backup; sshd back: the next run succeeds;
- the restore deploy refuses a folder holding other files, restores into a new one, and its
  second run changes nothing;
- "disk replaced": node1's data disk reformatted (data and Syncthing identity gone), deploy,
  restore (restore_node_replaced): the data is back, Syncthing has its old device ID and talks
  to node2 again, node2's data is untouched.

k3s's etcd snapshots cannot be taken here (no k3s): test_etcd_snapshots_are_backed_up runs on
the Vagrant lab / a real inventory only.
"""

from __future__ import annotations

import json

import pytest

from facts.backup import BackupStatus
from lab import results

NODE, TARGET_NODE = "node1", "node3"
WRAPPER = "/usr/local/lib/homecloud/homecloud-backup"
TREE = "/srv/dnas/photos/backup-test"  # not a Syncthing folder: owners/modes stay as set here
REPO_ON_TARGET = f"/srv/homecloud-backup/{NODE}"

# (path below TREE, owner, mode, size in kB)
FILES = [
    ("photos/a.jpg", "dnas", "644", 4096),
    ("photos/b.jpg", "dnas", "640", 8192),
    ("docs/letter.txt", "dnas", "600", 12),
    ("docs/report.txt", "root", "644", 200),
    ("private/key.txt", "root", "600", 1),
    ("bin/tool.sh", "dnas", "755", 2),
    ("many/f1.dat", "dnas", "644", 3),
    ("many/f2.dat", "nobody", "664", 5),
]


@pytest.fixture(scope="module")
def lab(deployed, lab_api):
    lab = lab_api.Lab()
    for node in (NODE, TARGET_NODE):
        lab.run(node, "true")
    return lab


def sh(lab, cmd: str, node: str = NODE, check: bool = True):
    return lab.run(node, cmd, check=check, timeout=600)


def manifest(lab, root: str) -> dict[str, tuple[str, str, str]]:
    """relative path -> (sha256, owner, mode) of every file below root."""
    out = sh(lab, f"cd {root} && find . -type f ! -name .homecloud-restore.json -printf '%P\\t%u\\t%m\\n' | sort").stdout
    sums = dict(line.split("  ", 1)[::-1] for line in sh(lab, f"cd {root} && find . -type f ! -name .homecloud-restore.json -printf '%P\\0' | sort -z | xargs -0 -r sha256sum").stdout.splitlines())
    result = {}
    for line in out.splitlines():
        path, owner, mode = line.split("\t")
        result[path] = (sums[path], owner, mode)
    return result


def status(lab) -> dict:
    fact = BackupStatus()
    return fact.process(sh(lab, fact.command()).stdout.splitlines())


def run_backup(lab, ok: bool = True) -> str:
    proc = sh(lab, "systemctl start homecloud-backup.service", check=False)
    state = sh(lab, "systemctl is-failed homecloud-backup.service", check=False).stdout.strip()
    journal = sh(lab, "journalctl -u homecloud-backup.service -n 40 --no-pager -o cat").stdout
    if ok:
        assert proc.returncode == 0 and state != "failed", journal
    return journal


@pytest.fixture(scope="module")
def original(lab):
    sh(lab, f"rm -rf {TREE} /srv/dnas/restored-*")
    for path, owner, mode, kb in FILES:
        full = f"{TREE}/{path}"
        sh(lab, f"mkdir -p $(dirname {full}) && head -c {kb * 1024} /dev/urandom > {full} && chown {owner} {full} && chmod {mode} {full}")
    # 8 MB more, so that 1 % of the repository is well above a snapshot's own metadata (the lab's
    # spare disk, a target, holds 55 MB).
    sh(lab, f"mkdir -p {TREE}/bulk && for i in 1 2 3 4 5 6 7 8; do head -c 1M /dev/urandom > {TREE}/bulk/$i.bin; done && chown -R dnas:dnas {TREE}/bulk")
    sh(lab, f"touch -d '2 hours ago' $(find {TREE} -type f)")
    before = manifest(lab, TREE)
    run_backup(lab)
    return before


def test_timer_is_scheduled_and_the_service_backs_up_to_both_targets(lab, original):
    timers = sh(lab, "systemctl list-timers --all --no-pager homecloud-backup.timer homecloud-backup-check.timer").stdout
    assert "homecloud-backup.timer" in timers and "homecloud-backup-check.timer" in timers, timers
    assert sh(lab, "systemctl show -p NextElapseUSecRealtime --value homecloud-backup.timer").stdout.strip() not in ("", "n/a")
    found = status(lab)
    assert found["timer"] == "active"
    for target in ("node3", "spare"):
        entry = found["targets"][target]
        assert entry["error"] == "" and entry["last_success"] >= entry["last_attempt"] and entry["bytes"] > 8 * 1024 * 1024, found
    # The passphrase is 0600 root, and on no command line of the run.
    assert sh(lab, "stat -c '%a %U' /etc/homecloud/backup/passphrase").stdout.split() == ["600", "root"]
    # The target account is confined: no shell, only SFTP in the chroot.
    forced = sh(lab, "sshd -T -C user=hcbackup,host=x,addr=10.0.0.1 | grep -Ei '^(forcecommand|chrootdirectory)'", node=TARGET_NODE).stdout
    assert "internal-sftp" in forced and "/srv/homecloud-backup" in forced, forced
    denied = sh(lab, f"ssh -i /etc/homecloud/backup/id_ed25519 -o UserKnownHostsFile=/etc/homecloud/backup/known_hosts -o BatchMode=yes hcbackup@{lab.node(TARGET_NODE)['ip']} id", check=False)
    assert "uid=" not in denied.stdout


def test_second_backup_of_unchanged_data_grows_the_repository_under_one_percent(lab, original):
    before = int(sh(lab, f"du -sb {REPO_ON_TARGET} | cut -f1", node=TARGET_NODE).stdout)
    run_backup(lab)
    after = int(sh(lab, f"du -sb {REPO_ON_TARGET} | cut -f1", node=TARGET_NODE).stdout)
    print(f"repository {before} -> {after} bytes (+{(after - before) / before:.3%})")
    assert after - before < before / 100


@pytest.mark.parametrize("target", ["node3", "spare"])
def test_restore_into_a_new_folder_gives_back_every_file(lab, original, target):
    sh(lab, f"rm -rf {TREE}/photos/a.jpg {TREE}/many")  # deleted
    sh(lab, f"echo changed >> {TREE}/docs/letter.txt")  # modified
    sh(lab, f"printf 'XXXX' | dd of={TREE}/photos/b.jpg bs=1 seek=100 conv=notrunc 2>/dev/null && touch -d '2 hours ago' {TREE}/photos/b.jpg")  # corrupted
    dest = f"/srv/dnas/restored-{target}"
    sh(lab, f"rm -rf {dest} && {WRAPPER} restore --target {target} --to {dest} --path {TREE}")
    assert manifest(lab, dest + TREE) == original
    # Restoring into a folder that holds files is refused.
    refused = sh(lab, f"{WRAPPER} restore --target {target} --to {dest}", check=False)
    assert refused.returncode != 0 and "not empty" in refused.stderr
    # The live tree back as it was, from the restored copy (owners, modes and times kept).
    sh(lab, f"rm -rf {TREE} && cp -a {dest}{TREE} {TREE} && rm -rf {dest}")
    assert manifest(lab, TREE) == original


def test_restore_in_place_keeps_newer_files_and_deletes_nothing(lab, original):
    sh(lab, f"rm -f {TREE}/photos/a.jpg && echo newer-work >> {TREE}/docs/report.txt && echo extra > {TREE}/docs/new.txt")
    sh(lab, f"printf 'XXXX' | dd of={TREE}/bin/tool.sh bs=1 seek=10 conv=notrunc 2>/dev/null && touch -d '2 hours ago' {TREE}/bin/tool.sh")
    report = sh(lab, f"sha256sum {TREE}/docs/report.txt").stdout.split()[0]
    out = sh(lab, f"{WRAPPER} restore --target node3 --in-place --path {TREE}").stderr
    assert "newer files kept" in out
    now = manifest(lab, TREE)
    assert now["photos/a.jpg"] == original["photos/a.jpg"]  # deleted: back
    assert now["bin/tool.sh"] == original["bin/tool.sh"]  # corrupted, not newer: back
    assert now["docs/report.txt"][0] == report  # changed after the snapshot: kept
    assert "docs/new.txt" in now  # not in the snapshot: not deleted
    sh(lab, f"rm -f {TREE}/docs/new.txt && {WRAPPER} restore --target node3 --to /tmp/r --path {TREE}/docs/report.txt && cp -p /tmp/r{TREE}/docs/report.txt {TREE}/docs/report.txt && rm -rf /tmp/r")
    assert manifest(lab, TREE) == original


def test_unreachable_target_fails_the_unit_and_keeps_the_last_good_backup(lab, original):
    good = status(lab)["targets"]["node3"]["last_success"]
    sh(lab, "systemctl stop ssh.service ssh.socket", node=TARGET_NODE, check=False)
    try:
        journal = run_backup(lab, ok=False)
        assert sh(lab, "systemctl is-failed homecloud-backup.service", check=False).stdout.strip() == "failed"
        assert "BACKUP FAILED: target node3" in journal, journal
        found = status(lab)
        assert found["service"] == "failed"
        assert found["targets"]["node3"]["last_success"] == good and found["targets"]["node3"]["error"]
        assert found["targets"]["spare"]["error"] == "" and found["targets"]["spare"]["last_success"] > good
    finally:
        lab.console(TARGET_NODE, "systemctl start ssh.service")
    run_backup(lab)
    found = status(lab)
    assert found["service"] != "failed" and found["targets"]["node3"]["last_success"] > good


def test_restore_deploy_never_overwrites_and_runs_once(lab, original, pyinfra_run):
    try:
        refused = pyinfra_run("deploys/restore.py", "--limit", NODE, "--data", "restore_to=/srv/dnas/photos")
        assert refused["returncode"] != 0 and results.errors(refused), results.summary(refused)
        message = refused["stderr"]
    except results.PyinfraRunError as e:  # pyinfra stops the run: no JSON results
        message = str(e)
    assert "homecloud never overwrites them" in message, message
    assert manifest(lab, TREE) == original
    args = ("--limit", NODE, "--data", f"restore_paths={TREE}", "--data", "restore_to=/srv/dnas/restored-deploy")
    first = pyinfra_run("deploys/restore.py", *args)
    assert first["returncode"] == 0 and not results.errors(first), results.summary(first)
    assert manifest(lab, "/srv/dnas/restored-deploy" + TREE) == original
    again = pyinfra_run("deploys/restore.py", *args)
    assert again["returncode"] == 0 and results.changed(again) == {}, results.summary(again)
    sh(lab, "rm -rf /srv/dnas/restored-deploy")


def _device_id(lab, node: str) -> str:
    return sh(lab, "runuser -u dnas -- syncthing --device-id --home=/srv/dnas/.config/syncthing", node=node).stdout.strip().splitlines()[-1]


def test_disk_replaced_restore_brings_back_data_and_syncthing_identity(lab, original, pyinfra_run):
    device = _device_id(lab, NODE)
    node2_before = sh(lab, "cd /srv/dnas/data && find . -type f ! -path './.stfolder*' -print0 | sort -z | xargs -0 -r sha256sum", node="node2").stdout
    data_before = manifest(lab, "/srv/dnas/data")
    run_backup(lab)
    snapshot = status(lab)["targets"]["node3"]["snapshot"]
    # The disk dies: a new, empty one with the same label.
    sh(lab, "systemctl stop syncthing@dnas smbd nfs-ganesha 2>/dev/null; umount /srv/dnas && mkfs.ext4 -q -F -L homecloud-data $(blkid -L homecloud-data)")
    deploy = pyinfra_run("deploys/all.py", "--limit", NODE)
    assert deploy["returncode"] == 0 and not results.errors(deploy), results.summary(deploy)
    assert _device_id(lab, NODE) != device  # a fresh identity until the restore
    # Quoted as JSON: pyinfra reads a --data value of digits as a number (a snapshot id like
    # 09464211 became 9464211 and the run was refused), any id quoted this way stays a string.
    restore = pyinfra_run("deploys/restore.py", "--limit", NODE, "--data", "restore_node_replaced=True", "--data", f'restore_snapshot="{snapshot}"')
    assert restore["returncode"] == 0 and not results.errors(restore), results.summary(restore)
    assert _device_id(lab, NODE) == device
    assert manifest(lab, TREE) == original
    restored = manifest(lab, "/srv/dnas/data")
    assert all(restored.get(path) == value for path, value in data_before.items() if not path.startswith(".stfolder")), (data_before, restored)
    # node2 talks to node1 again (same device ID), and its data was not touched.
    marker = f"after-restore-{snapshot}.txt"
    sh(lab, f"echo peered > /srv/dnas/data/{marker} && chown dnas:dnas /srv/dnas/data/{marker}", node="node2")
    sh(lab, f"for i in $(seq 90); do [ -f /srv/dnas/data/{marker} ] && exit 0; sleep 1; done; exit 1")
    node2_after = sh(lab, f"cd /srv/dnas/data && find . -type f ! -path './.stfolder*' ! -name {marker} -print0 | sort -z | xargs -0 -r sha256sum", node="node2").stdout
    assert node2_after == node2_before


def test_second_deploy_changes_nothing(lab, pyinfra_run):
    again = pyinfra_run("deploys/backup.py")
    assert again["returncode"] == 0 and results.changed(again) == {}, results.summary(again)


def test_etcd_snapshots_are_configured_and_backed_up(lab_mode, deployed, inventory_hosts, testinfra_hosts):
    """On a k3s server: config.yaml carries the snapshot schedule, retention and folder; a
    snapshot taken now lands there, and the next backup run holds it."""
    servers = [h for h in inventory_hosts if "k3s_servers" in h["groups"]]
    if lab_mode == "local" or not servers or servers[0]["data"].get("k3s_install") == "off":
        pytest.skip("k3s cannot run in the local lab (no writable cgroups, no /dev/kmsg): run with --lab=vagrant or --inventory")
    index = next((i for i, h in enumerate(servers) if h["data"].get("backup_enabled")), None)
    if index is None:
        pytest.skip("no k3s server has backup_enabled")
    data, t = servers[index]["data"], testinfra_hosts("k3s_servers")[index]
    folder = data.get("k3s_etcd_snapshot_dir", "/var/lib/rancher/k3s/server/db/snapshots")
    config = t.check_output("cat /etc/rancher/k3s/config.yaml")
    for key in ("etcd-snapshot-schedule-cron", "etcd-snapshot-retention", "etcd-snapshot-dir"):
        assert key in config, config
    name = "homecloud-test"
    t.check_output("k3s etcd-snapshot save --name %s", name)
    assert name in t.check_output("ls %s", folder)
    t.check_output("systemctl start homecloud-backup.service")
    repo_config = json.loads(t.check_output("cat /etc/homecloud/backup/config.json"))
    target = repo_config["targets"][0]
    env = "RESTIC_PASSWORD_FILE=/etc/homecloud/backup/passphrase"
    if target.get("ssh"):
        listing = t.check_output(env + " restic --repo %s -o %s ls latest %s", target["repo"], "sftp.command=" + " ".join(target["ssh"]), folder)
    else:
        listing = t.check_output(env + " restic --repo %s ls latest %s", target["repo"], folder)
    assert name in listing, listing
