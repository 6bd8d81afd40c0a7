"""
Layer 5, backups: restic, encrypted, on a systemd timer, to one or more targets per node (SFTP to
another node or an off-site box, a local/USB disk mounted for the run, S3-compatible storage),
with retention after each run, a weekly integrity check reading a sample of the data, and a
status file the BackupStatus fact (and node-exporter) read. Restores: deploys/restore.py.
"""

from __future__ import annotations

import json
import re
from posixpath import normpath

from pyinfra.api import HiddenValue, deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from homecloud.cluster import address
from homecloud.schema import DEVICE_SPEC_RE, GROUPS, Cluster, Entries, Key, Kind, Layer, Section, check_entries, count, did_you_mean, flag, is_secret_bad
from operations import backup as backup_ops, secrets as secrets_ops, system

TARGETS = Entries(
    "target",
    "name",
    {
        "name": Kind(required=True),
        "type": Kind(required=True, choices=("sftp", "local", "s3")),
        "host": Kind(),  # sftp: an inventory host name, or an address (then host_key is required)
        "host_key": Kind(),  # sftp to a box outside the inventory: "ssh-ed25519 AAAA..."
        "user": Kind(),  # sftp: the account (default backup_sftp_user)
        "path": Kind(),  # sftp: folder in the chroot (default the node's name); local: folder on the disk
        "device": Kind(),  # local: LABEL=... / UUID=... (mounted for the run only)
        "fstype": Kind(),  # local: default ext4
        "url": Kind(),  # s3: s3:https://host/bucket/prefix
    },
    '{"name": "offsite", "type": "sftp", "host": "pi3"}',
)
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
SCHEDULE_RE = re.compile(r"[A-Za-z0-9*,.:/~ -]+")
SUBSET_RE = re.compile(r"\d{1,2}(\.\d+)?%|\d+/\d+")
# Syncthing's own versions and temporary files: not backed up unless backup_syncthing_versions.
SYNCTHING_TEMP = (".stversions", ".syncthing.*.tmp", "~syncthing~*.tmp")
STATUS_TEXTFILE = "/var/lib/prometheus/node-exporter/homecloud_backup.prom"


def _targets(spec) -> list[dict]:
    value = spec.data.get("backup_targets")
    return [t for t in value if isinstance(t, dict)] if isinstance(value, list) else []


def check(err, cluster: Cluster) -> None:
    names = {s.name for s in cluster.specs}
    addresses = {s.name: s.data.get("node_ip") or s.data.get("ssh_hostname") for s in cluster.specs}
    for spec in cluster.specs:
        data = spec.data
        if not data.get("backup_enabled"):
            continue
        targets = check_entries(err, spec.name, "backup_targets", data.get("backup_targets"), TARGETS)
        if not targets:
            err(spec.name, "backup_targets", "backup_enabled is True but no target is given", 'add one, e.g. [{"name": "pi3", "type": "sftp", "host": "pi3"}]')
        passphrase = data.get("backup_passphrase")
        if passphrase is None or isinstance(passphrase, str):
            if is_secret_bad(passphrase) or len(passphrase or "") < 16:
                err(spec.name, "backup_passphrase", "missing, too short or an example value", "set it from the secret store: secret('backup_passphrase', length=32) (and keep a copy elsewhere)")
        for key in ("backup_keep_daily",):
            if data.get(key) == 0:
                err(spec.name, key, "0 keeps no daily snapshot: every run would forget the backup it just made", "keep at least 1 (default 7)")
        for key in ("backup_schedule", "backup_check_schedule"):
            value = data.get(key)
            if isinstance(value, str) and not SCHEDULE_RE.fullmatch(value):
                err(spec.name, key, f"`{value}` is not a systemd OnCalendar expression", "write it like `*-*-* 02:30:00` or `Sun *-*-* 04:00:00`")
        subset = data.get("backup_check_subset")
        if isinstance(subset, str) and not SUBSET_RE.fullmatch(subset):
            err(spec.name, "backup_check_subset", f"`{subset}` is not a restic data subset", "write a percentage such as 5% or a part such as 1/7")
        wanted = data.get("restore_target")
        target_names = [t["name"] for t in targets]
        if isinstance(wanted, str) and target_names and wanted not in target_names:
            err(spec.name, "restore_target", f"`{wanted}` is not one of backup_targets", did_you_mean(wanted, target_names, f"use one of {', '.join(target_names)}"))
        seen = set()
        for target in targets:
            name, kind = target["name"], target["type"]
            where = f"target `{name}`"
            if not NAME_RE.fullmatch(name) or name in seen:
                err(spec.name, "backup_targets", f"{where}: the name is invalid or used twice", "use a unique lower-case name (letters, digits, _ -)")
            seen.add(name)
            if kind == "sftp":
                other = target.get("host")
                if not other:
                    err(spec.name, "backup_targets", f"{where}: sftp without a host", "give host: an inventory host name or an address")
                elif other == spec.name or other in (spec.data.get("node_ip"), spec.data.get("ssh_hostname")):
                    err(spec.name, "backup_targets", f"{where}: the SFTP target is this node itself", "back up to another node or an off-site box")
                elif other not in names:
                    if not target.get("host_key"):
                        fix = did_you_mean(other, sorted(names), "for a box outside the inventory give host_key (its /etc/ssh/ssh_host_ed25519_key.pub)")
                        err(spec.name, "backup_targets", f"{where}: host `{other}` is not in the inventory and has no host_key", fix)
                    elif other in addresses.values():
                        pass
            elif kind == "local":
                device = target.get("device")
                if not device:
                    err(spec.name, "backup_targets", f"{where}: a local target without a device is on the same disk as the data", "give device = 'LABEL=...' of a disk of its own")
                elif not DEVICE_SPEC_RE.fullmatch(device):
                    err(spec.name, "backup_targets", f"{where}: `{device}` may name another disk after a reboot", "use UUID=... or LABEL=... (see `blkid`)")
                elif device == data.get("dnas_device"):
                    err(spec.name, "backup_targets", f"{where}: {device} is the same disk as the data (dnas_device)", "use another disk: a backup on the data disk dies with it")
            elif kind == "s3":
                if not str(target.get("url", "")).startswith("s3:"):
                    err(spec.name, "backup_targets", f"{where}: s3 without url", "give url = 's3:https://host/bucket/prefix'")
                for key in ("backup_s3_access_key", "backup_s3_secret_key"):
                    if is_secret_bad(data.get(key)):
                        err(spec.name, key, f"{where} needs it", f"set it from the secret store: secret('{key}')")


ALL = GROUPS
LAYER = Layer(
    "backup",
    [
        Section("Backup (deploys/backup.py; restores: deploys/restore.py)"),
        Key("backup_enabled", flag(), False, "True: this node backs up (needs backup_targets and backup_passphrase)."),
        Key(
            "backup_targets",
            Kind(list),
            [],
            "Where this node's backups go, one or more, each a restic repository:\n"
            '{"name": "pi3", "type": "sftp", "host": "pi3"} (another inventory node: a restricted SFTP account is made there);\n'
            '{"name": "offsite", "type": "sftp", "host": "203.0.113.7", "user": "hcbackup", "path": "pi1", "host_key": "ssh-ed25519 AAAA..."};\n'
            '{"name": "usb", "type": "local", "device": "LABEL=backup", "path": "restic"} (mounted for the run only);\n'
            '{"name": "cloud", "type": "s3", "url": "s3:https://s3.example.net/bucket/pi1"} (backup_s3_access_key/_secret_key).',
            ALL,
            TARGETS,
        ),
        Key("backup_passphrase", Kind(optional=True), None, "SECRET: the repositories' encryption passphrase. Keep a copy elsewhere: lose it, lose the backups."),
        Key("backup_s3_access_key", Kind(optional=True), None, "SECRET: for s3 targets."),
        Key("backup_s3_secret_key", Kind(optional=True), None, "SECRET: for s3 targets."),
        Key("backup_paths", Kind(list), [], "Extra absolute paths to back up (the dnas data, Syncthing identity, Samba/NFS config,\netcd snapshots and Nextcloud dumps are included already)."),
        Key("backup_syncthing_versions", flag(), False, "True: also back up Syncthing's .stversions folders and temporary files."),
        Key("backup_nextcloud_dumps", Kind(), "/var/backups/nextcloud", "Nextcloud's database dumps, backed up when the folder exists."),
        Key("backup_schedule", Kind(), "*-*-* 02:30:00", "systemd OnCalendar of the backup run (Persistent: a missed run happens at boot)."),
        Key("backup_randomized_delay", count(0, 86400), 1800, "Seconds of random delay (nodes do not all start at once)."),
        Key("backup_keep_daily", count(0, 3650), 7, "Retention (restic forget --prune after each run)."),
        Key("backup_keep_weekly", count(0, 520), 4, ""),
        Key("backup_keep_monthly", count(0, 240), 6, ""),
        Key("backup_check_schedule", Kind(), "Sun *-*-* 04:00:00", "systemd OnCalendar of the integrity check."),
        Key("backup_check_subset", Kind(), "5%", "restic check --read-data-subset: the share of the data read back each check."),
        Key("backup_sftp_user", Kind(), "hcbackup", "The restricted SFTP account on target nodes."),
        Key("backup_sftp_root", Kind(), "/srv/homecloud-backup", "Its chroot on target nodes (one folder per client node)."),
        Key("backup_monitoring", flag(), False, "True: write the status for node-exporter's textfile collector too."),
        Section("Restore (deploys/restore.py, with --data)"),
        Key("restore_target", Kind(optional=True), None, "Target to restore from (default the first of backup_targets)."),
        Key("restore_snapshot", Kind(), "latest", "restic snapshot id (homecloud-backup snapshots lists them)."),
        Key("restore_paths", Kind(optional=True), None, "Comma-separated paths of the snapshot to restore (default all)."),
        Key("restore_to", Kind(optional=True), None, "Folder to restore into (default <dnas_path>/restored-<snapshot>)."),
        Key("restore_in_place", flag(), False, "True: put files back where they were (never deletes; files newer than the snapshot are kept)."),
        Key("restore_node_replaced", flag(), False, "True: a rebuilt node: in place, Syncthing identity and config included."),
    ],
    reads=("dnas_path", "dnas_user", "dnas_device", "syncthing_enabled", "k3s_etcd_snapshot_dir"),
    check=check,
)

BackupSettings = LAYER.settings_class


def settings(host) -> BackupSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)


def repository(settings: BackupSettings, node_name: str, target: dict, target_address: str | None) -> dict:
    """The wrapper's description of one target: restic repository and how to reach it."""
    kind = target["type"]
    entry = {"name": target["name"], "type": kind}
    if kind == "sftp":
        user = target.get("user") or settings.backup_sftp_user
        entry["repo"] = f"sftp:{user}@{target_address}:/{target.get('path') or node_name}"
        entry["ssh"] = [
            "ssh", "-i", backup_ops.CLIENT_KEY, "-o", f"UserKnownHostsFile={backup_ops.KNOWN_HOSTS}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=30", f"{user}@{target_address}", "-s", "sftp",
        ]
    elif kind == "local":
        point = f"/run/homecloud-backup/{target['name']}"
        entry.update(device=target["device"], fstype=target.get("fstype") or "ext4", mountpoint=point, repo=normpath(f"{point}/{target.get('path') or 'restic'}"))
    else:
        entry.update(repo=target["url"], env_file=f"{backup_ops.CONFIG_DIR}/s3.env")
    return entry


def backed_up(settings: BackupSettings, is_dnas: bool, is_k3s_server: bool) -> tuple[list[str], list[str]]:
    """The paths this node backs up and the exclude patterns."""
    paths = []
    if is_dnas:
        paths.append(normpath(settings.dnas_path))  # data folders and dnas_path/.config/syncthing (identity)
        paths += ["/etc/samba", "/etc/ganesha", "/etc/exports", "/etc/exports.d"]
    if is_k3s_server:
        paths.append(settings.k3s_etcd_snapshot_dir or "/var/lib/rancher/k3s/server/db/snapshots")
    paths.append(settings.backup_nextcloud_dumps)
    paths += list(settings.backup_paths)
    excludes = [] if settings.backup_syncthing_versions else list(SYNCTHING_TEMP)
    if is_dnas:
        excludes.append(normpath(settings.dnas_path) + "/restored-*")
    return paths, excludes


def units(settings: BackupSettings) -> dict[str, str]:
    head = "# Written by homecloud (homecloud/layers/backup.py).\n"
    service = (
        head + "[Unit]\nDescription=homecloud backup (restic)\nWants=network-online.target\nAfter=network-online.target\n\n"
        "[Service]\nType=oneshot\n"
        f"ExecStart=/usr/bin/flock -n /run/homecloud-backup.unit.lock {backup_ops.WRAPPER} run\n"
        "Nice=10\nIOSchedulingClass=idle\n"
        # A run that hangs (a full disk: restic retries its writes) fails the unit instead.
        "TimeoutStartSec=6h\n"
    )
    check = (
        head + "[Unit]\nDescription=homecloud backup integrity check (restic check --read-data-subset)\n"
        "Wants=network-online.target\nAfter=network-online.target homecloud-backup.service\n\n"
        f"[Service]\nType=oneshot\nExecStart=/usr/bin/flock -w 7200 /run/homecloud-backup.unit.lock {backup_ops.WRAPPER} check\nNice=10\nIOSchedulingClass=idle\n"
    )

    def timer(what: str, calendar: str) -> str:
        return (
            head + f"[Unit]\nDescription={what}\n\n[Timer]\nOnCalendar={calendar}\nPersistent=true\n"
            f"RandomizedDelaySec={settings.backup_randomized_delay}\n\n[Install]\nWantedBy=timers.target\n"
        )

    return {
        "homecloud-backup.service": service,
        "homecloud-backup.timer": timer("homecloud backup schedule", settings.backup_schedule),
        "homecloud-backup-check.service": check,
        "homecloud-backup-check.timer": timer("homecloud backup check schedule", settings.backup_check_schedule),
    }


@deploy("backup")
def backup(settings: BackupSettings, node_name: str, targets: list[dict], known: dict[str, str], clients: list[str], is_dnas: bool, is_k3s_server: bool, sudo: bool, salt: str) -> None:
    """
    Backups of one node: restic, the wrapper and its config, the passphrase (0600), the SSH key
    and pinned host keys for SFTP targets, the service and timers. `targets` are the wrapper's
    target descriptions (`repository`), `known` address -> host key (or "host:<name>") of SFTP
    targets, `clients` the nodes that back up to this one over SFTP (it gets the account).
    """
    # The client keys first, and queued on every host of this layer (skipped where no key is
    # needed): pyinfra 3 orders operations as a graph of each host's own sequence, so only an
    # operation the target also has makes the target's account below wait for the clients' keys
    # (a client with more operations before this layer than its target otherwise got its key
    # after the target had looked for it).
    needs_key = bool(settings.backup_enabled and known)
    backup_ops.client_key(name="Backup SSH key of this node", _if=lambda: needs_key)
    if clients:
        sftp_user, sftp_root = settings.backup_sftp_user, settings.backup_sftp_root
        system.system_user(name=f"Backup SFTP account {sftp_user} (no shell)", user=sftp_user, home="/", shell="/usr/sbin/nologin")
        # sshd's chroot must be root-owned; each client writes only into its own folder.
        files.directory(name=f"Backup chroot {sftp_root} (root-owned)", path=sftp_root, user="root", group="root", mode="755")
        for client in clients:
            files.directory(name=f"Backup folder of {client}", path=f"{sftp_root}/{client}", user=sftp_user, group=sftp_user, mode="700")
        backup_ops.sftp_account(
            name=f"Restricted SFTP account {settings.backup_sftp_user} for the backups of {', '.join(clients)}",
            user=settings.backup_sftp_user,
            root=settings.backup_sftp_root,
            clients=clients,
            sudo=sudo,
        )
    if not settings.backup_enabled:
        return
    system.packages(name="Install restic", packages=["restic", "openssh-client", "python3", "util-linux"])
    passphrase = HiddenValue(str(settings.backup_passphrase or ""))
    system.text_file(name="Backup repository passphrase (0600)", path=f"{backup_ops.CONFIG_DIR}/passphrase", text=passphrase.unmask(), mode="600", secret=True)
    secrets_ops.fingerprints(name="Fingerprint of the backup passphrase (no secret stored)", salt=salt, secrets={"backup_passphrase": passphrase})
    if any(t["type"] == "s3" for t in targets):
        env = f"AWS_ACCESS_KEY_ID={settings.backup_s3_access_key}\nAWS_SECRET_ACCESS_KEY={settings.backup_s3_secret_key}\n"
        system.text_file(name="S3 credentials of the backup (0600)", path=f"{backup_ops.CONFIG_DIR}/s3.env", text=env, mode="600", secret=True)
    if known:
        backup_ops.known_hosts(name="Pinned host keys of the SFTP backup targets", hosts=dict(known), sudo=sudo)
    system.text_file(name="The backup wrapper homecloud-backup", path=backup_ops.WRAPPER, text=backup_ops.WRAPPER_TEXT, mode="755")
    paths, excludes = backed_up(settings, is_dnas, is_k3s_server)
    config = {
        "node": node_name,
        "password_file": f"{backup_ops.CONFIG_DIR}/passphrase",
        "paths": paths,
        "excludes": excludes,
        "keep": {"daily": settings.backup_keep_daily, "weekly": settings.backup_keep_weekly, "monthly": settings.backup_keep_monthly},
        "check_subset": settings.backup_check_subset,
        "status": "/var/lib/homecloud/backup/status.json",
        "textfile": STATUS_TEXTFILE if settings.backup_monitoring else None,
        "staging": normpath(settings.dnas_path) if is_dnas else "/var/lib/homecloud/backup",
        "identity": [normpath(settings.dnas_path) + "/.config/syncthing/"] if is_dnas else [],
        "units": [f"syncthing@{settings.dnas_user}.service"] if is_dnas and settings.syncthing_enabled else [],
        "targets": targets,
    }
    system.text_file(name="Backup configuration (no secret in it)", path=f"{backup_ops.CONFIG_DIR}/config.json", text=json.dumps(config, indent=1, sort_keys=True) + "\n")
    written = [
        system.text_file(name=f"Unit {unit}", path=f"/etc/systemd/system/{unit}", text=text)
        for unit, text in units(settings).items()
    ]
    systemd.daemon_reload(name="systemd reloads the backup units", _if=any_changed(*written))
    system.services(name="Backup timers enabled and running", services=["homecloud-backup.timer", "homecloud-backup-check.timer"])


def plan(state, host) -> dict:
    """The arguments of `backup` for `host` (also the restore deploy's view of the targets)."""
    config = settings(host)
    inventory = {h.name: h for h in state.inventory}
    targets, known = [], {}
    if config.backup_enabled:
        for target in config.backup_targets:
            target_address = None
            if target["type"] == "sftp":
                other = inventory.get(target["host"])
                target_address = address(other) if other is not None else target["host"]
                known[target_address] = target.get("host_key") or f"host:{target['host']}"
            targets.append(repository(config, host.name, target, target_address))
    clients = sorted(
        h.name
        for h in state.inventory
        if settings(h).backup_enabled and any(t["type"] == "sftp" and t.get("host") == host.name for t in settings(h).backup_targets)
    )
    return {"targets": targets, "known": known, "clients": clients}


def apply(state, host) -> None:
    """Backups on `host` when backup_enabled; the SFTP account when other nodes back up to it."""
    from homecloud.fingerprints import salt_for

    config = settings(host)
    planned = plan(state, host)
    if config.backup_enabled or planned["clients"]:
        backup(
            config,
            node_name=host.name,
            targets=planned["targets"],
            known=planned["known"],
            clients=planned["clients"],
            is_dnas="dnas" in host.groups,
            is_k3s_server="k3s_servers" in host.groups,
            sudo=bool(host.data.get("_sudo")),
            salt=salt_for(state, host),
        )


@deploy("restore")
def restore(settings: BackupSettings, target: str, restore_to: str | None) -> None:
    """One restore of this node's backup, as `settings.restore_*` say (deploys/restore.py)."""
    paths = [p.strip() for p in (settings.restore_paths or "").split(",") if p.strip()]
    in_place = settings.restore_in_place or settings.restore_node_replaced
    backup_ops.restore(
        name=f"Restore snapshot {settings.restore_snapshot} from {target}" + (" in place" if in_place else f" into {restore_to}"),
        target=target,
        snapshot=settings.restore_snapshot,
        paths=paths,
        restore_to=None if in_place else restore_to,
        in_place=settings.restore_in_place,
        node_replaced=settings.restore_node_replaced,
    )


def restore_apply(state, host) -> None:
    """The restore on `host` when it backs up (the wrapper and its config are there)."""
    config = settings(host)
    if not config.backup_enabled:
        return
    names = [t["name"] for t in config.backup_targets]
    target = config.restore_target or names[0]
    if target not in names:
        from homecloud.schema import InventoryError

        raise InventoryError(f"{host.name}: restore_target: `{target}` is not one of backup_targets ({', '.join(names)}). Fix: {did_you_mean(target, names, 'use one of them')}")
    restore_to = config.restore_to or f"{normpath(config.dnas_path)}/restored-{config.restore_snapshot}"
    restore(config, target=target, restore_to=restore_to)
