"""
Layer 5, the Kubernetes platform: the add-ons of kubernetes/platform/<addon>/ (Traefik tuned,
Longhorn with snapshots and backups) applied by k3s itself on every k3s server.

On each server: the modules and an overlay generated from the inventory (homecloud/platform.py
`stage`) are uploaded to /var/lib/homecloud/platform (0700, files 0600, the backup credentials
from the secret store through a secretGenerator env file, never on a command line), built there
with `k3s kubectl kustomize` (the kustomize inside the pinned, checksum-verified k3s binary: the
controller needs no kubectl and no other tool is trusted at deploy time) and written 0600 to
/var/lib/rancher/k3s/server/manifests/homecloud-<addon>.yaml only when the build differs from
the file there (facts.platform.PlatformBuilds). Every server holds the same files, so k3s
converges while one server is down. A disabled add-on's file becomes an empty manifest, which
k3s's deploy controller turns into deleting what it created (homecloud.platform.tombstone).
"""

from __future__ import annotations

import ipaddress
import re
from posixpath import join, normpath

from pyinfra import logger
from pyinfra.api import HiddenValue, deploy
from pyinfra.operations import python

from homecloud import platform as hp
from homecloud.cluster import group_hosts
from homecloud.run import this_run
from homecloud.schema import Cluster, HostSpec, Key, Kind, Layer, Section, count, flag, is_secret_bad, node_ip
from operations import platform as platform_ops, secrets as secrets_ops

from .nfs import writable as nfs_writable

SERVERS = ("k3s_servers",)
NFS_TARGET_RE = re.compile(r"nfs://(?P<node>[A-Za-z0-9][A-Za-z0-9_.-]*)/(?P<path>\S+)")
LOCAL_ONLY_DOMAINS = ("home.arpa", "local", "lan", "internal", "localhost")
DEFAULT_DOMAIN = "home.arpa"  # RFC 8375: the special-use domain for home networks
# What a host's merged data calls each platform.Settings field (the rest are derived).
FIELD_KEYS = {
    "domain": "platform_domain",
    "lan_cidr": "platform_lan_cidr",
    "tls": "platform_tls",
    "acme_email": "platform_acme_email",
    "acme_server": "platform_acme_server",
    "longhorn_nodes": "longhorn_enabled",  # e.g. a node name Kubernetes refuses
    "longhorn_replicas": "platform_longhorn_replicas",
    "longhorn_data_path": "longhorn_data_path",
    "longhorn_backup_target": "platform_backup_target",
    "longhorn_snapshot_cron": "platform_snapshot_cron",
    "longhorn_snapshot_retain": "platform_snapshot_retain",
    "longhorn_backup_cron": "platform_backup_cron",
    "longhorn_backup_retain": "platform_backup_retain",
    "longhorn_chart_version": "platform_longhorn_chart_version",
    "acme_storage_class": "platform_tls",
    "addons": "platform_longhorn",
    "server_ips": "node_ip",
    "alert_receiver": "platform_alert_receiver",
    "alert_email_to": "platform_alert_email_to",
    "alert_email_from": "platform_alert_email_from",
    "alert_smtp_smarthost": "platform_alert_smtp_smarthost",
    "alert_smtp_username": "platform_alert_smtp_username",
}
MONITORING_SECRETS = {"email": "platform_alert_smtp_password", "webhook": "platform_alert_webhook_url"}


def _k3s_on(spec: HostSpec) -> bool:
    return spec.data.get("k3s_install") != "off"


def longhorn_nodes(cluster: Cluster) -> list[HostSpec]:
    """The k3s nodes that hold Longhorn disks: longhorn_enabled and not armv7."""
    return [s for s in cluster.k3s_nodes if s.data.get("longhorn_enabled") is True and s.data.get("node_arch") != "armhf"]


def active(cluster: Cluster) -> bool:
    """The platform is deployed: there are k3s servers with k3s on, and platform_enabled is not False."""
    servers = cluster.group("k3s_servers")
    return bool(servers) and _k3s_on(servers[0]) and servers[0].data.get("platform_enabled") is not False


def addons_of(cluster: Cluster) -> tuple[str, ...]:
    data = cluster.group("k3s_servers")[0].data
    addons = []
    if data.get("platform_traefik", True):
        addons.append("traefik")
    longhorn = data.get("platform_longhorn")
    if longhorn is True or (longhorn is None and longhorn_nodes(cluster)):
        addons.append("longhorn")
    if data.get("platform_monitoring") is True:
        addons.append("monitoring")
    if data.get("platform_dashboard") is True:
        addons.append("dashboard")
    if data.get("platform_portainer") is True:
        addons.append("portainer")
    return tuple(addons)


def _lan_cidr(spec: HostSpec) -> str | None:
    given = spec.data.get("platform_lan_cidr")
    if given is not None:
        return given
    ip, prefix = node_ip(spec), spec.data.get("network_prefix", 24)
    try:
        return str(ipaddress.ip_interface(f"{ip}/{prefix}").network)
    except ValueError:
        return None


def backup_url(cluster: Cluster, target: str | None) -> str | None:
    """Longhorn's backup target URL: nfs://<dnas node>/<export> becomes nfs://<its IP>:<exported folder>."""
    if target is None:
        return None
    match = NFS_TARGET_RE.fullmatch(target)
    if not match:
        return target
    spec = next((s for s in cluster.group("dnas") if s.name == match["node"]), None)
    if spec is None:
        return target
    folder = normpath(join(spec.data.get("dnas_path", "/srv/dnas"), match["path"]))
    return f"nfs://{node_ip(spec)}:{folder}"


def settings_for(cluster: Cluster) -> hp.Settings:
    """The platform settings (homecloud/platform.py) from the inventory; `check` ran before."""
    data = cluster.group("k3s_servers")[0].data
    nodes = longhorn_nodes(cluster)
    addons = addons_of(cluster)
    replicas = data.get("platform_longhorn_replicas")
    if replicas is None:
        replicas = max(1, min(3, len(nodes)))
    tls = data.get("platform_tls", "selfsigned")
    return hp.Settings(
        domain=data.get("platform_domain") or DEFAULT_DOMAIN,
        lan_cidr=_lan_cidr(cluster.group("k3s_servers")[0]),
        tls=tls,
        acme_email=data.get("platform_acme_email") if tls == "acme" else None,
        acme_server=data.get("platform_acme_server", "production"),
        acme_storage_class="longhorn" if "longhorn" in addons else "local-path",
        longhorn_nodes=tuple(s.name for s in nodes),
        longhorn_replicas=replicas,
        longhorn_data_path=nodes[0].data.get("longhorn_data_path", "/var/lib/longhorn") if nodes else "/var/lib/longhorn",
        longhorn_backup_target=backup_url(cluster, data.get("platform_backup_target")),
        longhorn_snapshot_cron=data.get("platform_snapshot_cron", "0 2 * * *"),
        longhorn_snapshot_retain=data.get("platform_snapshot_retain", 7),
        longhorn_backup_cron=data.get("platform_backup_cron", "0 3 * * *"),
        longhorn_backup_retain=data.get("platform_backup_retain", 14),
        longhorn_chart_version=data.get("platform_longhorn_chart_version"),
        addons=addons,
        longhorn_ui="longhorn" in addons and "traefik" in addons and bool(data.get("platform_longhorn_ui_password")),
        server_ips=tuple(node_ip(s) for s in cluster.group("k3s_servers")),
        alert_receiver=data.get("platform_alert_receiver"),
        alert_email_to=data.get("platform_alert_email_to"),
        alert_email_from=data.get("platform_alert_email_from"),
        alert_smtp_smarthost=data.get("platform_alert_smtp_smarthost"),
        alert_smtp_username=data.get("platform_alert_smtp_username"),
    )


def secret_env(data) -> dict[str, dict[str, str]]:
    """The secretGenerator inputs: Longhorn's S3 credentials, monitoring's passwords and receiver."""
    out = {}
    if data.get("platform_portainer") is True:
        out["portainer"] = {"PORTAINER_ADMIN_PASSWORD": str(data.get("platform_portainer_admin_password"))}
    if data.get("platform_longhorn_ui_password"):
        out["longhorn-ui"] = {"LONGHORN_UI_PASSWORD": str(data.get("platform_longhorn_ui_password"))}
    if data.get("platform_monitoring") is True:
        monitoring = {"GRAFANA_ADMIN_PASSWORD": str(data.get("platform_grafana_admin_password"))}
        if data.get("platform_alert_smtp_password"):
            monitoring["SMTP_PASSWORD"] = str(data.get("platform_alert_smtp_password"))
        if data.get("platform_alert_webhook_url"):
            monitoring["WEBHOOK_URL"] = str(data.get("platform_alert_webhook_url"))
        out["monitoring"] = monitoring
    if not hp.is_s3(data.get("platform_backup_target")):
        return out
    env = {
        "AWS_ACCESS_KEY_ID": str(data.get("platform_backup_s3_access_key_id")),
        "AWS_SECRET_ACCESS_KEY": str(data.get("platform_backup_s3_secret_access_key")),
    }
    if data.get("platform_backup_s3_endpoint"):
        env["AWS_ENDPOINTS"] = str(data.get("platform_backup_s3_endpoint"))
    out["longhorn-backup"] = env
    return out


def check(err, cluster: Cluster) -> None:
    servers = cluster.group("k3s_servers")
    if not servers:
        return
    first = servers[0]
    data = first.data
    if not _k3s_on(first):
        for key in ("platform_enabled", "platform_longhorn"):
            if data.get(key) is True:
                err(first.name, key, "True, but k3s_install is \"off\": no cluster to put the add-on on", f'set k3s_install = "download" (or "airgap"), or remove {key}')
        return
    if not active(cluster):
        return
    for spec in servers[1:]:
        for key in (k.name for k in LAYER.keys):
            if spec.data.get(key) != data.get(key):
                err(spec.name, key, f"differs from {first.name}'s: the platform is one per cluster", f"give {key} the same value on every k3s server")
    addons = addons_of(cluster)
    tls = data.get("platform_tls")
    domain = data.get("platform_domain")
    if tls == "acme":
        if not domain:
            err(first.name, "platform_domain", "platform_tls is \"acme\" but no domain is given", "set platform_domain to the public name whose ports 80/443 your router forwards to the VIP, or use platform_tls = \"selfsigned\"")
        elif isinstance(domain, str) and any(domain == d or domain.endswith("." + d) for d in LOCAL_ONLY_DOMAINS):
            err(first.name, "platform_domain", f"`{domain}` is a LAN-only name: Let's Encrypt cannot validate it", "use a public domain you control, or platform_tls = \"selfsigned\"")
        if not data.get("platform_acme_email"):
            err(first.name, "platform_acme_email", "platform_tls is \"acme\" but no e-mail address is given", "set the address Let's Encrypt writes to about expiring certificates")
    nodes = longhorn_nodes(cluster)
    if "longhorn" in addons:
        if not nodes:
            err(first.name, "platform_longhorn", "True, but no k3s node has longhorn_enabled = True (armv7 boards cannot)", "enable Longhorn on at least one arm64/amd64 node, or set platform_longhorn = False")
        replicas = data.get("platform_longhorn_replicas")
        if isinstance(replicas, int) and nodes and replicas > len(nodes):
            err(first.name, "platform_longhorn_replicas", f"{replicas} replicas but {len(nodes)} Longhorn node(s) ({', '.join(s.name for s in nodes)})", f"at most {len(nodes)}: Longhorn puts each replica of a volume on another node")
        paths = {s.data.get("longhorn_data_path") for s in nodes}
        if len(paths) > 1:
            err(first.name, "longhorn_data_path", f"differs between the Longhorn nodes ({', '.join(sorted(map(str, paths)))}): the chart takes one", "give every Longhorn node the same longhorn_data_path")
    elif data.get("platform_backup_target") is not None:
        err(first.name, "platform_backup_target", "set, but the longhorn add-on is off", "remove it, or turn Longhorn on")
    if data.get("platform_portainer") is True and is_secret_bad(data.get("platform_portainer_admin_password")):
        err(first.name, "platform_portainer_admin_password", "Portainer is on but its admin password is not in the secret store", 'set platform_portainer_admin_password = secret("portainer_admin_password", length=20) (Portainer wants 12 characters or more)')
    for key in ("platform_monitoring", "platform_dashboard", "platform_portainer"):
        if data.get(key) is True and "traefik" not in addons:
            err(first.name, key, "True, but platform_traefik is False: its UI is only reached through the ingress", "set platform_traefik = True")
    ui = data.get("platform_longhorn_ui_password")
    if ui is not None and is_secret_bad(ui):
        err(first.name, "platform_longhorn_ui_password", "left at an example value", 'use secret("longhorn_ui_password"), or None to keep the UI unexposed')
    elif ui is not None and not {"longhorn", "traefik"} <= set(addons):
        err(first.name, "platform_longhorn_ui_password", "set, but the UI needs both the longhorn and the traefik add-on", "turn both on, or remove it")
    target = data.get("platform_backup_target")
    if "longhorn" in addons and isinstance(target, str):
        _check_target(err, cluster, first, target)
    if "monitoring" in addons:
        _check_monitoring(err, cluster, first)
    if nodes or "longhorn" not in addons:
        try:
            settings = settings_for(cluster)
        except (TypeError, ValueError):
            return  # reported by the type checks
        for problem in hp.check(settings):
            _, field_name, rest = problem.split(": ", 2)
            if field_name in ("longhorn_backup_target", "acme_email", "domain", "acme_storage_class", "addons") or (field_name == "longhorn_nodes" and not nodes):
                continue  # reported above with the inventory's own words
            what, _, fix = rest.partition(". Fix: ")
            err(first.name, FIELD_KEYS.get(field_name, field_name), what, fix)


def _check_monitoring(err, cluster: Cluster, first: HostSpec) -> None:
    data = first.data
    if is_secret_bad(data.get("platform_grafana_admin_password")):
        err(first.name, "platform_grafana_admin_password", "monitoring is on but Grafana's admin password is not in the secret store", 'set platform_grafana_admin_password = secret("grafana_admin_password")')
    receiver = data.get("platform_alert_receiver")
    key = MONITORING_SECRETS.get(receiver or "")
    if key and is_secret_bad(data.get(key)):
        err(first.name, key, f"the {receiver} alert receiver needs it, and it is not in the secret store", f'set {key} = secret("{key[len("platform_"):]}") after storing the value (HOMECLOUD_{key[len("platform_"):].upper()}=... once)')
    for spec in cluster.group("k3s_servers"):
        config = spec.data.get("k3s_server_config") or {}
        if isinstance(config, dict) and config.get("etcd-expose-metrics") is not True:
            err(spec.name, "k3s_server_config", "monitoring is on but etcd's metrics are only on 127.0.0.1 (the etcd-member-down alert could never fire)", 'add "etcd-expose-metrics": True to k3s_server_config')


def _check_target(err, cluster: Cluster, first: HostSpec, target: str) -> None:
    if hp.is_s3(target):
        for key in ("platform_backup_s3_access_key_id", "platform_backup_s3_secret_access_key"):
            value = first.data.get(key)
            if is_secret_bad(value):
                err(first.name, key, "the S3 backup target needs credentials, and there are none in the secret store", f'set {key} = secret("{key[len("platform_"):]}") after storing the value: HOMECLOUD_{key[len("platform_"):].upper()}=... in the environment once, or edit the store')
        return
    match = NFS_TARGET_RE.fullmatch(target)
    if not match:
        err(first.name, "platform_backup_target", f"`{target}` is neither nfs://<dnas node>/<export> nor s3://bucket@region/path/", 'write it like "nfs://pi1/longhorn-backup" (an export in that node\'s nfs_exports) or "s3://my-bucket@us-east-1/homecloud/"')
        return
    node, path = match["node"], normpath(match["path"])
    spec = next((s for s in cluster.group("dnas") if s.name == node), None)
    if spec is None:
        err(first.name, "platform_backup_target", f"`{node}` is not a dnas node", f"name one of the dnas group ({', '.join(s.name for s in cluster.group('dnas')) or 'none'})")
        return
    exports = spec.data.get("nfs_exports") if spec.data.get("nfs_enabled", True) else []
    paths = {normpath(e["path"]): e for e in exports or [] if isinstance(e, dict) and isinstance(e.get("path"), str)}
    if path not in paths:
        err(first.name, "platform_backup_target", f"{node} has no NFS export `{path}` (its nfs_exports: {', '.join(sorted(paths)) or 'none'})", f'add {{"path": "{path}", "networks": [<each k3s node address>/32], "read_only": False}} to {node}\'s nfs_exports, or name an existing export')
    elif not nfs_writable(paths[path]):
        err(first.name, "platform_backup_target", f"{node}'s export `{path}` is read-only: Longhorn cannot write backups there", f"set read_only = False on that export, or add one for backups")


LAYER = Layer(
    "platform",
    [
        Section("platform: Kubernetes add-ons applied by k3s (deploys/platform.py)"),
        Key("platform_enabled", Kind(bool, optional=True), None, "None: on when k3s is (k3s_install is not \"off\"). False: homecloud leaves the cluster's add-ons alone.", SERVERS),
        Key(
            "platform_domain",
            Kind(optional=True, pattern=re.compile(r"([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"), bad="is not a DNS name", fix="write it like home.example.org (lower case)"),
            None,
            "The name the UIs are reached under (<ui>.<domain>). None: home.arpa (LAN only, self-signed).",
            SERVERS,
        ),
        Key("platform_tls", Kind(choices=("selfsigned", "acme")), "selfsigned", '"selfsigned": Traefik\'s own certificate (LAN only); "acme": Let\'s Encrypt HTTP-01 (ports 80/443 forwarded to the VIP).', SERVERS),
        Key("platform_acme_email", Kind(optional=True), None, "Let's Encrypt account e-mail (platform_tls = \"acme\").", SERVERS),
        Key("platform_acme_server", Kind(choices=("production", "staging")), "production", '"staging" while testing: Let\'s Encrypt rate-limits production certificates.', SERVERS),
        Key("platform_lan_cidr", Kind(optional=True), None, "The LAN Traefik trusts X-Forwarded-* headers from. None: the first server's node_ip/network_prefix.", SERVERS),
        Key("platform_traefik", flag(), True, "Tune k3s's Traefik (HTTPS redirect, TLS, access log). False: k3s's defaults.", SERVERS),
        Key("platform_longhorn", Kind(bool, optional=True), None, "Longhorn (chart of charts.longhorn.io). None: on when a k3s node has longhorn_enabled.", SERVERS),
        Key("platform_longhorn_chart_version", Kind(optional=True), None, "None: the chart version checked offline (kubernetes/platform/longhorn/helmchart.yaml).", SERVERS),
        Key(
            "platform_longhorn_ui_password",
            Kind(optional=True),
            None,
            "SECRET (optional): exposes Longhorn's UI at https://longhorn.<domain> behind basic auth (user admin,\n"
            "bcrypt in a Traefik middleware). None: the UI is not exposed (kubectl port-forward only).",
            SERVERS,
        ),
        Key("platform_longhorn_replicas", count(1, 3, optional=True), None, "Replicas per volume. None: min(3, Longhorn nodes).", SERVERS),
        Key(
            "platform_backup_target",
            Kind(optional=True),
            None,
            'Longhorn backups: "nfs://<dnas node>/<export path>" (an entry of its nfs_exports) or\n'
            '"s3://bucket@region/path/" (credentials below). None: snapshots only, no backups.',
            SERVERS,
        ),
        Key("platform_backup_s3_access_key_id", Kind(optional=True), None, "SECRET (S3 target): access key id.", SERVERS),
        Key("platform_backup_s3_secret_access_key", Kind(optional=True), None, "SECRET (S3 target): secret access key.", SERVERS),
        Key("platform_backup_s3_endpoint", Kind(optional=True), None, "S3-compatible endpoint URL (MinIO, Garage ...); None: AWS.", SERVERS),
        Key("platform_snapshot_cron", Kind(), "0 2 * * *", "Daily snapshot of every Longhorn volume (cron, cluster time) and how many to keep.", SERVERS),
        Key("platform_snapshot_retain", count(1, 100), 7, "", SERVERS),
        Key("platform_backup_cron", Kind(), "0 3 * * *", "Daily backup to platform_backup_target and how many to keep.", SERVERS),
        Key("platform_backup_retain", count(1, 100), 14, "", SERVERS),
        Key(
            "platform_monitoring",
            flag(),
            False,
            "kube-prometheus-stack (Prometheus, Alertmanager, Grafana at grafana.<domain>, node-exporter on every\n"
            "node), about 1.2 GiB of memory on the cluster. Off by default: the inventory has no key for a node's\n"
            "memory, so homecloud cannot tell a 4 GB cluster from a 1 GB one. Needs \"etcd-expose-metrics\": True\n"
            "in k3s_server_config.",
            SERVERS,
        ),
        Key(
            "platform_dashboard",
            flag(),
            False,
            "Kubernetes Dashboard at https://dashboard.<domain> (about 300 MiB). Log in with a token:\n"
            "python -m homecloud.platform token [--read-only].",
            SERVERS,
        ),
        Key("platform_portainer", flag(), False, "Portainer CE at https://portainer.<domain> (about 100-250 MiB), user admin.", SERVERS),
        Key("platform_portainer_admin_password", Kind(optional=True), None, "SECRET (Portainer): the admin password.", SERVERS),
        Key("platform_grafana_admin_password", Kind(optional=True), None, "SECRET (monitoring): Grafana's admin password (user admin).", SERVERS),
        Key("platform_alert_receiver", Kind(optional=True, choices=("email", "webhook")), None, 'Where alerts go: "email", "webhook" (ntfy, Gotify ...); None: the Alertmanager UI only.', SERVERS),
        Key("platform_alert_email_to", Kind(optional=True), None, "E-mail receiver: to, from, the SMTP server (host:port, STARTTLS) and its user.", SERVERS),
        Key("platform_alert_email_from", Kind(optional=True), None, "", SERVERS),
        Key("platform_alert_smtp_smarthost", Kind(optional=True), None, "", SERVERS),
        Key("platform_alert_smtp_username", Kind(optional=True), None, "", SERVERS),
        Key("platform_alert_smtp_password", Kind(optional=True), None, "SECRET (e-mail receiver): the SMTP password.", SERVERS),
        Key("platform_alert_webhook_url", Kind(optional=True), None, "SECRET (webhook receiver): the URL alerts are POSTed to (it often holds a token).", SERVERS),
        Key("platform_ready_timeout", count(10, 7200), 900, "Seconds to wait for the add-ons' install jobs and workloads.", SERVERS),
    ],
    reads=("k3s_install", "k3s_kubeconfig", "k3s_kubeconfig_context", "vip"),
    check=check,
)

PlatformSettings = LAYER.settings_class


def settings(host) -> PlatformSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)


@deploy("platform")
def platform(
    config: PlatformSettings,
    files: dict[str, hp.StagedFile],
    enabled: list[str],
    disabled: list[str],
    secrets: dict[str, str],
    salt: str,
    wait: bool,
) -> None:
    """
    The add-ons on one k3s server: the tree uploaded, each add-on built and its manifest written
    when it changed, disabled add-ons emptied; `wait` on the first server: readiness.
    """
    platform_ops.tree(
        name="Platform: kustomize modules and overlays (root-only)",
        files={rel: (HiddenValue(f.text) if f.secret else f.text) for rel, f in files.items()},
        secret_files=[rel for rel, f in files.items() if f.secret],
    )
    if secrets:
        secrets_ops.fingerprints(
            name="Fingerprints of the platform's secrets (no secret stored)",
            salt=salt,
            secrets={k: HiddenValue(v) for k, v in secrets.items()},
        )
    built = platform_ops.builds(
        name="Platform: build with k3s kubectl kustomize, manifests for k3s's auto-deploy",
        digests={addon: hp.tree_digest(files, addon) for addon in enabled},
        disabled=disabled,
    )
    if wait and enabled:
        from homecloud.readiness import python_call_wait_platform

        python.call(
            name=f"Wait until the add-ons are installed and rolled out: {', '.join(enabled)}",
            function=python_call_wait_platform,
            kubeconfig=config.k3s_kubeconfig,
            context=config.k3s_kubeconfig_context,
            addons=list(enabled),
            timeout=config.platform_ready_timeout,
            # Only after a manifest changed: a no-op run makes no round trip to the API.
            _if=built.did_change,
        )


def cluster_of(state) -> Cluster:
    return Cluster([HostSpec(h.name, tuple(h.groups), h.data.dict()) for h in state.inventory])


def apply(state, host) -> None:
    """The layer on `host` when it is a k3s server and the platform is on."""
    from homecloud.fingerprints import salt_for

    servers = group_hosts(state, "k3s_servers")
    if host not in servers:
        return
    cluster = cluster_of(state)
    if not active(cluster):
        if this_run(state).first_notice("platform off"):
            logger.warning("homecloud: the platform layer is skipped (k3s off or platform_enabled = False): no add-on is changed.")
        return
    config = settings(host)
    data = cluster.group("k3s_servers")[0].data
    platform_settings = settings_for(cluster)
    env = secret_env(data)
    secrets = {}
    if "longhorn-backup" in env:
        secrets["platform_backup_s3_access_key_id"] = env["longhorn-backup"]["AWS_ACCESS_KEY_ID"]
        secrets["platform_backup_s3_secret_access_key"] = env["longhorn-backup"]["AWS_SECRET_ACCESS_KEY"]
    for key in ("platform_grafana_admin_password", "platform_alert_smtp_password", "platform_alert_webhook_url"):
        if "monitoring" in env and data.get(key):
            secrets[key] = str(data.get(key))
    if "portainer" in env:
        secrets["platform_portainer_admin_password"] = env["portainer"]["PORTAINER_ADMIN_PASSWORD"]
    if "longhorn-ui" in env:
        secrets["platform_longhorn_ui_password"] = env["longhorn-ui"]["LONGHORN_UI_PASSWORD"]
    files = hp.stage(platform_settings, env)
    enabled = list(platform_settings.addons)
    platform(
        config,
        files=files,
        enabled=enabled,
        disabled=[a for a in hp.ADDONS if a not in enabled],
        secrets=secrets,
        salt=salt_for(state, host),
        wait=host.name == servers[0].name,
    )
