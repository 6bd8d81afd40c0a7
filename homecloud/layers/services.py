"""
Layer 6, the services on k3s: Nextcloud (kubernetes/services/nextcloud/), deployed the way the
platform layer deploys its add-ons. On every k3s server: the module and an overlay written from
the inventory (homecloud/services.py `stage`) are uploaded to /var/lib/homecloud/services (0700,
files 0600; the secrets only in the overlay's secretGenerator env file, never on a command line),
built there with `k3s kubectl kustomize` (the kustomize of the pinned, checksum-verified k3s: the
controller needs no kubectl) and written 0600 to k3s's auto-deploy folder only when the build
differs (operations/platform.py `tree` and `builds`, facts.platform.PlatformBuilds). Two
manifests: homecloud-nextcloud.yaml (the Namespace and the PersistentVolumeClaims: Nextcloud's
data) and homecloud-nextcloud-app.yaml (everything else). Turning Nextcloud off empties the app
manifest (k3s deletes the workloads) and keeps the data manifest, so no volume is deleted by
homecloud; the staged tree and its secrets are removed. The stage folder is not the platform's,
so neither layer removes the other's files.

The dnas reaches Nextcloud over NFS (in-tree `nfs` volumes): each entry of nextcloud_storages
names a dnas node and a folder of one of its NFS exports; the database dumps go to
nextcloud_dump_path on nextcloud_dump_node the same way. The validation refuses a node that is
not a dnas node, a folder no writable export of that node holds, and an export that does not
let every k3s node in (the kubelet mounts NFS from the node's own address).
"""

from __future__ import annotations

import ipaddress
import weakref
from posixpath import join, normpath

from pyinfra.api import HiddenValue, deploy
from pyinfra.operations import files, python

from homecloud import platform as hp, services as nc
from homecloud.cluster import address, group_hosts
from homecloud.schema import GROUPS, Cluster, Entries, Key, Kind, Layer, Section, check_entries, check_relative, count, did_you_mean, flag, is_ip, is_secret_bad, node_ip
from operations import platform as platform_ops, secrets as secrets_ops

from .common import folder_levels, owned_folders
from .nfs import writable as nfs_writable

STORAGES = Entries(
    "storage",
    "mount",
    {"mount": Kind(required=True), "node": Kind(required=True), "path": Kind(required=True), "users": Kind(list), "groups": Kind(list)},
    '{"mount": "Photos", "node": "pi1", "path": "data/photos", "users": ["alice"], "groups": []}',
)
SECRET_KEYS = tuple(nc.SECRET_KEYS.values())
SAME_ON_EVERY_SERVER = (
    "nextcloud_enabled", "nextcloud_domain", "nextcloud_extra_domains", "nextcloud_trusted_proxies", "nextcloud_admin_user",
    "nextcloud_storage_class", "nextcloud_size_gi", "nextcloud_db_size_gi", "nextcloud_upload_limit_mb", "nextcloud_storages",
    "nextcloud_dump_node", "nextcloud_dump_path", "nextcloud_dump_schedule", "nextcloud_dump_retain", *SECRET_KEYS,
)


def _writable_export(spec, path: str):
    """The export of dnas node `spec` holding folder `path` (relative to dnas_path) read-write, or None."""
    for export in spec.data.get("nfs_exports") or []:
        if isinstance(export, dict) and isinstance(export.get("path"), str) and nc.relative_inside(path, export["path"]) and nfs_writable(export):
            return export
    return None


def _check_folder(err, host: str, key: str, what: str, node, path, cluster: Cluster) -> None:
    """A dnas folder Nextcloud mounts over NFS: a dnas node with NFS on, a writable export holding it, open to every k3s node."""
    dnas = {s.name: s for s in cluster.group("dnas")}
    if node not in dnas:
        fix = did_you_mean(node, dnas, f"name one of the dnas nodes ({', '.join(dnas) or 'none'})")
        err(host, key, f"{what}: node `{node}` is not a dnas node", fix)
        return
    check_relative(err, host, key, path)
    spec = dnas[node]
    if spec.data.get("nfs_enabled") is False:
        err(host, key, f"{what}: {node} does not serve NFS (nfs_enabled = False)", f"turn NFS on for {node} or name another dnas node")
        return
    export = _writable_export(spec, str(path))
    if export is None:
        err(host, key, f"{what}: no writable NFS export of {node} holds `{path}`", f"add {{'path': '{str(path).split('/')[0]}', 'networks': [...], 'read_only': False}} to nfs_exports of {node}, or use a folder of one")
        return
    networks = []
    for network in export.get("networks") or []:
        try:
            networks.append(ipaddress.ip_network(str(network), strict=False))
        except ValueError:
            pass  # reported by the nfs layer's check
    for k3s_node in cluster.k3s_nodes:
        ip = node_ip(k3s_node)
        if ip and not any(ipaddress.ip_address(ip) in net for net in networks):
            err(host, key, f"{what}: the export `{export['path']}` of {node} does not let k3s node {k3s_node.name} ({ip}) in", f"add {ip}/32 (or your LAN) to its networks: the kubelet mounts it from the node")


def check(err, cluster: Cluster) -> None:
    servers = cluster.group("k3s_servers")
    enabled = [s for s in servers if s.data.get("nextcloud_enabled") is True]
    if not enabled:
        return
    first = enabled[0]
    for spec in servers[1:]:
        for key in SAME_ON_EVERY_SERVER:
            if spec.data.get(key) != servers[0].data.get(key):
                err(spec.name, key, f"differs from {servers[0].name}'s (every k3s server writes the same manifest)", "set it once for the whole cluster (the inventory's all group)")
    data, name = first.data, first.name
    domain = data.get("nextcloud_domain")
    if domain is None:
        err(name, "nextcloud_domain", "missing while nextcloud_enabled = True", "give the name users reach Nextcloud at, e.g. cloud.example.org")
    elif isinstance(domain, str) and not nc.HOSTNAME_RE.fullmatch(domain):
        err(name, "nextcloud_domain", f"`{domain}` is not a DNS name", "write it like cloud.example.org (lower case)")
    for extra in data.get("nextcloud_extra_domains") or []:
        if not isinstance(extra, str) or not (nc.HOSTNAME_RE.fullmatch(extra) or is_ip(extra)):
            err(name, "nextcloud_extra_domains", f"`{extra!r}` is not a DNS name or IP address", "list names or addresses, e.g. ['192.168.1.240']")
    for cidr in data.get("nextcloud_trusted_proxies") or []:
        try:
            ipaddress.ip_network(str(cidr), strict=True)
        except ValueError as e:
            err(name, "nextcloud_trusted_proxies", f"`{cidr!r}` is not a network ({e})", "k3s's pod network, 10.42.0.0/16 unless you changed cluster-cidr")
    for key in SECRET_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            continue  # reported by the type check
        if is_secret_bad(value):
            err(name, key, "secret missing or left at an example value", f"set {key} = secret('{key}')")
        elif any(c in value for c in "\n\r"):
            err(name, key, "contains a line break", "use a value on one line")
    if data.get("nextcloud_storage_class") == "longhorn" and not any(s.data.get("longhorn_enabled", True) for s in cluster.k3s_nodes):
        err(name, "nextcloud_storage_class", "longhorn, but Longhorn is off on every k3s node", "set nextcloud_storage_class = 'local-path' or turn Longhorn on")
    mounts: set[str] = set()
    for storage in check_entries(err, name, "nextcloud_storages", data.get("nextcloud_storages"), STORAGES):
        mount = storage["mount"]
        if not nc.MOUNT_RE.fullmatch(mount):
            err(name, "nextcloud_storages", f"mount `{mount!r}` is not a folder name", "letters, digits, blanks and _.- (e.g. Photos)")
        elif mount.lower() in mounts:
            err(name, "nextcloud_storages", f"mount `{mount}` is given twice", "give each storage its own mount name")
        mounts.add(mount.lower())
        who = list(storage.get("users") or []) + list(storage.get("groups") or [])
        if not who:
            err(name, "nextcloud_storages", f"storage `{mount}` names no users and no groups", "list who gets it in users or groups (Nextcloud would give it to everyone)")
        for item in who:
            if not isinstance(item, str) or not nc.NC_NAME_RE.fullmatch(item):
                err(name, "nextcloud_storages", f"storage `{mount}`: `{item!r}` is not a Nextcloud user or group name", "letters, digits and _.@-")
        _check_folder(err, name, "nextcloud_storages", f"storage `{mount}`", storage["node"], storage["path"], cluster)
    dump_node = data.get("nextcloud_dump_node")
    if dump_node is None:
        err(name, "nextcloud_dump_node", "missing while nextcloud_enabled = True", "name the dnas node whose NFS export receives the nightly database dumps")
    else:
        _check_folder(err, name, "nextcloud_dump_node", "the database dumps", dump_node, data.get("nextcloud_dump_path"), cluster)
    schedule = data.get("nextcloud_dump_schedule")
    if isinstance(schedule, str) and not nc.CRON_RE.fullmatch(schedule):
        err(name, "nextcloud_dump_schedule", f"`{schedule}` is not a cron schedule", 'five cron fields, like "30 2 * * *"')


LAYER = Layer(
    "services",
    [
        Section("Services: Nextcloud on k3s (deploys/services.py)"),
        Key("nextcloud_enabled", flag(), False, "Nextcloud (files, WebDAV, CalDAV, CardDAV, sharing) on the cluster.", GROUPS),
        Key("nextcloud_domain", Kind(optional=True), None, "The name users reach it at (https://<domain>/); your DNS points it at the VIP.", GROUPS),
        Key("nextcloud_extra_domains", Kind(list), [], "More trusted names or addresses (e.g. the VIP) it answers to.", GROUPS),
        Key(
            "nextcloud_trusted_proxies",
            Kind(list),
            ["10.42.0.0/16"],
            "Where Traefik's requests come from (k3s's pod network): Nextcloud trusts their X-Forwarded-* headers.",
            GROUPS,
        ),
        Key("nextcloud_admin_user", Kind(pattern=nc.NC_NAME_RE, bad="is not a Nextcloud user name", fix="letters, digits and _.@-"), "admin", "", GROUPS),
        Key("nextcloud_admin_password", Kind(optional=True), None, "SECRET: the first login's password (secret('nextcloud_admin_password')).", GROUPS),
        Key("nextcloud_db_password", Kind(optional=True), None, "SECRET: MariaDB's nextcloud user.", GROUPS),
        Key("nextcloud_db_root_password", Kind(optional=True), None, "SECRET: MariaDB's root.", GROUPS),
        Key("nextcloud_redis_password", Kind(optional=True), None, "SECRET: Redis.", GROUPS),
        Key(
            "nextcloud_storage_class",
            Kind(choices=nc.STORAGE_CLASSES, optional=True),
            None,
            'Volumes of Nextcloud (program, config, its own data) and MariaDB: "longhorn" (replicated) or\n"local-path" (one node\'s disk; the pods stay on that node). None: longhorn when a k3s node has\nlonghorn_enabled, else local-path.',
            GROUPS,
        ),
        Key("nextcloud_size_gi", count(1, 100000), 20, "Size (GiB) of Nextcloud's volume: program, config and the files not on the dnas.", GROUPS),
        Key("nextcloud_db_size_gi", count(1, 10000), 5, "Size (GiB) of MariaDB's volume.", GROUPS),
        Key("nextcloud_upload_limit_mb", count(1, 1048576), 10240, "Largest upload (MiB) PHP and Apache accept.", GROUPS),
        Key(
            "nextcloud_storages",
            Kind(list),
            [],
            "dnas folders offered in Nextcloud as external storage (checked for changes on every access):\n"
            "mount (the folder users see), node (a dnas node), path (relative to its dnas_path, inside one of\n"
            "its writable nfs_exports open to every k3s node), users and/or groups who get it.\n"
            '[{"mount": "Photos", "node": "pi1", "path": "data/photos", "users": ["alice"], "groups": []}]',
            GROUPS,
            STORAGES,
        ),
        Key("nextcloud_dump_node", Kind(optional=True), None, "The dnas node receiving the nightly database dumps (over NFS).", GROUPS),
        Key(
            "nextcloud_dump_path",
            Kind(),
            "backups/nextcloud-db",
            "Folder of the dumps, relative to that node's dnas_path, inside one of its writable nfs_exports:\n"
            "nextcloud-<UTC time>.sql.gz, 0600, owned by the dnas owner. The backup layer collects it.",
            GROUPS,
        ),
        Key("nextcloud_dump_schedule", Kind(), "30 2 * * *", "When the dump runs (cron, the cluster's time zone: UTC unless changed).", GROUPS),
        Key("nextcloud_dump_retain", count(1, 365), 7, "How many dumps are kept (the newest).", GROUPS),
        Key(
            "nextcloud_ready_timeout",
            count(10, 7200),
            1800,
            "Seconds the deploy waits for Nextcloud, MariaDB and Redis to roll out (the first start pulls the\n"
            "images and installs Nextcloud). Not waited for when k3s_install is \"off\" (no merged kubeconfig).",
            GROUPS,
        ),
    ],
    reads=("k3s_install", "k3s_kubeconfig", "k3s_kubeconfig_context"),
    check=check,
)

ServicesSettings = LAYER.settings_class


def settings(host) -> ServicesSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)


def nextcloud_settings(config: ServicesSettings, dnas_nodes: dict[str, tuple[str, str]], longhorn: bool = True) -> nc.NextcloudSettings:
    """
    The overlay's settings: `dnas_nodes` maps each dnas node to (its address, its dnas_path);
    `longhorn`: some k3s node runs Longhorn (the storage class when none is given).
    """

    def where(node: str, path: str) -> tuple[str, str]:
        server, dnas_path = dnas_nodes[node]
        return server, normpath(join(dnas_path, path))

    storages = []
    for entry in config.nextcloud_storages:
        server, path = where(entry["node"], entry["path"])
        storages.append(nc.Storage(entry["mount"], server, path, tuple(entry.get("users") or ()), tuple(entry.get("groups") or ())))
    dump_server, dump_path = where(config.nextcloud_dump_node, config.nextcloud_dump_path)
    return nc.NextcloudSettings(
        domain=config.nextcloud_domain,
        extra_domains=tuple(config.nextcloud_extra_domains),
        trusted_proxies=tuple(config.nextcloud_trusted_proxies),
        admin_user=config.nextcloud_admin_user,
        storage_class=config.nextcloud_storage_class or ("longhorn" if longhorn else "local-path"),
        html_size_gi=config.nextcloud_size_gi,
        db_size_gi=config.nextcloud_db_size_gi,
        upload_limit_mb=config.nextcloud_upload_limit_mb,
        storages=tuple(storages),
        dump_server=dump_server,
        dump_path=dump_path,
        dump_schedule=config.nextcloud_dump_schedule,
        dump_retain=config.nextcloud_dump_retain,
    )


def secrets_of(config: ServicesSettings) -> dict[str, str]:
    return {name: getattr(config, key) for name, key in nc.SECRET_KEYS.items()}


@deploy("services")
def services(settings: ServicesSettings, staged: dict[str, hp.StagedFile] | None, salt: str, wait: bool) -> None:
    """
    The services on one k3s server: Nextcloud's tree (`staged`, homecloud.services.stage) uploaded,
    built there with k3s's kustomize, its two manifests written when they changed; `wait` (the
    first server, k3s managed by homecloud): readiness. `staged` None (nextcloud_enabled off): the
    app manifest emptied (k3s deletes the workloads), the data manifest (volumes) kept, the tree
    and its secrets removed.
    """
    if staged is None:
        platform_ops.builds(
            name="Nextcloud is off: homecloud-nextcloud-app.yaml emptied (k3s deletes the workloads; the volumes stay)",
            digests={},
            disabled=[nc.APP_ADDON],
            root=nc.STAGE_ROOT,
        )
        platform_ops.tree(name="Nextcloud is off: its kustomize tree and secrets removed", files={}, root=nc.STAGE_ROOT, present=False)
        return
    platform_ops.tree(
        name="Nextcloud: kustomize module and overlays (root-only)",
        files={rel: (HiddenValue(f.text) if f.secret else f.text) for rel, f in staged.items()},
        secret_files=[rel for rel, f in staged.items() if f.secret],
        root=nc.STAGE_ROOT,
    )
    secrets_ops.fingerprints(
        name="Fingerprints of Nextcloud's secrets (no secret stored)",
        salt=salt,
        secrets={key: HiddenValue(getattr(settings, key)) for key in SECRET_KEYS},
    )
    built = platform_ops.builds(
        name="Nextcloud: build with k3s kubectl kustomize, manifests for k3s (homecloud-nextcloud.yaml: volumes; -app: the rest)",
        digests={addon: hp.tree_digest(staged, addon) for addon in nc.ADDONS},
        root=nc.STAGE_ROOT,
    )
    if wait:
        from homecloud.readiness import python_call_wait_platform

        python.call(
            name="Wait until Nextcloud, MariaDB and Redis are rolled out",
            function=python_call_wait_platform,
            kubeconfig=settings.k3s_kubeconfig,
            context=settings.k3s_kubeconfig_context,
            addons=["nextcloud"],
            timeout=settings.nextcloud_ready_timeout,
            # Only after a manifest changed: a no-op run makes no round trip to the API.
            _if=built.did_change,
        )


@deploy("services")
def nextcloud_folders(folders: list[str], dump_folder: str | None, user: str) -> None:
    """
    On a dnas node: the folders Nextcloud mounts over NFS (`folders`, every level below
    dnas_path) and the dump folder (0700), owned by the dnas owner. An NFS volume of a folder
    that does not exist would keep the pod from starting.
    """
    owned_folders("Nextcloud folder", folders, user)
    if dump_folder:
        files.directory(name=f"Nextcloud dump folder {dump_folder} (0700, {user})", path=dump_folder, user=user, group=user, mode="700")


def _folders_on(config: ServicesSettings, node: str, dnas_path: str) -> tuple[list[str], str | None]:
    """(storage folders with their levels, the dump folder) that `node` holds for Nextcloud."""
    folders: list[str] = []
    for entry in config.nextcloud_storages:
        if entry["node"] == node:
            folders += folder_levels(dnas_path, entry["path"])
    dump = None
    if config.nextcloud_dump_node == node:
        levels = folder_levels(dnas_path, config.nextcloud_dump_path)
        folders += levels[:-1]
        dump = levels[-1]
    return list(dict.fromkeys(folders)), dump


_STAGED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def apply(state, host) -> None:
    """Nextcloud's dnas folders on the dnas nodes; its tree and manifests on the k3s servers (staged once per run)."""
    from homecloud.fingerprints import salt_for

    servers = group_hosts(state, "k3s_servers")
    if "dnas" in host.groups and servers and settings(servers[0]).nextcloud_enabled:
        folders, dump = _folders_on(settings(servers[0]), host.name, host.data.get("dnas_path", "/srv/dnas"))
        if folders or dump:
            nextcloud_folders(folders, dump, user=host.data.get("dnas_user", "dnas"))
    if host not in servers:
        return
    config = settings(host)
    staged = None
    if config.nextcloud_enabled:
        dnas_nodes = {h.name: (address(h), h.data.get("dnas_path", "/srv/dnas")) for h in group_hosts(state, "dnas")}
        k3s_nodes = servers + group_hosts(state, "k3s_agents")
        wanted = nextcloud_settings(config, dnas_nodes, longhorn=any(h.data.get("longhorn_enabled", True) for h in k3s_nodes))
        cached = _STAGED.get(state)
        if cached is None or cached[0] != (wanted, secrets_of(config)):
            cached = _STAGED[state] = ((wanted, secrets_of(config)), nc.stage(wanted, secrets_of(config)))
        staged = cached[1]
    wait = staged is not None and host.name == servers[0].name and config.k3s_install != "off"
    services(config, staged, salt=salt_for(state, host), wait=wait)
