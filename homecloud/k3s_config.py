"""
k3s configuration: the flags each supported k3s minor release accepts in
/etc/rancher/k3s/config.yaml, and the rendering of that file and of registries.yaml.

The flag table below was written from the k3s CLI reference (docs.k3s.io, `k3s server` and
`k3s agent`) for the minor releases listed in SUPPORTED_MINORS. A config file key is the flag
name without its leading dashes. A key unknown to the pinned release is refused here with a
did-you-mean, before any host changes: on the node a typo would at best be ignored silently
and at worst stop k3s from starting, and either would only show up later.

1.34 to 1.37 were added from the k3s release notes (k3s-io/docs docs/release-notes/v1.3X.X.md):
they announce one new flag in that span (1.37's write-kubeconfig-name) and none removed; a flag
added without a note would be refused here until it is added (a false refusal, never a silent
pass).

To support a new minor release: read its `k3s server --help` / `k3s agent --help` (or the docs
page of that release), add the flags it introduced with that minor as their first version in
`_SINCE`, and add the minor to SUPPORTED_MINORS.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable

import yaml

SUPPORTED_MINORS = ((1, 29), (1, 30), (1, 31), (1, 32), (1, 33), (1, 34), (1, 35), (1, 36), (1, 37))

VERSION_RE = re.compile(r"v(\d+)\.(\d+)\.(\d+)\+k3s(\d+)")

# Flags of `k3s agent`; a server runs an agent, so they are valid on servers too.
AGENT_FLAGS = frozenset(
    """
    debug v vmodule log alsologtostderr
    token token-file server data-dir
    node-name with-node-id node-label node-taint
    image-credential-provider-bin-dir image-credential-provider-config
    protect-kernel-defaults selinux lb-server-port
    docker container-runtime-endpoint default-runtime pause-image snapshotter private-registry
    system-default-registry disable-default-registry-endpoint airgap-extra-registry
    node-ip node-external-ip node-internal-dns node-external-dns resolv-conf
    flannel-iface flannel-conf flannel-cni-conf
    kubelet-arg kube-proxy-arg
    rootless prefer-bundled-bin vpn-auth vpn-auth-file enable-pprof bind-address
    """.split()
)

# Flags only `k3s server` has.
SERVER_FLAGS = frozenset(
    """
    advertise-address advertise-port tls-san tls-san-security
    https-listen-port supervisor-port apiserver-port apiserver-bind-address
    cluster-cidr service-cidr service-node-port-range cluster-dns cluster-domain
    flannel-backend flannel-ipv6-masq flannel-external-ip egress-selector-mode
    servicelb-namespace write-kubeconfig write-kubeconfig-mode write-kubeconfig-group helm-job-image
    agent-token agent-token-file cluster-init cluster-reset cluster-reset-restore-path
    kube-apiserver-arg etcd-arg kube-controller-manager-arg kube-scheduler-arg
    kube-cloud-controller-manager-arg
    kine-tls datastore-endpoint datastore-cafile datastore-certfile datastore-keyfile
    etcd-expose-metrics etcd-disable-snapshots etcd-snapshot-name etcd-snapshot-schedule-cron
    etcd-snapshot-retention etcd-snapshot-dir etcd-snapshot-compress
    etcd-s3 etcd-s3-endpoint etcd-s3-endpoint-ca etcd-s3-skip-ssl-verify etcd-s3-access-key
    etcd-s3-secret-key etcd-s3-bucket etcd-s3-region etcd-s3-folder etcd-s3-insecure etcd-s3-timeout
    default-local-storage-path disable disable-scheduler disable-cloud-controller
    disable-kube-proxy disable-network-policy disable-helm-controller
    disable-etcd disable-apiserver disable-controller-manager disable-agent
    embedded-registry supervisor-metrics secrets-encryption
    """.split()
)

# Flags that appeared after the oldest supported minor: flag -> (major, minor) of first release.
_SINCE: dict[str, tuple[int, int]] = {
    "image-service-endpoint": (1, 30),
    "etcd-s3-config-secret": (1, 30),
    "etcd-s3-proxy": (1, 30),
    "nonroot-devices": (1, 31),
    "etcd-s3-session-token": (1, 31),
    "secrets-encryption-provider": (1, 31),
    "etcd-s3-bucket-lookup-type": (1, 32),
    "etcd-s3-retention": (1, 32),
    # k3s-io/docs docs/release-notes/v1.37.X.md, v1.37.0+k3s1: "Added `--write-kubeconfig-name`
    # server flag" (#14440). The v1.34.X-v1.36.X notes announce no flag added or removed.
    "write-kubeconfig-name": (1, 37),
}
_SINCE_AGENT = {"image-service-endpoint", "nonroot-devices"}

# Keys homecloud writes itself from inventory data; setting them by hand would fight the deploy.
MANAGED_KEYS = {
    "token": "k3s_token (or the token generated on the first server)",
    "token-file": "k3s_token",
    "agent-token": "k3s_token",
    "server": "the VIP (vip) for joining nodes",
    "cluster-init": "the first host of k3s_servers",
    "node-ip": "node_ip",
    "node-name": "the inventory host name",
    "node-label": "k3s_node_labels",
    "node-taint": "k3s_node_taints",
    "private-registry": "k3s_registries",
    "data-dir": "(the reset and the token reader expect /var/lib/rancher/k3s)",
}

DEFAULT_DATA_DIR = "/var/lib/rancher/k3s"
CONFIG_PATH = "/etc/rancher/k3s/config.yaml"
REGISTRIES_PATH = "/etc/rancher/k3s/registries.yaml"


class K3sConfigError(ValueError):
    """A k3s config value is wrong; the message says how to fix it."""


def parse_version(version: str) -> tuple[int, int, int, int]:
    match = VERSION_RE.fullmatch(version or "")
    if not match:
        raise K3sConfigError(f"`{version}` is not a k3s release; write it like v1.36.4+k3s1")
    return tuple(int(x) for x in match.groups())  # type: ignore[return-value]


def known_flags(version: str, role: str) -> frozenset[str]:
    """The config keys k3s `role` ("server" or "agent") of `version` accepts."""
    major, minor, _, _ = parse_version(version)
    if (major, minor) not in SUPPORTED_MINORS:
        supported = ", ".join(f"{a}.{b}" for a, b in SUPPORTED_MINORS)
        raise K3sConfigError(
            f"k3s {version}: homecloud knows the config flags of k3s {supported} only. Pin one of "
            f"those, or add the flags of {major}.{minor} to homecloud/k3s_config.py"
        )
    flags = set(AGENT_FLAGS)
    if role == "server":
        flags |= SERVER_FLAGS
    for flag, since in _SINCE.items():
        if (major, minor) >= since and (role == "server" or flag in _SINCE_AGENT):
            flags.add(flag)
    return frozenset(flags)


def check_keys(extra: dict[str, Any], version: str, role: str) -> list[str]:
    """Problems with user-supplied config keys, each with a fix; empty when all is well."""
    problems = []
    flags = known_flags(version, role)
    for key in sorted(extra):
        if key in MANAGED_KEYS:
            problems.append(f"`{key}` is set by homecloud from {MANAGED_KEYS[key]}; remove it from k3s_{role}_config")
        elif key not in flags:
            hint = difflib.get_close_matches(key, sorted(flags), n=1, cutoff=0.6)
            other = "agent" if role == "server" else "server"
            since = _SINCE.get(key)
            if since and (role == "server" or key in _SINCE_AGENT) and parse_version(version)[:2] < since:
                fix = f"it needs k3s {since[0]}.{since[1]} or newer"
            elif hint:
                fix = f"did you mean `{hint[0]}`?"
            elif key in known_flags(version, other):
                fix = f"it is a k3s {other} flag only, an {role} does not accept it" if role == "agent" else f"it is a k3s {other} flag only, a {role} does not accept it"
            else:
                fix = f"see `k3s {role} --help` of {version}"
            problems.append(f"`{key}` is not a k3s {role} flag in {version}: {fix}")
    return problems


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def render_config(
    role: str,
    version: str,
    node_ip: str,
    node_name: str,
    server_url: str | None = None,
    cluster_init: bool = False,
    token: str | None = None,
    tls_sans: Iterable[str] = (),
    node_labels: Iterable[str] = (),
    node_taints: Iterable[str] = (),
    registries: bool = False,
    extra: dict[str, Any] | None = None,
) -> str:
    """
    The text of /etc/rancher/k3s/config.yaml (stable key order, so equal input gives equal
    bytes and a re-run changes nothing). Raises K3sConfigError for unknown or managed keys.
    """
    if role not in ("server", "agent"):
        raise K3sConfigError(f"role must be server or agent, not {role!r}")
    extra = dict(extra or {})
    problems = check_keys(extra, version, role)
    if problems:
        raise K3sConfigError("; ".join(problems))
    if role == "agent" and (cluster_init or not server_url):
        raise K3sConfigError("an agent needs server_url and cannot cluster-init")
    if cluster_init and server_url:
        raise K3sConfigError("the first server runs cluster-init and joins no server_url")

    config: dict[str, Any] = {}
    config["node-name"] = node_name
    config["node-ip"] = node_ip
    if cluster_init:
        config["cluster-init"] = True
    if server_url:
        config["server"] = server_url
    if token:
        config["token"] = token
    labels = _as_list(node_labels)
    if labels:
        config["node-label"] = labels
    taints = _as_list(node_taints)
    if taints:
        config["node-taint"] = taints
    if registries:
        config["private-registry"] = REGISTRIES_PATH
    if role == "server":
        sans: list[str] = []
        for san in list(tls_sans) + _as_list(extra.pop("tls-san", None)):
            if san and san not in sans:
                sans.append(san)
        if sans:
            config["tls-san"] = sans
        # The kubeconfig k3s writes holds the cluster admin's key: readable by root only.
        config.setdefault("write-kubeconfig-mode", extra.pop("write-kubeconfig-mode", "0600"))
    config.update(extra)
    header = (
        "# Written by homecloud (deploys/k3s.py); edits are replaced on the next run.\n"
        "# Change k3s_server_config / k3s_agent_config in the inventory instead.\n"
    )
    return header + yaml.safe_dump(config, default_flow_style=False, sort_keys=False)


def etcd_snapshots(schedule: str, retention: int, snapshot_dir: str) -> dict[str, Any]:
    """k3s's scheduled etcd snapshots (k3s_etcd_snapshot_*): config.yaml keys of a server."""
    return {"etcd-snapshot-schedule-cron": schedule, "etcd-snapshot-retention": retention, "etcd-snapshot-dir": snapshot_dir}


def render_registries(registries: dict[str, Any]) -> str:
    """registries.yaml from the k3s_registries dict (mirrors / configs)."""
    if not isinstance(registries, dict) or not set(registries) <= {"mirrors", "configs"}:
        raise K3sConfigError("k3s_registries must be a dict with `mirrors` and/or `configs`")
    return "# Written by homecloud from k3s_registries.\n" + yaml.safe_dump(
        registries, default_flow_style=False, sort_keys=True
    )
