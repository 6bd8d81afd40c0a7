"""
Layer 2, k3s: highly available with embedded etcd, a pinned and checksum-verified binary
(downloaded or from an airgap folder), config, labels and taints, the kubeconfig merged on the
controller.
"""

from __future__ import annotations

import re

from pyinfra import logger
from pyinfra.api import HiddenValue, deploy
from pyinfra.operations import python
from pyinfra.operations.util import any_changed

from facts.k3s import K3sArch
from homecloud import k3s_binary, k3s_config
from homecloud.cluster import address, group_hosts
from homecloud.k3s_config import VERSION_RE as K3S_VERSION_RE
from homecloud.kubeconfig import server_url as make_server_url
from homecloud.readiness import python_call_wait_ready
from homecloud.run import this_run
from homecloud.schema import K3S_GROUPS, Cluster, InventoryError, Key, Kind, Layer, Section, count, is_secret_bad, thawed
from operations import k3s as k3s_ops, secrets as secrets_ops

LONGHORN_NO_DISK_LABEL = "node.longhorn.io/create-default-disk=false"
# The platform's Longhorn chart (kubernetes/platform/longhorn) puts disks and its pods only on these.
LONGHORN_DISK_LABEL = "node.longhorn.io/create-default-disk=true"

LABEL_RE = re.compile(r"([a-z0-9A-Z]([a-z0-9A-Z._/-]*[a-z0-9A-Z])?)=([A-Za-z0-9._-]*)")
TAINT_RE = re.compile(
    r"[a-z0-9A-Z]([a-z0-9A-Z._/-]*[a-z0-9A-Z])?(=[A-Za-z0-9._-]*)?:(NoSchedule|PreferNoSchedule|NoExecute)"
)


def check(err, cluster: Cluster) -> None:
    servers = cluster.group("k3s_servers")
    agents = cluster.group("k3s_agents")
    if servers or agents:
        installs = {s.data.get("k3s_install") for s in servers + agents}
        if installs - {"off"}:
            if len(servers) == 0:
                err(", ".join(s.name for s in agents), "k3s_servers", "agents but no server", "put 1, 3 or 5 hosts in k3s_servers")
            elif len(servers) % 2 == 0:
                err(
                    ", ".join(s.name for s in servers),
                    "k3s_servers",
                    f"{len(servers)} servers: embedded etcd needs a majority, so {len(servers)} servers survive no more "
                    f"failures than {len(servers) - 1} and a split stops the cluster",
                    f"use an odd number of servers ({len(servers) - 1} or {len(servers) + 1}); move one to k3s_agents",
                )
    for spec in servers + agents:
        version = spec.data.get("k3s_version")
        if spec.data.get("k3s_install") == "airgap" and not spec.data.get("k3s_airgap_dir"):
            err(spec.name, "k3s_airgap_dir", "k3s_install is 'airgap' but no folder is given", "set k3s_airgap_dir to the folder holding k3s, k3s-arm64, k3s-armhf and sha256sum-*.txt")
        token = spec.data.get("k3s_token")
        if isinstance(token, str) and (is_secret_bad(token) or len(token) < 16):
            err(spec.name, "k3s_token", "secret left at an example value or shorter than 16 characters", "remove it (a token is generated on the first server) or set a long random one")
        for key, pattern in (("k3s_node_labels", LABEL_RE), ("k3s_node_taints", TAINT_RE)):
            values = spec.data.get(key)
            for value in values if isinstance(values, list) else ():
                if not isinstance(value, str) or not pattern.fullmatch(value):
                    example = "disk=ssd" if key == "k3s_node_labels" else "dedicated=nas:NoSchedule"
                    err(spec.name, key, f"`{value!r}` is malformed", f"write it like {example}")
        for key, role in (("k3s_server_config", "server"), ("k3s_agent_config", "agent")):
            if (role == "server") != (spec in servers):
                continue  # a server reads k3s_server_config only, an agent k3s_agent_config
            extra = spec.data.get(key)
            if isinstance(extra, dict) and extra and isinstance(version, str) and K3S_VERSION_RE.fullmatch(version):
                from homecloud.k3s_config import K3sConfigError, check_keys

                try:
                    problems = check_keys(extra, version, role)
                except K3sConfigError as e:
                    problems = [str(e)]
                for problem in problems:
                    if "; " in problem:
                        what, fix = problem.split("; ", 1)
                    elif problem.startswith("`") and ": " in problem:
                        what, fix = problem.split(": ", 1)
                    else:
                        what, fix = problem, f"change {key} or k3s_version"
                    err(spec.name, key, what, fix)
        registries = spec.data.get("k3s_registries")
        if isinstance(registries, dict) and not set(registries) <= {"mirrors", "configs"}:
            err(spec.name, "k3s_registries", "must be a dict with `mirrors` and/or `configs`", "write it as in the k3s registries.yaml docs")


LAYER = Layer(
    "k3s",
    [
        Section("k3s (deploys/k3s.py)"),
        Key(
            "k3s_install",
            Kind(choices=("download", "airgap", "off")),
            "download",
            'Where the k3s binary comes from: "download" (the controller downloads the pinned release from\n'
            "GitHub once and checks its sha256), \"airgap\" (from k3s_airgap_dir on the controller, no\n"
            'internet needed anywhere) or "off" (the k3s layer is skipped, with a notice).',
            K3S_GROUPS,
        ),
        Key(
            "k3s_version",
            Kind(pattern=K3S_VERSION_RE, bad="is not a k3s release", fix="write it like v1.36.4+k3s1 (see the k3s releases page)"),
            "v1.36.4+k3s1",
            "The pinned k3s release (vMAJOR.MINOR.PATCH+k3sN). Bump it to upgrade, one server at a time.",
            K3S_GROUPS,
        ),
        Key(
            "k3s_airgap_dir",
            Kind(optional=True),
            None,
            "Airgap folder on the controller: k3s, k3s-arm64, k3s-armhf, sha256sum-<arch>.txt and\n"
            "optional k3s-airgap-images-<arch>.tar[.zst|.gz], as named on the k3s release page (the armhf\n"
            "files are sha256sum-arm.txt and k3s-airgap-images-arm.tar.zst there).",
            K3S_GROUPS,
        ),
        Key("k3s_download_dir", Kind(), "~/.cache/homecloud/k3s", "Controller cache for downloaded binaries.", K3S_GROUPS),
        Key(
            "k3s_token",
            Kind(optional=True),
            None,
            "SECRET (optional): cluster join token. None: generated once on the first server and read\n"
            "from it by the joining nodes at run time.",
            K3S_GROUPS,
        ),
        Key("k3s_server_config", Kind(dict), {}, "Extra keys for /etc/rancher/k3s/config.yaml (checked against the pinned version's flags).", ("k3s_servers",)),
        Key("k3s_agent_config", Kind(dict), {}, "", ("k3s_agents",)),
        Key("k3s_node_labels", Kind(list), [], 'Per host: node labels ("key=value") and taints ("key=value:Effect").', K3S_GROUPS),
        Key("k3s_node_taints", Kind(list), [], "", K3S_GROUPS),
        Key("k3s_registries", Kind(dict, optional=True), None, "Optional registries.yaml content (mirrors, auth) as a dict.", K3S_GROUPS),
        Key("k3s_kubeconfig", Kind(), "~/.kube/config", "Where the kubeconfig is merged on the controller, and the context name.", ("k3s_servers",)),
        Key(
            "k3s_kubeconfig_context",
            Kind(pattern=re.compile(r".*\S.*"), bad="is not a context name", fix="set it to a name like homecloud"),
            "homecloud",
            "",
            ("k3s_servers",),
        ),
        Key("k3s_ready_timeout", count(10, 7200), 600, "Seconds to wait for nodes Ready / kube-system deployments available.", K3S_GROUPS),
        Key("k3s_etcd_snapshot_schedule", Kind(), "0 */6 * * *", "Cron schedule of k3s's etcd snapshots (etcd-snapshot-schedule-cron); the backup layer saves them.", ("k3s_servers",)),
        Key("k3s_etcd_snapshot_retention", count(1, 1000), 12, "Snapshots k3s keeps (etcd-snapshot-retention).", ("k3s_servers",)),
        Key("k3s_etcd_snapshot_dir", Kind(), "/var/lib/rancher/k3s/server/db/snapshots", "Where k3s writes them (etcd-snapshot-dir).", ("k3s_servers",)),
    ],
    reads=("vip", "longhorn_enabled"),
    check=check,
)

K3sSettings = LAYER.settings_class


def settings(host) -> K3sSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)


@deploy("k3s")
def k3s(
    settings: K3sSettings,
    role: str,
    node_name: str,
    node_address: str,
    release: k3s_binary.K3sRelease,
    arch: str,
    first_server: str,
    first_server_sudo: bool,
    is_first: bool,
    servers: dict[str, str],
    agents: list[str],
    sudo: bool,
    salt: str,
) -> None:
    """
    k3s on one node: `role` "server" or "agent"; `release` the verified binary (and images) for
    its `arch`; `servers` name -> address of every server, the first (`first_server`, which
    runs cluster-init) first; `agents` the agents' names; `sudo` whether this host uses sudo
    (the kubeconfig is read with it), `first_server_sudo` the same for the first server (the
    joining nodes read the generated token there). `salt` keys the fingerprint of a token set
    in the inventory, kept on the node (homecloud/fingerprints.py).
    """
    version = settings.k3s_version
    api_url = make_server_url(settings.vip)
    labels = list(settings.k3s_node_labels)
    if arch == "armhf" or not settings.longhorn_enabled:
        # Longhorn (if installed later) creates no default disk here: armv7 cannot run it,
        # and nodes without its host prerequisites must not get replicas.
        if LONGHORN_NO_DISK_LABEL not in labels:
            labels.append(LONGHORN_NO_DISK_LABEL)
    elif LONGHORN_DISK_LABEL not in labels and LONGHORN_NO_DISK_LABEL not in labels:
        labels.append(LONGHORN_DISK_LABEL)
    token = settings.k3s_token
    token_arg = HiddenValue(token) if token else None
    timeout = settings.k3s_ready_timeout
    server_names = list(servers)
    sans = [settings.vip] + server_names + list(servers.values())
    extra = dict(settings.k3s_server_config if role == "server" else settings.k3s_agent_config)
    if role == "server":
        extra = {**k3s_config.etcd_snapshots(settings.k3s_etcd_snapshot_schedule, settings.k3s_etcd_snapshot_retention, settings.k3s_etcd_snapshot_dir), **extra}
    registries = thawed(settings.k3s_registries)

    def node_ops(joining: bool, serial: bool, stop_if_failed: list[str]):
        """The operations of one node; called from one place per role, so op order follows."""
        ops = [
            k3s_ops.binary(
                name=f"k3s {version} binary ({release.arch})",
                src=str(release.binary.path),
                sha256=release.binary.sha256,
            )
        ]
        if release.images:
            ops.append(
                k3s_ops.images(
                    name="k3s airgap images",
                    archives=[{"src": str(a.path), "sha256": a.sha256} for a in release.images],
                )
            )
        ops.append(
            k3s_ops.config(
                name=f"k3s {role} config",
                role=role,
                version=version,
                node_ip=node_address,
                node_name=node_name,
                server_url=api_url if joining else None,
                cluster_init=not joining,
                token=token_arg,
                token_from=None if token else (first_server if joining else None),
                sudo_token_read=first_server_sudo,
                tls_sans=sans if role == "server" else [],
                node_labels=labels,
                node_taints=list(settings.k3s_node_taints),
                extra=thawed(extra),
                registries=registries,
            )
        )
        ops.append(k3s_ops.unit(name=f"k3s {role} systemd unit", role=role))
        k3s_ops.service(
            name=f"Restart k3s {role} where its binary or config changed, wait until Ready",
            role=role,
            node_name=node_name,
            restarted=True,
            ready_timeout=timeout,
            stop_if_failed=stop_if_failed,
            _serial=serial,
            _if=any_changed(*ops),
        )
        k3s_ops.service(
            name=f"k3s {role} is running",
            role=role,
            node_name=node_name,
            ready_timeout=timeout,
            _serial=serial,
        )
        if token:
            secrets_ops.fingerprints(
                name="Fingerprint of the k3s token (no secret stored)",
                salt=salt,
                secrets={"k3s_token": token_arg},
            )

    if is_first:
        node_ops(joining=False, serial=False, stop_if_failed=[])
        k3s_ops.kubeconfig(
            name="Merge the cluster kubeconfig into " + str(settings.k3s_kubeconfig),
            dest=settings.k3s_kubeconfig,
            context=settings.k3s_kubeconfig_context,
            server_url=api_url,
            sudo_read=sudo,
        )
    if role == "server" and not is_first:
        # pyinfra's serial order among these hosts is not the inventory order: a server refuses
        # to restart when any other server failed earlier in this run.
        node_ops(joining=True, serial=True, stop_if_failed=[n for n in server_names if n != node_name])
    if role == "agent":
        # Agents restart one at a time after the servers; a server that failed stops them too.
        node_ops(joining=True, serial=True, stop_if_failed=server_names)
    if is_first:
        python.call(
            name=f"Wait until every node is Ready and kube-system is available (through {settings.vip})",
            function=python_call_wait_ready,
            kubeconfig=settings.k3s_kubeconfig,
            context=settings.k3s_kubeconfig_context,
            expected_nodes=server_names + list(agents),
            timeout=timeout,
        )


def apply(state, host) -> None:
    """The layer on `host` when it is a k3s server or agent (and k3s_install is not "off")."""
    from homecloud.fingerprints import salt_for

    config = settings(host)
    servers = group_hosts(state, "k3s_servers")
    agents = group_hosts(state, "k3s_agents")
    is_server = host in servers
    is_agent = host in agents and not is_server
    if not (is_server or is_agent):
        return
    if config.k3s_install == "off":
        if this_run(state).first_notice("k3s off"):
            logger.warning(
                'homecloud: k3s_install is "off": the k3s layer is skipped, nothing of k3s is installed '
                'or changed (set k3s_install = "download" or "airgap" to deploy it).'
            )
        return
    role = "server" if is_server else "agent"

    # Unknown config keys (typos, flags of another k3s release) stop the run here, while pyinfra
    # loads the deploy: before any operation of any layer ran on any host.
    extra = thawed(config.k3s_server_config if is_server else config.k3s_agent_config)
    try:
        problems = k3s_config.check_keys(extra, config.k3s_version, role)
        if config.k3s_registries is not None:
            k3s_config.render_registries(thawed(config.k3s_registries))
    except k3s_config.K3sConfigError as e:
        problems = [str(e)]
    if problems:
        raise InventoryError(
            f"{host.name}: k3s_{role}_config: " + "; ".join(problems) + "\nNothing was changed on any host."
        )

    # The architecture decides the binary; it is a property of the board, read once here.
    arch = host.get_fact(K3sArch)
    release = k3s_binary.resolve(
        config.k3s_install,
        config.k3s_version,
        arch,
        download_dir=config.k3s_download_dir,
        airgap_dir=config.k3s_airgap_dir,
        cache=this_run(state).k3s_releases,
    )
    first = servers[0]
    k3s(
        config,
        role=role,
        node_name=host.name,
        node_address=address(host),
        release=release,
        arch=arch,
        first_server=first.name,
        first_server_sudo=bool(first.data.get("_sudo")),
        is_first=host.name == first.name,
        servers={h.name: address(h) for h in servers},
        agents=[h.name for h in agents],
        sudo=bool(host.data.get("_sudo")),
        salt=salt_for(state, host),
    )
