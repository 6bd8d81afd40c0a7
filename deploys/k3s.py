"""
Layer 2: k3s, highly available with embedded etcd, pinned and upgradable, airgap-capable.

    pyinfra -y inventories/pi.py deploys/k3s.py

- k3s_servers: the first runs `cluster-init`, the others join https://<vip>:6443 one at a
  time; k3s_agents join through the VIP afterwards.
- The binary for each node's architecture is verified on the controller first (downloaded once
  into k3s_download_dir, or taken from k3s_airgap_dir). Without one, the deploy stops here,
  while pyinfra loads it - before any operation of any layer ran on any host.
- Bumping k3s_version uploads the new binary and restarts servers one by one (each must be
  Ready again before the next), then agents. A server that fails stops the upgrade.
- At the end the admin kubeconfig is merged into k3s_kubeconfig on the controller and the
  cluster is checked through the VIP (every node Ready, kube-system deployments available).
"""

from pyinfra import host, logger, state
from pyinfra.api import HiddenValue
from pyinfra.operations import python
from pyinfra.operations.util import any_changed

from facts.k3s import K3sArch
from homecloud import k3s_binary, k3s_config
from homecloud.cluster import address, group_hosts
from homecloud.kubeconfig import server_url as make_server_url
from homecloud.fingerprints import check_secrets, salt_for
from homecloud.model import InventoryError, check_state
from homecloud.readiness import python_call_wait_ready
from operations import k3s, secrets

check_state(state)
check_secrets(state)

LONGHORN_NO_DISK_LABEL = "node.longhorn.io/create-default-disk=false"

servers = group_hosts(state, "k3s_servers")
agents = group_hosts(state, "k3s_agents")
install = host.data.get("k3s_install", "download")
is_server = host in servers
is_agent = host in agents and not is_server

if install == "off":
    if (is_server or is_agent) and not getattr(state, "_homecloud_k3s_off_notice", False):
        state._homecloud_k3s_off_notice = True
        logger.warning(
            'homecloud: k3s_install is "off": the k3s layer is skipped, nothing of k3s is installed '
            'or changed (set k3s_install = "download" or "airgap" to deploy it).'
        )
elif is_server or is_agent:
    version = host.data.get("k3s_version")
    sudo = bool(host.data.get("_sudo"))
    first = servers[0]
    vip = host.data.get("vip")
    api_url = make_server_url(vip)
    role = "server" if is_server else "agent"

    # Unknown config keys (typos, flags of another k3s release) stop the run here, while pyinfra
    # loads the deploy: before any operation of any layer ran on any host.
    try:
        problems = k3s_config.check_keys(dict(host.data.get(f"k3s_{role}_config") or {}), version, role)
        if host.data.get("k3s_registries") is not None:
            k3s_config.render_registries(host.data.get("k3s_registries"))
    except k3s_config.K3sConfigError as e:
        problems = [str(e)]
    if problems:
        raise InventoryError(
            f"{host.name}: k3s_{role}_config: " + "; ".join(problems) + "\nNothing was changed on any host."
        )

    # The architecture decides the binary; it is a property of the board, read once here.
    arch = host.get_fact(K3sArch)
    if not hasattr(state, "_homecloud_k3s_releases"):
        state._homecloud_k3s_releases = {}
    release = k3s_binary.resolve(
        install,
        version,
        arch,
        download_dir=host.data.get("k3s_download_dir"),
        airgap_dir=host.data.get("k3s_airgap_dir"),
        cache=state._homecloud_k3s_releases,
    )

    labels = list(host.data.get("k3s_node_labels") or [])
    if arch == "armhf" or not host.data.get("longhorn_enabled"):
        # Longhorn (if installed later) creates no default disk here: armv7 cannot run it,
        # and nodes without its host prerequisites must not get replicas.
        if LONGHORN_NO_DISK_LABEL not in labels:
            labels.append(LONGHORN_NO_DISK_LABEL)
    token = host.data.get("k3s_token")
    token_arg = HiddenValue(token) if token else None
    timeout = int(host.data.get("k3s_ready_timeout") or 600)
    server_names = [h.name for h in servers]
    sans = [vip] + server_names + [address(h) for h in servers]

    def node_ops(joining: bool, serial: bool, stop_if_failed: list[str]):
        """The operations of one node; called from one place per role, so op order follows."""
        ops = [
            k3s.binary(
                name=f"k3s {version} binary ({release.arch})",
                src=str(release.binary.path),
                sha256=release.binary.sha256,
            )
        ]
        if release.images:
            ops.append(
                k3s.images(
                    name="k3s airgap images",
                    archives=[{"src": str(a.path), "sha256": a.sha256} for a in release.images],
                )
            )
        ops.append(
            k3s.config(
                name=f"k3s {role} config",
                role=role,
                version=version,
                node_ip=address(host),
                node_name=host.name,
                server_url=api_url if joining else None,
                cluster_init=not joining,
                token=token_arg,
                token_from=None if token else (first.name if joining else None),
                sudo_token_read=bool(first.data.get("_sudo")),
                tls_sans=sans if role == "server" else [],
                node_labels=labels,
                node_taints=list(host.data.get("k3s_node_taints") or []),
                extra=dict(host.data.get(f"k3s_{role}_config") or {}),
                registries=host.data.get("k3s_registries"),
            )
        )
        ops.append(k3s.unit(name=f"k3s {role} systemd unit", role=role))
        k3s.service(
            name=f"Restart k3s {role} where its binary or config changed, wait until Ready",
            role=role,
            node_name=host.name,
            restarted=True,
            ready_timeout=timeout,
            stop_if_failed=stop_if_failed,
            _serial=serial,
            _if=any_changed(*ops),
        )
        k3s.service(
            name=f"k3s {role} is running",
            role=role,
            node_name=host.name,
            ready_timeout=timeout,
            _serial=serial,
        )
        if token:
            secrets.fingerprints(
                name="Fingerprint of the k3s token (no secret stored)",
                salt=salt_for(state, host),
                secrets={"k3s_token": token_arg},
            )

    if host.name == first.name:
        node_ops(joining=False, serial=False, stop_if_failed=[])
        k3s.kubeconfig(
            name="Merge the cluster kubeconfig into " + str(host.data.get("k3s_kubeconfig")),
            dest=host.data.get("k3s_kubeconfig"),
            context=host.data.get("k3s_kubeconfig_context"),
            server_url=api_url,
            sudo_read=sudo,
        )
    if is_server and host.name != first.name:
        # pyinfra's serial order among these hosts is not the inventory order: a server refuses
        # to restart when any other server failed earlier in this run.
        node_ops(joining=True, serial=True, stop_if_failed=[n for n in server_names if n != host.name])
    if is_agent:
        # Agents restart one at a time after the servers; a server that failed stops them too.
        node_ops(joining=True, serial=True, stop_if_failed=server_names)
    if host.name == first.name:
        python.call(
            name=f"Wait until every node is Ready and kube-system is available (through {vip})",
            function=python_call_wait_ready,
            kubeconfig=host.data.get("k3s_kubeconfig"),
            context=host.data.get("k3s_kubeconfig_context"),
            expected_nodes=[h.name for h in servers + agents],
            timeout=timeout,
        )
