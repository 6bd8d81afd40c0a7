"""
Facts about k3s on a node: architecture, installed files (by checksum), the join token, the
kubeconfig k3s wrote, the state of its systemd unit, the registered nodes, and what a reset
would have to clean up.
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

K3S_DATA_DIR = "/var/lib/rancher/k3s"
TOKEN_PATH = f"{K3S_DATA_DIR}/server/token"
KUBECONFIG_PATH = "/etc/rancher/k3s/k3s.yaml"
MACHINE_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armhf",
    "armv7": "armhf",
    "armhf": "armhf",
    "arm": "armhf",
}


def arch_from_machine(machine: str | None) -> str | None:
    """Map `uname -m` / `dpkg --print-architecture` output to amd64, arm64 or armhf."""
    if not machine:
        return None
    return MACHINE_ARCH.get(machine.strip().lower())


class K3sArch(FactBase):
    """
    The node's k3s architecture from the kernel (``uname -m``): ``amd64``, ``arm64`` or
    ``armhf`` (armv7; k3s has no armv6 build: a Pi Zero / Pi 1 gives ``None``), ``None`` for anything k3s has no release for.

    .. code:: python

        "arm64"
    """

    def command(self):
        return "uname -m"

    def process(self, output):
        return arch_from_machine(output[0] if output else None)


class K3sFile(FactBase):
    """
    A file's sha256 and octal mode, or ``None`` when there is no such regular file.

    .. code:: python

        {"sha256": "9f86d0...", "mode": "600"}
    """

    def command(self, path):
        p = shlex.quote(path)
        return f"if [ -f {p} ]; then stat -c %a {p} && sha256sum {p}; fi || true"

    def process(self, output):
        lines = [line.strip() for line in output if line.strip()]
        if len(lines) < 2:
            return None
        return {"mode": lines[0], "sha256": lines[1].split()[0]}


class K3sToken(FactBase):
    """
    The cluster join token k3s wrote on a server (``/var/lib/rancher/k3s/server/token``), or
    ``None`` before the server first started. Needs root (pass ``_sudo=True`` as needed).
    A secret: the operations read it with pyinfra's fact output off (``-vvv`` would print it)
    and never put it in a command line.

    .. code:: python

        "K10a1b2...::server:c3d4..."
    """

    def command(self, path=TOKEN_PATH):
        return f"cat {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output):
        value = "".join(line.strip() for line in output)
        return value or None


class K3sKubeconfig(FactBase):
    """
    The admin kubeconfig k3s writes on a server (``/etc/rancher/k3s/k3s.yaml``) as text, or
    ``None`` when it does not exist (yet). Needs root.

    .. code:: python

        "apiVersion: v1\\nclusters:\\n- cluster: ..."
    """

    def command(self, path=KUBECONFIG_PATH):
        return f"cat {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output):
        text = "\n".join(output)
        return (text + "\n") if text.strip() else None


class K3sService(FactBase):
    """
    State of a k3s systemd unit (``k3s`` or ``k3s-agent``): whether its unit file is loaded,
    running and enabled. ``loaded`` is False when there is no such unit.

    .. code:: python

        {"loaded": True, "active": True, "enabled": True, "state": "active"}
    """

    def command(self, unit):
        u = shlex.quote(f"{unit}.service")
        return f"systemctl show --property=LoadState,ActiveState,UnitFileState -- {u} 2>/dev/null || true"

    @staticmethod
    def default():
        return {"loaded": False, "active": False, "enabled": False, "state": "unknown"}

    def process(self, output):
        values = {}
        for line in output:
            if "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
        return {
            "loaded": values.get("LoadState") == "loaded",
            "active": values.get("ActiveState") in ("active", "reloading", "activating"),
            "enabled": values.get("UnitFileState") in ("enabled", "enabled-runtime"),
            "state": values.get("ActiveState") or "unknown",
        }


class K3sNodes(FactBase):
    """
    The nodes registered in the cluster, as seen from a server with the admin kubeconfig:
    name -> Ready ("True", "False", "Unknown"). Empty when k3s does not answer here.

    .. code:: python

        {"node1": "True", "node4": "Unknown"}
    """

    def command(self):
        return (
            "if [ -x /usr/local/bin/k3s ] && [ -f /etc/rancher/k3s/k3s.yaml ]; then "
            "/usr/local/bin/k3s kubectl get nodes --request-timeout=20s -o "
            "jsonpath='{range .items[*]}{.metadata.name}{\" \"}"
            "{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}' 2>/dev/null; fi || true"
        )

    @staticmethod
    def default():
        return {}

    def process(self, output):
        nodes = {}
        for line in output:
            parts = line.split()
            if len(parts) == 1:
                nodes[parts[0]] = "Unknown"  # no Ready condition yet
            elif len(parts) == 2 and parts[1] in ("True", "False", "Unknown"):
                nodes[parts[0]] = parts[1]
        return nodes


# Everything a k3s install leaves on a node that the reset removes (never anything else).
RESET_PATHS = (
    "/usr/local/bin/k3s",
    "/etc/systemd/system/k3s.service",
    "/etc/systemd/system/k3s-agent.service",
    "/etc/rancher/k3s",
    "/etc/rancher/node",
    K3S_DATA_DIR,
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/run/k3s",
    "/run/flannel",
)
# k3s's local-path provisioner keeps the data of its volumes in <data dir>/storage: user data,
# never removed by a reset.
LOCAL_STORAGE = "storage"
RESET_LINKS = ("cni0", "flannel.1", "flannel-v6.1", "kube-ipvs0", "flannel-wg", "flannel-wg-v6")


class K3sLeftovers(FactBase):
    """
    What of a k3s install is on the node: the paths among ``RESET_PATHS`` that exist, the
    mounts below /run/k3s, /var/lib/kubelet and /var/lib/rancher/k3s (deepest first), the
    CNI network links, and the k3s units that are not inactive (running, restarting, failed).

    .. code:: python

        {"paths": ["/usr/local/bin/k3s", "/var/lib/rancher/k3s"],
         "mounts": ["/run/k3s/containerd/io.containerd.grpc.v1.cri/sandboxes/ab/shm"],
         "links": ["cni0", "flannel.1"], "running": ["k3s"]}
    """

    def command(self):
        paths = " ".join(p for p in RESET_PATHS if p != K3S_DATA_DIR)
        links = " ".join(RESET_LINKS)
        return (
            f"for p in {paths}; do [ -e \"$p\" ] && echo \"path $p\"; done; "
            # The data dir counts only when it holds more than storage/ (local-path volumes: kept).
            f"[ -n \"$(ls -A {K3S_DATA_DIR} 2>/dev/null | grep -vx {LOCAL_STORAGE})\" ] && echo \"path {K3S_DATA_DIR}\"; "
            "awk '$2 ~ \"^(/run/k3s|/var/lib/kubelet|/var/lib/rancher/k3s)/\" && "
            f"$2 !~ \"^{K3S_DATA_DIR}/{LOCAL_STORAGE}(/|$)\" {{print \"mount \" $2}}' /proc/self/mounts; "
            f"for l in {links}; do [ -e \"/sys/class/net/$l\" ] && echo \"link $l\"; done; "
            "for u in k3s k3s-agent; do s=$(systemctl is-active \"$u\" 2>/dev/null); "
            "case \"$s\" in inactive|unknown|'') ;; *) echo \"running $u $s\";; esac; done; true"
        )

    @staticmethod
    def default():
        return {"paths": [], "mounts": [], "links": [], "running": []}

    def process(self, output):
        result = {"paths": [], "mounts": [], "links": [], "running": []}
        for line in output:
            kind, _, value = line.strip().partition(" ")
            if kind == "running":
                value = value.split(" ")[0]  # "k3s activating": the unit name
            key = {"path": "paths", "mount": "mounts", "link": "links", "running": "running"}.get(kind)
            if key and value:
                result[key].append(value)
        result["mounts"].sort(key=lambda m: (-m.count("/"), m))
        return result
