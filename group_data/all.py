"""
homecloud defaults: every key the deploys read, with its default and what it means.

GENERATED from the layer schemas (homecloud/layers/<layer>.py) by `python -m homecloud.layers`:
change a key there, not here.

pyinfra loads this file for every inventory run from the repository root. Override any key in
your inventory (per host, or in the group data of the inventory's `all` group), in a
`group_data/<group>.py` beside your inventory, or with `--data key=value`. Keys that are not
listed here are refused by the validation (a typo such as `k3s_verison` would otherwise be
silently ignored).

Secrets (marked SECRET) must come from you: the validation refuses a missing secret and the
example values shown in the docs. `homecloud.secrets.secret(...)` generates one on the
controller, once, and keeps it in `.secrets/<inventory>.json` (mode 0600, not committed).

Groups: `k3s_servers` (1, 3, 5 ... control-plane nodes with embedded etcd, they also hold the
virtual IP), `k3s_agents` (worker nodes), `dnas` (nodes that serve the decentralized NAS). A
node may be in `dnas` and in one of the k3s groups.
"""

# --- The network ------------------------------------------------------------------------------
# The node's address on the home LAN (host data). Defaults to the inventory host name when that
# is an IPv4 address; otherwise it is required. Used for /etc/hosts, VRRP peers, k3s node-ip.
node_ip = None
# The interface that carries node_ip and the virtual IP.
node_interface = "eth0"
# Prefix length of the LAN the nodes share (24 for 192.168.1.0/24). The VIP must lie in it.
network_prefix = 24
# The cluster's virtual IP: one address, held by one healthy server at a time (keepalived).
# Required when keepalived or k3s is on. Pick a free address outside your router's DHCP range.
vip = None

# --- Node base (deploys/base.py) --------------------------------------------------------------
# Set the host name to the inventory name and write /etc/hosts entries for every node.
base_manage_hostname = True
# Turn swap off now and at boot (kubelet refuses swap): fstab entries, dphys-swapfile, zram.
base_disable_swap = True
# Keep the clock synchronised (systemd-timesyncd) - TLS and etcd need it.
base_time_sync = True
# Kernel modules k3s needs; each is loaded only when not already present (built in or loaded)
# and persisted in /etc/modules-load.d/homecloud.conf.
base_kernel_modules = ["overlay", "br_netfilter"]
# sysctls persisted in /etc/sysctl.d/90-homecloud.conf and applied now.
base_sysctls = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}
# iptables: "auto" switches to iptables-legacy only where the installed iptables needs it
# (an nftables-backed iptables older than 1.8.4, per the k3s docs); True/False forces it.
base_iptables_legacy = "auto"
# Raspberry Pi: add cgroup_memory=1 cgroup_enable=memory (and cpuset) to cmdline.txt.
rpi_cgroup_flags = True
# Reboot hosts whose boot flags changed, one at a time, and wait for them. False: only report.
rpi_reboot = True

# --- Host hardening (deploys/hardening.py) ----------------------------------------------------
# The whole layer; each part has its own switch below.
hardening_enabled = True
# sshd: keys only (stops first if the deploying user does not log in with a key), modern
# key exchange/ciphers/MACs/host keys, no forwarding, MaxAuthTries 3, LoginGraceTime 30,
# MaxStartups 10:30:60 (/etc/ssh/sshd_config.d/00-homecloud.conf).
hardening_ssh = True
# True keeps password logins (not recommended).
hardening_ssh_password_auth = False
# PermitRootLogin: None = "prohibit-password" (key only) when ssh_user is root, "no" otherwise;
# or "prohibit-password" / "no".
hardening_ssh_root_login = None
hardening_ssh_x11_forwarding = False
hardening_ssh_agent_forwarding = False
# ssh -L / -R port forwarding.
hardening_ssh_tcp_forwarding = False
# Host firewall (nftables table inet homecloud, loaded by homecloud-firewall.service): inbound
# dropped except SSH, VRRP from the keepalived peers, k3s ports between cluster nodes, 80/443
# on k3s nodes, Syncthing, SMB and NFS from their networks.
hardening_firewall = True
# Who may reach SSH (CIDRs). Empty: the LAN (node_ip/network_prefix). Must include your
# controller: a deploy from an address outside it stops before the firewall changes.
hardening_ssh_networks = []
# Besides the dnas peers, who may reach Syncthing (22000, 21027/udp). Empty: the LAN (phones).
hardening_syncthing_networks = []
# More inbound rules, one nft rule each, e.g. "ip saddr 192.168.1.0/24 tcp dport 8080 accept".
hardening_firewall_extra = []
# Kernel/network sysctls (/etc/sysctl.d/60-homecloud-hardening.conf); ip_forward is left alone.
hardening_sysctls = True
# Install security updates every day (unattended-upgrades).
hardening_unattended_upgrades = True
# Origins unattended-upgrades installs from (Origins-Pattern); default: Debian's security archive only.
hardening_upgrade_origins = ["origin=Debian,codename=${distro_codename}-security,label=Debian-Security"]
# Reboot automatically when an update needs it. k3s servers are staggered by 30 minutes from
# hardening_reboot_time (inventory order), so no two servers reboot in the same window.
hardening_reboot = False
# HH:MM of the first automatic reboot.
hardening_reboot_time = "03:30"

# --- keepalived: the virtual IP (deploys/keepalived.py) ---------------------------------------
keepalived_enabled = True
# The group whose hosts share the VIP (k3s_servers; "dnas" for a NAS-only cluster).
keepalived_group = "k3s_servers"
# VRRP virtual_router_id, 1-255, unique on your LAN.
keepalived_router_id = 51
# SECRET: VRRP authentication password, 1-8 characters (VRRP PASS auth is limited to 8).
keepalived_auth_pass = None
# Unicast peers (works on Wi-Fi and switches that drop multicast). False: multicast.
keepalived_unicast = True
# True: a recovered node does not take the VIP back from the current holder.
keepalived_nopreempt = False
# Seconds between VRRP adverts; failover takes about 3-4 adverts.
keepalived_advert_int = 1
# Health check run by keepalived on each holder; None: the local k3s API answers on 6443
# (any TLS answer - k3s replies 401 to anonymous requests). Any command: exit 0 means healthy.
keepalived_check_script = None
# Optional script run on state changes (keepalived `notify`), e.g. to send a message.
keepalived_notify_script = None
# Per host (optional): VRRP priority 1-254. Default: from inventory order, first is highest.
keepalived_priority = None

# --- k3s (deploys/k3s.py) ---------------------------------------------------------------------
# Where the k3s binary comes from: "download" (the controller downloads the pinned release from
# GitHub once and checks its sha256), "airgap" (from k3s_airgap_dir on the controller, no
# internet needed anywhere) or "off" (the k3s layer is skipped, with a notice).
k3s_install = "download"
# The pinned k3s release (vMAJOR.MINOR.PATCH+k3sN). Bump it to upgrade, one server at a time.
k3s_version = "v1.36.4+k3s1"
# Airgap folder on the controller: k3s, k3s-arm64, k3s-armhf, sha256sum-<arch>.txt and
# optional k3s-airgap-images-<arch>.tar[.zst|.gz], as named on the k3s release page (the armhf
# files are sha256sum-arm.txt and k3s-airgap-images-arm.tar.zst there).
k3s_airgap_dir = None
# Controller cache for downloaded binaries.
k3s_download_dir = "~/.cache/homecloud/k3s"
# SECRET (optional): cluster join token. None: generated once on the first server and read
# from it by the joining nodes at run time.
k3s_token = None
# Extra keys for /etc/rancher/k3s/config.yaml (checked against the pinned version's flags).
k3s_server_config = {}
k3s_agent_config = {}
# Per host: node labels ("key=value") and taints ("key=value:Effect").
k3s_node_labels = []
k3s_node_taints = []
# Optional registries.yaml content (mirrors, auth) as a dict.
k3s_registries = None
# Where the kubeconfig is merged on the controller, and the context name.
k3s_kubeconfig = "~/.kube/config"
k3s_kubeconfig_context = "homecloud"
# Seconds to wait for nodes Ready / kube-system deployments available.
k3s_ready_timeout = 600
# Cron schedule of k3s's etcd snapshots (etcd-snapshot-schedule-cron); the backup layer saves them.
k3s_etcd_snapshot_schedule = "0 */6 * * *"
# Snapshots k3s keeps (etcd-snapshot-retention).
k3s_etcd_snapshot_retention = 12
# Where k3s writes them (etcd-snapshot-dir).
k3s_etcd_snapshot_dir = "/var/lib/rancher/k3s/server/db/snapshots"

# --- Longhorn host prerequisites (deploys/longhorn.py) ----------------------------------------
longhorn_enabled = True
# Where Longhorn keeps replicas; must be ext4 or XFS.
longhorn_data_path = "/var/lib/longhorn"
# Optional dedicated disk for longhorn_data_path: "UUID=...", "LABEL=..." or a
# /dev/disk/by-id/... path (never /dev/sdX).
longhorn_device = None
# Format longhorn_device only if it carries no filesystem and no partition table.
longhorn_format = False
# Filesystem of longhorn_device: "ext4" or "xfs" (the two Longhorn supports).
longhorn_fstype = "ext4"
# Optional blank disk by a stable path (/dev/disk/by-id/...) that gets longhorn_device's label
# or UUID when no disk matches longhorn_device yet (with longhorn_format = True; never a disk
# that carries anything).
longhorn_blank_device = None

# --- Decentralized NAS (deploys/dnas.py) ------------------------------------------------------
# The one data folder served by Syncthing, Samba and NFS.
dnas_path = "/srv/dnas"
# The owner of every file in it (fixed ids, the same on every dnas node).
dnas_user = "dnas"
dnas_uid = 2000
dnas_gid = 2000
# Optional data disk mounted at dnas_path: "UUID=...", "LABEL=..." or /dev/disk/by-id/...
# (never /dev/sdX). None: dnas_path is a folder on the root filesystem.
dnas_device = None
dnas_fstype = "ext4"
# Format dnas_device only if it carries no filesystem and no partition table. Never otherwise.
dnas_format = False
# A blank disk cannot be found by LABEL=/UUID= (it has none yet): to have it formatted, name it
# here by a stable path (/dev/disk/by-id/... or /dev/disk/by-path/...). With dnas_format = True
# and no disk matching dnas_device yet, it is formatted with dnas_fstype and gets the label (or
# UUID) of dnas_device - only if it carries no filesystem, partition table or other signature.
dnas_blank_device = None
dnas_mount_options = "defaults,noatime"

# --- Syncthing --------------------------------------------------------------------------------
syncthing_enabled = True
# "debian" (the distribution's package) or "syncthing" (Syncthing's own signed apt repository).
syncthing_source = "debian"
# GUI / REST API address. Anything but loopback gets TLS.
syncthing_gui_address = "127.0.0.1:8384"
# SECRET, required: the GUI / REST API always asks for user "homecloud" and this password (also
# on loopback: any local account could use it otherwise). secret("syncthing_gui_password").
syncthing_gui_password = None
# False: Syncthing finds and reaches devices on the LAN only (no global discovery, no relays, no
# UPnP/NAT-PMP port mapping or STUN). True: all of those on, for a phone outside the home.
# Crash and usage reporting are off either way.
syncthing_internet = False
# Folders shared among all dnas nodes: id, label, path (relative to dnas_path).
syncthing_folders = [{"id": "homecloud-data", "label": "homecloud data", "path": "data"}]
# Other devices (phones, laptops) by device ID, and the folder ids they get:
# [{"name": "phone", "id": "ABCDEFG-...", "folders": ["homecloud-data"]}]
syncthing_devices = []

# --- Samba ------------------------------------------------------------------------------------
samba_enabled = True
samba_workgroup = "WORKGROUP"
# Shares: name, path (relative to dnas_path), read_only, valid_users, guest_ok (off by default).
# Files are always created as dnas_user, so Syncthing and NFS see the same owner.
samba_shares = [{"name": "data", "path": "data", "read_only": False, "valid_users": [], "guest_ok": False}]
# SECRET values: {"alice": "password"}. An empty valid_users list means every user listed here.
samba_users = {}
# SMB3 encryption: "desired" (used by every client that can) or "required" (others refused).
# Signing is always mandatory.
samba_encrypt = "desired"
# The oldest SMB dialect served (never SMB1 or SMB 2.0.2); SMB3 for Windows 8 / macOS 10.10 and later only.
samba_min_protocol = "SMB2_10"
# Keep Debian's [homes], [printers] and [print$] shares (off: unavailable; printing is off either way).
samba_default_shares = False
# NetBIOS (nmbd, port 139) for very old clients; off: SMB over TCP 445 only.
samba_netbios = False

# --- NFS --------------------------------------------------------------------------------------
nfs_enabled = True
# "kernel" (nfs-kernel-server; the default on real boards) or "ganesha" (userspace nfs-ganesha,
# for kernels without nfsd, such as containers).
nfs_backend = "kernel"
# Exports: path (relative to dnas_path), networks allowed (CIDR; a single host: 192.168.1.20/32),
# read_only (True when not given), unauthenticated_write (False). NFS has no password: access
# is squashed to dnas_uid/dnas_gid, whoever asks. The default is read-only to the LAN. A
# read-write export to a whole subnet of a folder that a Samba share restricts to its users is
# refused unless the export says "unauthenticated_write": True. NFSv3 and NFSv4.
nfs_exports = [{"path": "data", "networks": ["192.168.1.0/24"], "read_only": True}]
# Fixed ports of the NFSv3 helper services, so a firewall can let them through (they pick a
# random port otherwise; /etc/nfs.conf.d/homecloud.conf, and MNT_Port / NLM_Port for ganesha): mountd.
nfs_mountd_port = 20048
# statd (NFSv3 lock recovery).
nfs_statd_port = 32765
# lockd / NLM (NFSv3 locks), TCP and UDP.
nfs_lockd_port = 32768

# --- platform: Kubernetes add-ons applied by k3s (deploys/platform.py) ------------------------
# None: on when k3s is (k3s_install is not "off"). False: homecloud leaves the cluster's add-ons alone.
platform_enabled = None
# The name the UIs are reached under (<ui>.<domain>). None: home.arpa (LAN only, self-signed).
platform_domain = None
# "selfsigned": Traefik's own certificate (LAN only); "acme": Let's Encrypt HTTP-01 (ports 80/443 forwarded to the VIP).
platform_tls = "selfsigned"
# Let's Encrypt account e-mail (platform_tls = "acme").
platform_acme_email = None
# "staging" while testing: Let's Encrypt rate-limits production certificates.
platform_acme_server = "production"
# The LAN Traefik trusts X-Forwarded-* headers from. None: the first server's node_ip/network_prefix.
platform_lan_cidr = None
# Tune k3s's Traefik (HTTPS redirect, TLS, access log). False: k3s's defaults.
platform_traefik = True
# Longhorn (chart of charts.longhorn.io). None: on when a k3s node has longhorn_enabled.
platform_longhorn = None
# None: the chart version checked offline (kubernetes/platform/longhorn/helmchart.yaml).
platform_longhorn_chart_version = None
# SECRET (optional): exposes Longhorn's UI at https://longhorn.<domain> behind basic auth (user admin,
# bcrypt in a Traefik middleware). None: the UI is not exposed (kubectl port-forward only).
platform_longhorn_ui_password = None
# Replicas per volume. None: min(3, Longhorn nodes).
platform_longhorn_replicas = None
# Longhorn backups: "nfs://<dnas node>/<export path>" (an entry of its nfs_exports) or
# "s3://bucket@region/path/" (credentials below). None: snapshots only, no backups.
platform_backup_target = None
# SECRET (S3 target): access key id.
platform_backup_s3_access_key_id = None
# SECRET (S3 target): secret access key.
platform_backup_s3_secret_access_key = None
# S3-compatible endpoint URL (MinIO, Garage ...); None: AWS.
platform_backup_s3_endpoint = None
# Daily snapshot of every Longhorn volume (cron, cluster time) and how many to keep.
platform_snapshot_cron = "0 2 * * *"
platform_snapshot_retain = 7
# Daily backup to platform_backup_target and how many to keep.
platform_backup_cron = "0 3 * * *"
platform_backup_retain = 14
# kube-prometheus-stack (Prometheus, Alertmanager, Grafana at grafana.<domain>, node-exporter on every
# node), about 1.2 GiB of memory on the cluster. Off by default: the inventory has no key for a node's
# memory, so homecloud cannot tell a 4 GB cluster from a 1 GB one. Needs "etcd-expose-metrics": True
# in k3s_server_config.
platform_monitoring = False
# Kubernetes Dashboard at https://dashboard.<domain> (about 300 MiB). Log in with a token:
# python -m homecloud.platform token [--read-only].
platform_dashboard = False
# Portainer CE at https://portainer.<domain> (about 100-250 MiB), user admin.
platform_portainer = False
# SECRET (Portainer): the admin password.
platform_portainer_admin_password = None
# SECRET (monitoring): Grafana's admin password (user admin).
platform_grafana_admin_password = None
# Where alerts go: "email", "webhook" (ntfy, Gotify ...); None: the Alertmanager UI only.
platform_alert_receiver = None
# E-mail receiver: to, from, the SMTP server (host:port, STARTTLS) and its user.
platform_alert_email_to = None
platform_alert_email_from = None
platform_alert_smtp_smarthost = None
platform_alert_smtp_username = None
# SECRET (e-mail receiver): the SMTP password.
platform_alert_smtp_password = None
# SECRET (webhook receiver): the URL alerts are POSTed to (it often holds a token).
platform_alert_webhook_url = None
# Seconds to wait for the add-ons' install jobs and workloads.
platform_ready_timeout = 900

# --- Services: Nextcloud on k3s (deploys/services.py) -----------------------------------------
# Nextcloud (files, WebDAV, CalDAV, CardDAV, sharing) on the cluster.
nextcloud_enabled = False
# The name users reach it at (https://<domain>/); your DNS points it at the VIP.
nextcloud_domain = None
# More trusted names or addresses (e.g. the VIP) it answers to.
nextcloud_extra_domains = []
# Where Traefik's requests come from (k3s's pod network): Nextcloud trusts their X-Forwarded-* headers.
nextcloud_trusted_proxies = ["10.42.0.0/16"]
nextcloud_admin_user = "admin"
# SECRET: the first login's password (secret('nextcloud_admin_password')).
nextcloud_admin_password = None
# SECRET: MariaDB's nextcloud user.
nextcloud_db_password = None
# SECRET: MariaDB's root.
nextcloud_db_root_password = None
# SECRET: Redis.
nextcloud_redis_password = None
# Volumes of Nextcloud (program, config, its own data) and MariaDB: "longhorn" (replicated) or
# "local-path" (one node's disk; the pods stay on that node). None: longhorn when a k3s node has
# longhorn_enabled, else local-path.
nextcloud_storage_class = None
# Size (GiB) of Nextcloud's volume: program, config and the files not on the dnas.
nextcloud_size_gi = 20
# Size (GiB) of MariaDB's volume.
nextcloud_db_size_gi = 5
# Largest upload (MiB) PHP and Apache accept.
nextcloud_upload_limit_mb = 10240
# dnas folders offered in Nextcloud as external storage (checked for changes on every access):
# mount (the folder users see), node (a dnas node), path (relative to its dnas_path, inside one of
# its writable nfs_exports open to every k3s node), users and/or groups who get it.
# [{"mount": "Photos", "node": "pi1", "path": "data/photos", "users": ["alice"], "groups": []}]
nextcloud_storages = []
# The dnas node receiving the nightly database dumps (over NFS).
nextcloud_dump_node = None
# Folder of the dumps, relative to that node's dnas_path, inside one of its writable nfs_exports:
# nextcloud-<UTC time>.sql.gz, 0600, owned by the dnas owner. The backup layer collects it.
nextcloud_dump_path = "backups/nextcloud-db"
# When the dump runs (cron, the cluster's time zone: UTC unless changed).
nextcloud_dump_schedule = "30 2 * * *"
# How many dumps are kept (the newest).
nextcloud_dump_retain = 7
# Seconds the deploy waits for Nextcloud, MariaDB and Redis to roll out (the first start pulls the
# images and installs Nextcloud). Not waited for when k3s_install is "off" (no merged kubeconfig).
nextcloud_ready_timeout = 1800

# --- Contacts and calendars as files (vdirsyncer; deploys/davsync.py) -------------------------
# The dnas node running vdirsyncer (one; None: off).
dav_sync_node = None
# The DAV server; None: https://<nextcloud_domain>/remote.php/dav/.
dav_sync_url = None
# Check the server's TLS certificate (False for Traefik's self-signed default one).
dav_sync_verify = True
# Whose contacts and calendars, with an app password (SECRET), into which folder (relative to
# dnas_path, inside a Syncthing folder):
# [{"user": "alice", "password": secret("dav_alice"), "folder": "data/dav/alice"}]
dav_sync_users = []
# How often vdirsyncer runs (systemd time span).
dav_sync_interval = "15min"
# An item changed on both sides since the last run: "server wins" or "files win" (the other
# version is overwritten).
dav_sync_conflict = "server wins"

# --- Backup (deploys/backup.py; restores: deploys/restore.py) ---------------------------------
# True: this node backs up (needs backup_targets and backup_passphrase).
backup_enabled = False
# Where this node's backups go, one or more, each a restic repository:
# {"name": "pi3", "type": "sftp", "host": "pi3"} (another inventory node: a restricted SFTP account is made there);
# {"name": "offsite", "type": "sftp", "host": "203.0.113.7", "user": "hcbackup", "path": "pi1", "host_key": "ssh-ed25519 AAAA..."};
# {"name": "usb", "type": "local", "device": "LABEL=backup", "path": "restic"} (mounted for the run only);
# {"name": "cloud", "type": "s3", "url": "s3:https://s3.example.net/bucket/pi1"} (backup_s3_access_key/_secret_key).
backup_targets = []
# SECRET: the repositories' encryption passphrase. Keep a copy elsewhere: lose it, lose the backups.
backup_passphrase = None
# SECRET: for s3 targets.
backup_s3_access_key = None
# SECRET: for s3 targets.
backup_s3_secret_key = None
# Extra absolute paths to back up (the dnas data, Syncthing identity, Samba/NFS config,
# etcd snapshots and Nextcloud dumps are included already).
backup_paths = []
# True: also back up Syncthing's .stversions folders and temporary files.
backup_syncthing_versions = False
# Nextcloud's database dumps, backed up when the folder exists.
backup_nextcloud_dumps = "/var/backups/nextcloud"
# systemd OnCalendar of the backup run (Persistent: a missed run happens at boot).
backup_schedule = "*-*-* 02:30:00"
# Seconds of random delay (nodes do not all start at once).
backup_randomized_delay = 1800
# Retention (restic forget --prune after each run).
backup_keep_daily = 7
backup_keep_weekly = 4
backup_keep_monthly = 6
# systemd OnCalendar of the integrity check.
backup_check_schedule = "Sun *-*-* 04:00:00"
# restic check --read-data-subset: the share of the data read back each check.
backup_check_subset = "5%"
# The restricted SFTP account on target nodes.
backup_sftp_user = "hcbackup"
# Its chroot on target nodes (one folder per client node).
backup_sftp_root = "/srv/homecloud-backup"
# True: write the status for node-exporter's textfile collector too.
backup_monitoring = False

# --- Restore (deploys/restore.py, with --data) ------------------------------------------------
# Target to restore from (default the first of backup_targets).
restore_target = None
# restic snapshot id (homecloud-backup snapshots lists them).
restore_snapshot = "latest"
# Comma-separated paths of the snapshot to restore (default all).
restore_paths = None
# Folder to restore into (default <dnas_path>/restored-<snapshot>).
restore_to = None
# True: put files back where they were (never deletes; files newer than the snapshot are kept).
restore_in_place = False
# True: a rebuilt node: in place, Syncthing identity and config included.
restore_node_replaced = False

# --- Validation -------------------------------------------------------------------------------
# pyinfra runs this file after the inventory file and before it connects: check the inventory
# there, with its --data overrides (homecloud/model.py, check_loading_inventory).
from homecloud.model import check_loading_inventory  # noqa: E402

check_loading_inventory()
