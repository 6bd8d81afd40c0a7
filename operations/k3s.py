"""
k3s on a node without the curl | sh installer: the verified binary, airgap image archives,
/etc/rancher/k3s/config.yaml (+ registries.yaml), the systemd unit, the service (restart and
wait until the node is Ready again), the kubeconfig on the controller, and the reset.

Every decision comes from facts read in the operation body: a second run changes nothing.
Secrets (the join token) are only ever written into 0600 files, through a 0600 temporary file;
they never appear in a command line.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shlex
from typing import Any

from pyinfra import host, state
from pyinfra.api import FileUploadCommand, FunctionCommand, HiddenValue, OperationError, operation
from pyinfra.api.util import get_file_io

from facts.k3s import KUBECONFIG_PATH as K3S_YAML
from facts.k3s import K3S_DATA_DIR, LOCAL_STORAGE, K3sFile, K3sKubeconfig, K3sLeftovers, K3sNodes, K3sService, K3sToken
from homecloud import k3s_config
from homecloud.kubeconfig import KubeconfigError, merge, unmerge
from operations.system import secret_fact, write_file

BIN_PATH = "/usr/local/bin/k3s"
IMAGES_DIR = "/var/lib/rancher/k3s/agent/images"
UNIT_DIR = "/etc/systemd/system"
NODE_KUBECONFIG = "/var/lib/rancher/k3s/agent/kubelet.kubeconfig"


def unit_name(role: str) -> str:
    if role not in ("server", "agent"):
        raise OperationError(f"role must be 'server' or 'agent', not {role!r}")
    return "k3s" if role == "server" else "k3s-agent"


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@operation()
def binary(src: str, sha256: str, dest: str = BIN_PATH, present: bool = True):
    """
    Install the k3s binary verified on the controller; upload only when the node's copy has
    another checksum (install, upgrade or repair). The new binary is checked again on the
    node, then renamed over the old one (a running k3s keeps its old inode).

    + src: path of the verified binary on the controller
    + sha256: its sha256 (from the release's sha256sum-<arch>.txt)
    + dest: where it goes on the node
    + present: False removes the binary

    **Example:**

    .. code:: python

        k3s.binary(src=release.binary.path, sha256=release.binary.sha256)
    """
    current = host.get_fact(K3sFile, path=dest)
    q_dest = shlex.quote(dest)
    if not present:
        if current is None:
            host.noop(f"{dest} is absent")
            return
        yield f"rm -f {q_dest}"
        return
    if len(sha256 or "") != 64:
        raise OperationError(f"sha256 must be a 64-digit checksum, not {sha256!r}")
    if current and current["sha256"] == sha256.lower():
        if current["mode"] != "755":
            yield f"chmod 755 {q_dest}"
            return
        host.noop(f"k3s binary {dest} is already at sha256 {sha256[:12]}")
        return
    new = posixpath.join(posixpath.dirname(dest), "." + posixpath.basename(dest) + ".homecloud-new")
    q_new = shlex.quote(new)
    yield f"mkdir -p {shlex.quote(posixpath.dirname(dest))}"
    yield FileUploadCommand(src, new, remote_temp_filename=host.get_temp_filename(new))
    yield (
        f"echo {sha256.lower()}'  '{q_new} | sha256sum -c --quiet - "
        f"|| {{ rm -f {q_new}; echo 'homecloud: the uploaded k3s binary does not match sha256 {sha256.lower()}' >&2; exit 1; }}"
    )
    yield f"chmod 755 {q_new} && mv -f {q_new} {q_dest}"


@operation()
def images(archives: list[dict[str, str]], dest_dir: str = IMAGES_DIR, present: bool = True):
    """
    Put airgap image archives (k3s-airgap-images-<arch>.tar.zst ...) where k3s imports them at
    start; upload each only when the node's copy has another checksum.

    + archives: [{"src": controller path, "sha256": checksum}]; the file name is kept
    + dest_dir: the k3s agent images folder
    + present: False removes these archives from dest_dir

    **Example:**

    .. code:: python

        k3s.images(archives=[{"src": "/airgap/k3s-airgap-images-arm64.tar.zst", "sha256": "..."}])
    """
    changed = False
    for archive in archives:
        dest = posixpath.join(dest_dir, os.path.basename(archive["src"]))
        current = host.get_fact(K3sFile, path=dest)
        if not present:
            if current is not None:
                yield f"rm -f {shlex.quote(dest)}"
                changed = True
            continue
        if current and current["sha256"] == archive["sha256"].lower():
            continue
        if not changed:
            yield f"mkdir -p {shlex.quote(dest_dir)}"
        yield FileUploadCommand(archive["src"], dest, remote_temp_filename=host.get_temp_filename(dest))
        yield (
            f"echo {archive['sha256'].lower()}'  '{shlex.quote(dest)} | sha256sum -c --quiet - "
            f"|| {{ rm -f {shlex.quote(dest)}; echo 'homecloud: {os.path.basename(dest)} is corrupted after upload' >&2; exit 1; }}"
        )
        yield f"chmod 644 {shlex.quote(dest)}"
        changed = True
    if not changed:
        host.noop("airgap image archives are in place" if present else "no airgap image archives to remove")


@operation()
def config(
    role: str,
    version: str,
    node_ip: str,
    node_name: str,
    server_url: str | None = None,
    cluster_init: bool = False,
    token: str | HiddenValue | None = None,
    token_from: str | None = None,
    tls_sans: list[str] | None = None,
    node_labels: list[str] | None = None,
    node_taints: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    registries: dict[str, Any] | None = None,
    sudo_token_read: bool = False,
    present: bool = True,
):
    """
    Write /etc/rancher/k3s/config.yaml (mode 0600, it holds the token) and, when given,
    registries.yaml. Keys in ``extra`` are checked against the flags of ``version``.

    + role: "server" or "agent"
    + version: the pinned k3s version (selects the flag table)
    + node_ip: the node's LAN address (node-ip)
    + node_name: the Kubernetes node name
    + server_url: https://<vip>:6443 for joining nodes; None on the first server
    + cluster_init: True on the first server (embedded etcd)
    + token: the join token, when the inventory has one (k3s_token)
    + token_from: else the inventory name of the first server, whose generated token is read at run time
    + tls_sans: extra names/addresses for the API certificate (servers)
    + node_labels: ["key=value"]
    + node_taints: ["key=value:Effect"]
    + extra: more config.yaml keys (k3s_server_config / k3s_agent_config)
    + registries: content of registries.yaml (mirrors/configs), None leaves it alone
    + sudo_token_read: read the token on the first server with sudo
    + present: False removes both files

    **Example:**

    .. code:: python

        k3s.config(role="agent", version="v1.31.4+k3s1", node_ip="192.168.1.14",
                   node_name="pi4", server_url="https://192.168.1.240:6443", token_from="pi1")
    """
    path = k3s_config.CONFIG_PATH
    reg_path = k3s_config.REGISTRIES_PATH
    current = host.get_fact(K3sFile, path=path)
    current_reg = host.get_fact(K3sFile, path=reg_path) if registries is not None or not present else None
    if not present:
        paths = [p for p, c in ((path, current), (reg_path, current_reg)) if c is not None]
        if not paths:
            host.noop("k3s config files are absent")
            return
        yield "rm -f " + " ".join(paths)
        return

    if isinstance(token, HiddenValue):
        token = token.unmask()
    if token is None and token_from and not cluster_init:
        token = _read_token(token_from, sudo_token_read)
        if token is None:
            if state.is_executing:
                raise OperationError(
                    f"{host.name}: no join token: {token_from} has no /var/lib/rancher/k3s/server/token "
                    f"(did k3s start there?). Set k3s_token, or fix {token_from} first."
                )
            host.noop(f"the join token is read from {token_from} when the deploy runs")
            return
    try:
        text = k3s_config.render_config(
            role=role,
            version=version,
            node_ip=node_ip,
            node_name=node_name,
            server_url=server_url,
            cluster_init=cluster_init,
            token=token,
            tls_sans=tls_sans or [],
            node_labels=node_labels or [],
            node_taints=node_taints or [],
            registries=registries is not None,
            extra=extra,
        )
        reg_text = k3s_config.render_registries(registries) if registries is not None else None
    except k3s_config.K3sConfigError as e:
        raise OperationError(f"k3s config for {node_name}: {e}") from None

    # Both hold secrets (the join token; registry credentials): 0600 from the first byte. A file
    # that is there with other content (hand-edited, or from another installer) is kept as a backup.
    changed = yield from write_file(path, text, current, mode="600", backup=True, secret=True)
    if reg_text is not None:
        changed = (yield from write_file(reg_path, reg_text, current_reg, mode="600", backup=True, secret=True)) or changed
    if not changed:
        host.noop("k3s config is up to date")


def _read_token(token_from: str, sudo: bool) -> str | None:
    """The generated token of another host (cross-host fact, read when the operation runs)."""
    other = state.inventory.get_host(token_from, None) if hasattr(state.inventory, "get_host") else None
    if other is None:
        raise OperationError(f"token_from: {token_from!r} is not a host of the inventory")
    value = secret_fact(other, K3sToken, _sudo=sudo)
    return value.unmask() if isinstance(value, HiddenValue) else (value or None)


def _unit_text(role: str) -> str:
    command = "server" if role == "server" else "agent"
    description = "k3s server (homecloud)" if role == "server" else "k3s agent (homecloud)"
    return (
        "# Written by homecloud (deploys/k3s.py).\n"
        "[Unit]\n"
        f"Description={description}\n"
        "Documentation=https://docs.k3s.io\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=notify\n"
        "EnvironmentFile=-/etc/default/%N\n"
        "KillMode=process\n"
        "Delegate=yes\n"
        "User=root\n"
        "LimitNOFILE=1048576\n"
        "LimitNPROC=infinity\n"
        "LimitCORE=infinity\n"
        "TasksMax=infinity\n"
        "TimeoutStartSec=0\n"
        "Restart=always\n"
        "RestartSec=5s\n"
        "ExecStartPre=-/sbin/modprobe br_netfilter\n"
        "ExecStartPre=-/sbin/modprobe overlay\n"
        f"ExecStart={BIN_PATH} {command}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


@operation()
def unit(role: str, present: bool = True):
    """
    The systemd unit that runs k3s (k3s.service for servers, k3s-agent.service for agents),
    enabled at boot. Starting/restarting is `k3s.service`'s job.

    + role: "server" or "agent"
    + present: False stops, disables and removes the unit

    **Example:**

    .. code:: python

        k3s.unit(role="server")
    """
    name = unit_name(role)
    path = f"{UNIT_DIR}/{name}.service"
    current = host.get_fact(K3sFile, path=path)
    status = host.get_fact(K3sService, unit=name)
    if not present:
        if current is None and not status["loaded"]:
            host.noop(f"{name}.service is absent")
            return
        if status["active"] or status["enabled"]:
            yield f"systemctl disable --now {name}.service"
        if current is not None:
            yield f"rm -f {path}"
        yield "systemctl daemon-reload"
        return
    text = _unit_text(role)
    changed = False
    # homecloud's own unit, regenerated from the role: no backup.
    if (yield from write_file(path, text, current, mode="644")):
        yield "systemctl daemon-reload"
        changed = True
    if not status["enabled"]:
        yield f"systemctl enable {name}.service"
        changed = True
    if not changed:
        host.noop(f"{name}.service is installed and enabled")


def _ready_wait_command(node_name: str, timeout: int, unit: str) -> str:
    kube = shlex.quote(NODE_KUBECONFIG)
    node = shlex.quote(node_name)
    query = shlex.quote('{.status.conditions[?(@.type=="Ready")].status}')
    message = shlex.quote(
        f"homecloud: node {node_name} is not Ready {timeout} s after k3s started; "
        f"see `journalctl -u {unit}` on it. Stopping here."
    )
    return (
        f"deadline=$(( $(date +%s) + {int(timeout)} )); "
        f"until {BIN_PATH} kubectl --kubeconfig {kube} get node {node} -o jsonpath={query} "
        "--request-timeout=10s 2>/dev/null | grep -qx True; do "
        f'if [ "$(date +%s)" -ge "$deadline" ]; then echo {message} >&2; exit 1; fi; '
        "sleep 5; done"
    )


@operation()
def service(
    role: str,
    node_name: str,
    restarted: bool = False,
    ready_timeout: int = 300,
    stop_if_failed: list[str] | None = None,
    present: bool = True,
):
    """
    Keep k3s running; start or restart it and wait until the node is Ready again
    (`k3s kubectl get node <name>` on the node, bounded by ``ready_timeout``). Run it with
    ``_serial=True`` on servers for a rolling restart: a server that does not come back fails,
    and the following servers refuse to restart (``stop_if_failed``), so etcd keeps quorum.

    + role: "server" or "agent"
    + node_name: the Kubernetes node name
    + restarted: restart even when running (the binary or its config changed)
    + ready_timeout: seconds to wait for the node to be Ready
    + stop_if_failed: hosts that must not have failed in this run before this one restarts
    + present: False stops k3s

    **Example:**

    .. code:: python

        k3s.service(role="server", node_name="pi1", restarted=True, _serial=True,
                    _if=any_changed(bin_op, config_op, unit_op))
    """
    name = unit_name(role)
    status = host.get_fact(K3sService, unit=name)
    if not present:
        if not status["active"]:
            host.noop(f"{name} is stopped")
            return
        yield f"systemctl stop {name}.service"
        return
    if state.is_executing:
        for other_name in stop_if_failed or []:
            other = state.inventory.get_host(other_name, None)
            failed = other is not None and (
                other in getattr(state, "failed_hosts", set()) or state.get_results_for_host(other).error_ops
            )
            if failed:
                raise OperationError(
                    f"rolling k3s restart stopped before {host.name}: {other_name} failed earlier in this run. "
                    f"Fix {other_name} (journalctl -u k3s), then run the deploy again."
                )
    if restarted:
        yield f"systemctl restart {name}.service"
    elif not status["active"]:
        yield f"systemctl start {name}.service"
    else:
        host.noop(f"{name} is running")
        return
    yield _ready_wait_command(node_name, ready_timeout, name)


def _write_local(path: str, text: str) -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = path + ".homecloud-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@operation()
def kubeconfig(dest: str, context: str, server_url: str, sudo_read: bool = False, present: bool = True):
    """
    Merge the cluster's admin kubeconfig (fetched from this server) into a kubeconfig on the
    controller as ``context``, with the API server at ``server_url`` (the VIP); write it
    (mode 0600) only when it changed.

    + dest: the controller's kubeconfig path (~ is expanded)
    + context: the context (and cluster, user) name
    + server_url: https://<vip>:6443
    + sudo_read: read /etc/rancher/k3s/k3s.yaml with sudo
    + present: False removes the context from the controller's kubeconfig

    **Example:**

    .. code:: python

        k3s.kubeconfig(dest="~/.kube/config", context="homecloud", server_url="https://192.168.1.240:6443")
    """
    path = os.path.expanduser(dest)
    existing = None
    if os.path.isfile(path):
        with get_file_io(path, mode="r") as f:
            existing = f.read()
    if not present:
        new_text = unmerge(existing, context) if existing else None
        if new_text is None or new_text == existing:
            host.noop(f"context {context} is not in {dest}")
            return
        yield FunctionCommand(_write_local, (path, new_text), {})
        return
    cluster_text = secret_fact(host, K3sKubeconfig, path=K3S_YAML, _sudo=sudo_read)
    if not cluster_text:
        if state.is_executing:
            raise OperationError(f"{host.name} has no /etc/rancher/k3s/k3s.yaml: k3s did not start there")
        host.noop("the kubeconfig is fetched once k3s runs")
        return
    try:
        new_text = merge(existing, cluster_text, context, server_url)
    except KubeconfigError as e:
        raise OperationError(f"cannot merge the kubeconfig into {dest}: {e}") from None
    if new_text == existing:
        host.noop(f"{dest} already has context {context}")
        return
    yield FunctionCommand(_write_local, (path, new_text), {})


@operation()
def node_removed(node_names: list[str], drain_timeout: int = 120):
    """
    Drain and delete nodes from the cluster, run on a server that stays (agents first, then
    servers: deleting a server node also removes its etcd member). Nodes already gone are
    skipped; a node that is NotReady is deleted without waiting for its pods.

    + node_names: Kubernetes node names, in the order to remove them
    + drain_timeout: seconds to wait for each drain

    **Example:**

    .. code:: python

        k3s.node_removed(node_names=["pi4", "pi3", "pi2"])
    """
    nodes = host.get_fact(K3sNodes)
    kubectl = f"{BIN_PATH} kubectl"
    done = False
    for node in node_names:
        if node not in nodes:
            continue
        q = shlex.quote(node)
        if nodes[node] == "True":
            yield (
                f"{kubectl} drain {q} --ignore-daemonsets --delete-emptydir-data --force "
                f"--timeout={int(drain_timeout)}s"
            )
        yield f"{kubectl} delete node {q} --wait=true --timeout={int(drain_timeout)}s"
        done = True
    if not done:
        host.noop("none of " + ", ".join(node_names) + " is registered")


@operation()
def purged(present: bool = False):
    """
    Remove every trace of k3s from the node: stop its units and the containers they started,
    unmount its mounts, delete the CNI links, remove the binary, units, /etc/rancher/k3s,
    /etc/rancher/node and the data folders (/var/lib/rancher/k3s, /var/lib/kubelet,
    /var/lib/cni, /run/k3s). Touches nothing else (no dnas data, no other /var/lib/rancher,
    not /var/lib/rancher/k3s/storage: the data of local-path volumes).

    + present: must be False (this operation only removes)

    **Example:**

    .. code:: python

        k3s.purged()
    """
    if present:
        raise OperationError("k3s.purged only removes k3s; install it with the other k3s operations")
    left = host.get_fact(K3sLeftovers)
    if not any(left.values()):
        host.noop("k3s is not on this node")
        return
    for name in left["running"]:
        # KillMode=process leaves containerd shims and containers: kill the whole unit cgroup.
        yield f"systemctl kill --kill-whom=all --signal=SIGKILL {name}.service || true"
        yield f"systemctl stop {name}.service || true"
        yield f"systemctl reset-failed {name}.service || true"
    for unit_file in ("k3s", "k3s-agent"):
        if f"{UNIT_DIR}/{unit_file}.service" in left["paths"]:
            yield f"systemctl disable {unit_file}.service || true"
    for mount in left["mounts"]:
        yield f"umount -l {shlex.quote(mount)} || true"
    for link in left["links"]:
        yield f"ip link delete {shlex.quote(link)} || true"
    if left["paths"]:
        # --one-file-system: never descend into a volume still mounted below (e.g. a pod volume).
        others = [p for p in left["paths"] if p != K3S_DATA_DIR]
        if others:
            yield "rm -rf --one-file-system -- " + " ".join(shlex.quote(p) for p in others)
        if K3S_DATA_DIR in left["paths"]:
            # Everything of the data dir but storage/: the local-path volumes hold user data.
            yield (
                f"find {K3S_DATA_DIR} -mindepth 1 -maxdepth 1 ! -name {LOCAL_STORAGE} "
                "-exec rm -rf --one-file-system -- {} +"
            )
        # The data dir, /etc/rancher and /var/lib/rancher go too when they are empty now
        # (kept: local-path volumes, rke2 & co).
        yield f"rmdir --ignore-fail-on-non-empty {K3S_DATA_DIR} /etc/rancher /var/lib/rancher 2>/dev/null || true"
        yield "systemctl daemon-reload"

