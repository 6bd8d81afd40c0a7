"""
Layer 2, k3s: highly available with embedded etcd, a pinned and checksum-verified binary
(downloaded or from an airgap folder), config, labels and taints, the kubeconfig merged on the
controller.
"""

from __future__ import annotations

import re

from homecloud.k3s_config import VERSION_RE as K3S_VERSION_RE
from homecloud.schema import K3S_GROUPS, Cluster, Key, Kind, Layer, Section, count, is_secret_bad

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
            Kind(pattern=K3S_VERSION_RE, bad="is not a k3s release", fix="write it like v1.31.4+k3s1 (see the k3s releases page)"),
            "v1.31.4+k3s1",
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
    ],
    reads=("vip", "longhorn_enabled"),
    check=check,
)

K3sSettings = LAYER.settings_class


def settings(host) -> K3sSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)
