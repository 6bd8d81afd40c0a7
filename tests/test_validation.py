"""
The inventory validation: every rule is shown failing on a deliberately broken inventory, with
the message the user sees. A good inventory (the shape of inventories/pi.py) passes.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

from homecloud.model import (
    DATA_KINDS,
    InventoryError,
    check_inventory,
    hosts_from_inventory_namespace,
    kind_problem,
    load_defaults,
    validate,
)

REPO = Path(__file__).resolve().parent.parent

CLUSTER = {
    "ssh_user": "pi",
    "_sudo": True,
    "vip": "192.168.1.240",
    "network_prefix": 24,
    "keepalived_auth_pass": "Vq8kZr2p",
    "samba_users": {"alice": "a-long-random-Passw0rd"},
    "syncthing_gui_password": "another-long-random-Passw0rd",
    "samba_shares": [{"name": "data", "path": "data", "read_only": False, "valid_users": ["alice"], "guest_ok": False}],
    "nfs_exports": [
        {"path": "data", "networks": ["192.168.1.0/24"]},
        {"path": "data/scans", "networks": ["192.168.1.20/32"], "read_only": False},
        {"path": "public", "networks": ["192.168.1.0/24"], "read_only": False},
    ],
}


BACKUP = {
    "backup_enabled": True,
    "backup_passphrase": "Zk3vQ9pLw2xR8tYb6nHc",
    "backup_targets": [{"name": "pi3", "type": "sftp", "host": "pi3"}],
}


def node(name, ip, **extra):
    return (name, {"ssh_hostname": ip, "node_ip": ip, **copy.deepcopy(CLUSTER), **extra})


def good_inventory():
    return {
        "k3s_servers": [
            node("pi1", "192.168.1.11", dnas_device="LABEL=homecloud-data"),
            node("pi2", "192.168.1.12", dnas_device="LABEL=homecloud-data"),
            node("pi3", "192.168.1.13"),
        ],
        "k3s_agents": [node("pi4", "192.168.1.14")],
        "dnas": ["pi1", "pi2"],
    }


def errors_of(namespace):
    specs, errors = hosts_from_inventory_namespace(namespace)
    return errors + validate(specs)


def set_host(namespace, host, **data):
    for group in ("k3s_servers", "k3s_agents"):
        for index, entry in enumerate(namespace.get(group, [])):
            if isinstance(entry, tuple) and entry[0] == host:
                namespace[group][index] = (host, {**entry[1], **data})
                return namespace
    raise KeyError(host)


def set_all(namespace, **data):
    for host in ("pi1", "pi2", "pi3", "pi4"):
        try:
            set_host(namespace, host, **data)
        except KeyError:
            pass
    return namespace


def test_good_inventory_passes():
    assert errors_of(good_inventory()) == []


def test_example_pi_inventory_passes():
    namespace = {"__file__": str(REPO / "inventories" / "pi.py")}
    source = (REPO / "inventories" / "pi.py").read_text()
    exec(compile(source, "pi.py", "exec"), namespace)  # raises InventoryError if invalid


def _servers(*ips):
    return [node(f"pi{i + 1}", ip) for i, ip in enumerate(ips)]


BAD = {
    "bad_ip": (
        lambda ns: set_host(ns, "pi2", node_ip="192.168.1.300"),
        "pi2: node_ip: `192.168.1.300` is not a valid IPv4 address",
    ),
    "missing_ip": (
        lambda ns: ns["k3s_agents"].__setitem__(0, ("pi4", {k: v for k, v in CLUSTER.items()})),
        "pi4: node_ip: missing (the host name is not an IPv4 address)",
    ),
    "duplicate_ip": (
        lambda ns: set_host(ns, "pi3", node_ip="192.168.1.12"),
        "pi3: node_ip: `192.168.1.12` is used by pi2, pi3",
    ),
    "duplicate_host_name": (
        lambda ns: ns["k3s_servers"].append(node("pi1", "192.168.1.21")),
        "pi1: inventory: the host is listed twice in group `k3s_servers`",
    ),
    "vip_outside_subnet": (
        lambda ns: set_all(ns, vip="192.168.2.240"),
        "pi1: vip: `192.168.2.240` is outside the node's subnet 192.168.1.0/24",
    ),
    "vip_is_node_ip": (
        lambda ns: set_all(ns, vip="192.168.1.13"),
        "pi1: vip: `192.168.1.13` is the address of node pi3. Fix: the VIP must be a free address no node uses",
    ),
    "vip_missing": (
        lambda ns: set_all(ns, vip=None),
        "pi1: vip: missing. Fix: set vip",
    ),
    "two_servers": (
        lambda ns: ns.update(k3s_servers=ns["k3s_servers"][:2]),
        "pi1, pi2: k3s_servers: 2 servers: embedded etcd needs a majority",
    ),
    "four_servers": (
        lambda ns: ns.update(k3s_servers=ns["k3s_servers"] + [node("pi5", "192.168.1.15")]),
        "use an odd number of servers (3 or 5)",
    ),
    "server_and_agent": (
        lambda ns: ns["k3s_agents"].append("pi3"),
        "pi3: groups: the host is in both k3s_servers and k3s_agents",
    ),
    "unknown_key_typo": (
        lambda ns: set_host(ns, "pi1", k3s_verison="v1.31.4+k3s1"),
        "pi1: k3s_verison: unknown key. Fix: did you mean `k3s_version`?",
    ),
    "unknown_key_no_hint": (
        lambda ns: set_host(ns, "pi1", flux_capacitor=True),
        "pi1: flux_capacitor: unknown key. Fix: remove it",
    ),
    "k3s_version_malformed": (
        lambda ns: set_all(ns, k3s_version="1.31"),
        "pi1: k3s_version: `'1.31'` is not a k3s release. Fix: write it like v1.36.4+k3s1",
    ),
    "router_id_range": (
        lambda ns: set_all(ns, keepalived_router_id=300),
        "pi1: keepalived_router_id: `300` is outside 1-255",
    ),
    "vrrp_secret_missing": (
        lambda ns: set_all(ns, keepalived_auth_pass=None),
        "pi1: keepalived_auth_pass: secret missing or left at an example value",
    ),
    "vrrp_secret_example": (
        lambda ns: set_all(ns, keepalived_auth_pass="changeme"),
        "pi2: keepalived_auth_pass: secret missing or left at an example value",
    ),
    "vrrp_secret_too_long": (
        lambda ns: set_all(ns, keepalived_auth_pass="a-much-too-long-secret"),
        "pi1: keepalived_auth_pass: 22 characters, VRRP PASS auth keeps only 8",
    ),
    "samba_password_example": (
        lambda ns: set_all(ns, samba_users={"alice": "password"}),
        "pi1: samba_users: password of `alice` missing or left at an example value",
    ),
    "samba_share_name_invalid": (
        lambda ns: set_all(ns, samba_shares=[{"name": "my share", "path": "data", "valid_users": ["alice"]}]),
        "pi1: samba_shares: share name `'my share'` is invalid",
    ),
    "samba_share_reserved": (
        lambda ns: set_all(ns, samba_shares=[{"name": "homes", "path": "data", "valid_users": ["alice"]}]),
        "pi2: samba_shares: share name `'homes'` is invalid",
    ),
    "samba_unknown_user": (
        lambda ns: set_all(ns, samba_shares=[{"name": "data", "path": "data", "valid_users": ["bob"]}]),
        "pi1: samba_shares: share `data` names user `bob` who is not in samba_users",
    ),
    "samba_path_escapes": (
        lambda ns: set_all(ns, samba_shares=[{"name": "data", "path": "../etc", "valid_users": ["alice"]}]),
        "pi1: samba_shares: path `'../etc'` must be relative to dnas_path and stay inside it",
    ),
    "nfs_network_invalid": (
        lambda ns: set_all(ns, nfs_exports=[{"path": "data", "networks": ["192.168.1.0/33"]}]),
        "pi1: nfs_exports: network `192.168.1.0/33` is invalid",
    ),
    "nfs_network_host_bits": (
        lambda ns: set_all(ns, nfs_exports=[{"path": "data", "networks": ["192.168.1.7/24"]}]),
        "pi1: nfs_exports: network `192.168.1.7/24` is invalid (192.168.1.7/24 has host bits set)",
    ),
    "nfs_world": (
        lambda ns: set_all(ns, nfs_exports=[{"path": "data", "networks": ["0.0.0.0/0"]}]),
        "pi1: nfs_exports: network `0.0.0.0/0` opens the export to the whole internet",
    ),
    "nfs_ports_clash": (
        lambda ns: set_all(ns, nfs_statd_port=20048),
        "pi1: nfs_statd_port: port 20048 is also nfs_mountd_port. Fix: give each NFS helper service its own port",
    ),
    "dnas_bare_device": (
        lambda ns: set_host(ns, "pi1", dnas_device="/dev/sda1"),
        "pi1: dnas_device: `/dev/sda1` may name another disk after a reboot (USB order changes). Fix: use UUID=... or LABEL=...",
    ),
    "longhorn_armv7": (
        lambda ns: set_host(ns, "pi4", node_arch="armhf"),
        "pi4: longhorn_enabled: Longhorn does not run on armv7 (armhf) boards. Fix: set longhorn_enabled = False for pi4",
    ),
    "airgap_without_dir": (
        lambda ns: set_all(ns, k3s_install="airgap"),
        "pi1: k3s_airgap_dir: k3s_install is 'airgap' but no folder is given",
    ),
    "k3s_token_example": (
        lambda ns: set_all(ns, k3s_token="secret"),
        "pi1: k3s_token: secret left at an example value or shorter than 16 characters",
    ),
    "bad_choice": (
        lambda ns: set_all(ns, nfs_backend="zfs"),
        "pi1: nfs_backend: `'zfs'` is not one of 'kernel', 'ganesha'",
    ),
    "bad_bool": (
        lambda ns: set_all(ns, keepalived_nopreempt="yes"),
        "pi1: keepalived_nopreempt: `'yes'` is not True/False",
    ),
    "node_label_malformed": (
        lambda ns: set_host(ns, "pi4", k3s_node_labels=["disk ssd"]),
        "pi4: k3s_node_labels: `'disk ssd'` is malformed. Fix: write it like disk=ssd",
    ),
    "syncthing_device_id": (
        lambda ns: set_all(ns, syncthing_devices=[{"name": "phone", "id": "NOT-AN-ID", "folders": []}]),
        "pi1: syncthing_devices: device id `'NOT-AN-ID'` is not a Syncthing device ID",
    ),
    "syncthing_gui_open_without_password": (
        lambda ns: set_all(ns, syncthing_gui_address="0.0.0.0:8384", syncthing_gui_password=None),
        "pi1: syncthing_gui_password: missing or left at an example value: the Syncthing GUI / REST API on 0.0.0.0:8384 needs one",
    ),
    "syncthing_gui_loopback_without_password": (
        lambda ns: set_all(ns, syncthing_gui_password=None),
        "pi1: syncthing_gui_password: missing or left at an example value: the Syncthing GUI / REST API on 127.0.0.1:8384 "
        "needs one even on loopback (any local account could read its API key and share the data out). "
        'Fix: set syncthing_gui_password = secret("syncthing_gui_password")',
    ),
    "syncthing_internet_not_a_flag": (
        lambda ns: set_all(ns, syncthing_internet="yes"),
        "pi1: syncthing_internet: `'yes'` is not True/False",
    ),
    "vrrp_secret_blank": (
        lambda ns: set_all(ns, keepalived_auth_pass="ab cd#1"),
        "pi1: keepalived_auth_pass: contains a blank, a quote, # or !",
    ),
    "samba_workgroup": (
        lambda ns: set_all(ns, samba_workgroup="MY HOME NETWORK GROUP"),
        "pi1: samba_workgroup: `'MY HOME NETWORK GROUP'` is not a workgroup name",
    ),
    "samba_user_root": (
        lambda ns: set_all(ns, samba_users={"root": "a-long-random-Passw0rd"}, samba_shares=[]),
        "pi1: samba_users: `root` cannot be a Samba user",
    ),
    "samba_password_newline": (
        lambda ns: set_all(ns, samba_users={"alice": "first\nsecond"}),
        "pi1: samba_users: password of `alice` contains a line break",
    ),
    "nfs_duplicate_path": (
        lambda ns: set_all(ns, nfs_exports=[{"path": "data", "networks": ["10.0.0.0/8"]}, {"path": "data/", "networks": ["192.168.1.0/24"]}]),
        "pi1: nfs_exports: path `data` is exported twice",
    ),
    "share_path_quote": (
        lambda ns: set_all(ns, samba_shares=[{"name": "data", "path": 'da"ta', "valid_users": ["alice"]}]),
        "pi1: samba_shares: path `'da\"ta'` contains a quote, backslash or line break",
    ),
    "k3s_config_key_typo": (
        lambda ns: set_all(ns, k3s_server_config={"disable-netwrk-policy": True}),
        "pi1: k3s_server_config: `disable-netwrk-policy` is not a k3s server flag in v1.36.4+k3s1. Fix: did you mean `disable-network-policy`?",
    ),
    "k3s_config_managed_key": (
        lambda ns: set_all(ns, k3s_agent_config={"token": "x"}),
        "pi4: k3s_agent_config: `token` is set by homecloud",
    ),
    "dnas_path_inside_k3s": (
        lambda ns: set_all(ns, dnas_path="/var/lib/rancher/nas"),
        "pi1: dnas_path: `/var/lib/rancher/nas` lies inside",
    ),
    "longhorn_fstype": (
        lambda ns: set_all(ns, longhorn_fstype="btrfs"),
        "pi1: longhorn_fstype: `'btrfs'` is not supported by Longhorn",
    ),
    "blank_device_unstable": (
        lambda ns: set_host(ns, "pi1", dnas_blank_device="/dev/sdb", dnas_format=True),
        "pi1: dnas_blank_device: `'/dev/sdb'` is not a stable disk path",
    ),
    "check_script_relative": (
        lambda ns: set_all(ns, keepalived_check_script="systemctl is-active k3s"),
        "pi1: keepalived_check_script: `'systemctl is-active k3s'` is not a command keepalived can run. Fix: give an absolute path first",
    ),
    "host_name_invalid": (
        lambda ns: ns["k3s_agents"].__setitem__(0, node("pi_4", "192.168.1.14")),
        "pi_4: inventory: the host name is not a valid Linux host name",
    ),
    "kernel_module_name": (
        lambda ns: set_all(ns, base_kernel_modules=["overlay; reboot"]),
        "pi1: base_kernel_modules: `['overlay; reboot']` is not a list of module names",
    ),
    "sysctl_value": (
        lambda ns: set_all(ns, base_sysctls={"net.ipv4.ip_forward": ["1"]}),
        "pi1: base_sysctls: `'net.ipv4.ip_forward': ['1']` is not a sysctl setting",
    ),
    "device_label_too_long": (
        lambda ns: set_host(ns, "pi1", dnas_device="LABEL=my-very-long-nas-label"),
        "pi1: dnas_device: label `my-very-long-nas-label` is not usable on ext4. Fix: use at most 16",
    ),
    "gui_address_not_host_port": (
        lambda ns: set_all(ns, syncthing_gui_address="127.0.0.1"),
        "pi1: syncthing_gui_address: `127.0.0.1` is not host:port",
    ),
    "share_root_of_dnas": (
        lambda ns: set_all(ns, nfs_exports=[{"path": ".", "networks": ["192.168.1.0/24"]}]),
        "pi1: nfs_exports: the root of dnas_path is not shared",
    ),
    "guest_writable_share": (
        lambda ns: set_all(ns, samba_shares=[{"name": "pub", "path": "pub", "guest_ok": True, "read_only": False}]),
        "pi1: samba_shares: share `pub` is writable by guests",
    ),
    # Patterns match the whole value: a trailing newline is not a valid ending.
    "vrrp_secret_trailing_newline": (
        lambda ns: set_all(ns, keepalived_auth_pass="Vq8kZr2\n"),
        "pi1: keepalived_auth_pass: contains a blank, a quote, # or !",
    ),
    "k3s_version_trailing_newline": (
        lambda ns: set_all(ns, k3s_version="v1.31.4+k3s1\n"),
        "pi1: k3s_version: `'v1.31.4+k3s1\\n'` is not a k3s release",
    ),
    "dnas_user_trailing_newline": (
        lambda ns: set_all(ns, dnas_user="dnas\n"),
        "pi1: dnas_user: `'dnas\\n'` is not a valid user name",
    ),
    "samba_user_trailing_newline": (
        lambda ns: set_all(ns, samba_users={"alice\n": "a-long-random-Passw0rd"}, samba_shares=[]),
        "pi1: samba_users: `'alice\\n'` is not a valid user name",
    ),
    # Strict types (DATA_KINDS, ENTRY_KINDS): a quoted "no" is a non-empty string, so True.
    "share_guest_ok_quoted_no": (
        lambda ns: set_all(ns, samba_shares=[{"name": "pub", "path": "pub", "read_only": True, "guest_ok": "no"}]),
        "pi1: samba_shares: share `pub`: guest_ok `'no'` is not True/False (a quoted word counts as True",
    ),
    "share_read_only_quoted_false": (
        lambda ns: set_all(ns, samba_shares=[{"name": "data", "path": "data", "read_only": "false", "valid_users": ["alice"]}]),
        "pi1: samba_shares: share `data`: read_only `'false'` is not True/False",
    ),
    "share_field_typo": (
        lambda ns: set_all(ns, samba_shares=[{"name": "data", "path": "data", "readonly": True, "valid_users": ["alice"]}]),
        "pi1: samba_shares: share `data`: unknown field `readonly`. Fix: did you mean `read_only`?",
    ),
    "share_valid_users_not_list": (
        lambda ns: set_all(ns, samba_shares=[{"name": "data", "path": "data", "valid_users": "alice"}]),
        "pi1: samba_shares: share `data`: valid_users `'alice'` is not a list",
    ),
    "shares_not_a_list": (
        lambda ns: set_all(ns, samba_shares={"name": "data", "path": "data"}),
        "pi1: samba_shares: `{'name': 'data', 'path': 'data'}` is not a list",
    ),
    "share_without_path": (
        lambda ns: set_all(ns, samba_shares=[{"name": "data", "valid_users": ["alice"]}]),
        "pi1: samba_shares: share `data`: no `path`. Fix: give every share a path",
    ),
    "nfs_read_only_int": (
        lambda ns: set_all(ns, nfs_exports=[{"path": "data", "networks": ["192.168.1.0/24"], "read_only": 1}]),
        "pi1: nfs_exports: export `data`: read_only `1` is not True/False",
    ),
    "nfs_rw_subnet_of_a_samba_restricted_folder": (
        lambda ns: set_all(ns, nfs_exports=[{"path": "data", "networks": ["192.168.1.20/32", "192.168.1.0/24"], "read_only": False}]),
        "pi1: nfs_exports: export `data` lets any host of 192.168.1.0/24 write without a password a folder Samba restricts "
        "to its users (share `data`). Fix: export it read-only, or read-write to named hosts only",
    ),
    "nfs_rw_subnet_inside_a_samba_restricted_folder": (
        lambda ns: set_all(ns, nfs_exports=[{"path": "data/scans", "networks": ["192.168.1.0/28"], "read_only": False, "unauthenticated_write": False}]),
        "pi1: nfs_exports: export `data/scans` lets any host of 192.168.1.0/28 write without a password",
    ),
    "nfs_unauthenticated_write_not_a_flag": (
        lambda ns: set_all(ns, nfs_exports=[{"path": "data", "networks": ["192.168.1.0/24"], "read_only": False, "unauthenticated_write": "yes"}]),
        "pi1: nfs_exports: export `data`: unauthenticated_write `'yes'` is not True/False",
    ),
    "samba_encrypt_off": (
        lambda ns: set_all(ns, samba_encrypt="off"),
        "pi1: samba_encrypt: `'off'` is not one of 'desired', 'required'",
    ),
    "samba_min_protocol_smb1": (
        lambda ns: set_all(ns, samba_min_protocol="NT1"),
        "pi1: samba_min_protocol: `'NT1'` is not one of 'SMB2_10', 'SMB3'",
    ),
    "samba_netbios_not_a_flag": (
        lambda ns: set_all(ns, samba_netbios="no"),
        "pi1: samba_netbios: `'no'` is not True/False",
    ),
    "nfs_export_not_a_dict": (
        lambda ns: set_all(ns, nfs_exports=["data"]),
        "pi1: nfs_exports: `'data'` is not an export",
    ),
    "syncthing_folder_without_path": (
        lambda ns: set_all(ns, syncthing_folders=[{"id": "photos", "label": "Photos"}]),
        "pi1: syncthing_folders: folder `photos`: no `path`",
    ),
    "syncthing_device_without_name": (
        lambda ns: set_all(ns, syncthing_devices=[{"id": "ABCDEFG-HIJKLMN-OPQRSTU-VWXYZ23-4567ABC-DEFGHIJ-KLMNOPQ-RSTUVWX"}]),
        "pi1: syncthing_devices: device 1: no `name`",
    ),
    "priority_word": (
        lambda ns: set_host(ns, "pi1", keepalived_priority="high"),
        "pi1: keepalived_priority: `'high'` is not a whole number. Fix: set keepalived_priority to a whole number from 1 to 254",
    ),
    "priority_bool": (
        lambda ns: set_host(ns, "pi1", keepalived_priority=True),
        "pi1: keepalived_priority: `True` is not a whole number",
    ),
    "dnas_format_quoted_yes": (
        lambda ns: set_host(ns, "pi1", dnas_format="yes"),
        "pi1: dnas_format: `'yes'` is not True/False",
    ),
    "uid_quoted": (
        lambda ns: set_all(ns, dnas_uid="2000"),
        "pi1: dnas_uid: `'2000'` is not a whole number",
    ),
    "iptables_legacy_int": (
        lambda ns: set_all(ns, base_iptables_legacy=1),
        "pi1: base_iptables_legacy: `1` is not one of 'auto', True, False",
    ),
    "vrrp_secret_int": (
        lambda ns: set_all(ns, keepalived_auth_pass=12345678),
        "pi1: keepalived_auth_pass: `12345678` is not a string",
    ),
    "samba_password_int": (
        lambda ns: set_all(ns, samba_users={"alice": 12345678}),
        "pi1: samba_users: password of `alice` is not a string",
    ),
    "mount_options_blank": (
        lambda ns: set_all(ns, dnas_mount_options="defaults, noatime"),
        "pi1: dnas_mount_options: `'defaults, noatime'` is not a list of mount options",
    ),
    "sudo_quoted": (
        lambda ns: set_all(ns, _sudo="yes"),
        "pi1: _sudo: `'yes'` is not True/False",
    ),
    # Keys starting with _ are pyinfra's global arguments: a misspelt one is ignored by pyinfra.
    "pyinfra_argument_typo": (
        lambda ns: set_all(ns, _sudo=None, _sduo=True),
        "pi1: _sduo: unknown key (not a pyinfra global argument). Fix: did you mean `_sudo`?",
    ),
    "pyinfra_argument_unknown": (
        lambda ns: set_host(ns, "pi2", _flux=1),
        "pi2: _flux: unknown key (not a pyinfra global argument). Fix: remove it (pyinfra's arguments are _chdir,",
    ),
    "non_root_without_sudo": (
        lambda ns: set_host(ns, "pi3", _sudo=False),
        "pi3: ssh_user: `pi` is not root and _sudo is not True (the deploys install packages and write /etc). Fix: add \"_sudo\": True",
    ),
    # Groups: pyinfra makes any list of hosts a group; homecloud knows three.
    "unknown_group_typo": (
        lambda ns: ns.update(k3s_server=ns.pop("k3s_servers")),
        "inventory: k3s_server: a list of hosts is a pyinfra group, but `k3s_server` is not a homecloud group (its hosts get no role). Fix: did you mean `k3s_servers`?",
    ),
    "unknown_group_dnas_nodes": (
        lambda ns: ns.update(dnas_nodes=ns.pop("dnas")),
        "inventory: dnas_nodes: a list of hosts is a pyinfra group, but `dnas_nodes` is not a homecloud group (its hosts get no role). Fix: did you mean `dnas`?",
    ),
    "unknown_group_no_hint": (
        lambda ns: ns.update(boards=["pi1"]),
        "inventory: boards: a list of hosts is a pyinfra group, but `boards` is not a homecloud group (its hosts get no role). Fix: use k3s_servers, k3s_agents, dnas",
    ),
    "data_inline_on_all": (
        lambda ns: ns.update(all=(["pi1", "pi2", "pi3", "pi4"], {"vip": "192.168.1.240", "ssh_user": "pi"})),
        "all: vip: set on the inventory's `all` group, where pyinfra lets group_data/all.py override it (with None). Fix: give cluster values to each host, as inventories/pi.py does",
    ),
    # Misspelt host names and groups: the message names that cause, not what follows from it.
    "dnas_host_typo": (
        lambda ns: ns.update(dnas=["pi1", "pi5"]),
        "pi5: inventory: listed in dnas by name only, and no group gives it data (not even an address). Fix: did you mean",
    ),
    "dnas_host_case": (
        lambda ns: ns.update(dnas=["pi1", "Pi2"]),
        "Pi2: inventory: listed in dnas by name only, and no group gives it data (not even an address). Fix: did you mean `pi2`?",
    ),
    "keepalived_group_empty": (
        lambda ns: (set_all(ns, keepalived_group="dnas"), ns.update(dnas=[])),
        "inventory: keepalived_group: group `dnas` has no hosts",
    ),
    "keepalived_group_typo": (
        lambda ns: set_all(ns, keepalived_group="k3s_server"),
        "pi1: keepalived_group: `'k3s_server'` is not one of 'k3s_servers', 'k3s_agents', 'dnas'",
    ),
    "samba_valid_user_typo": (
        lambda ns: set_all(ns, samba_shares=[{"name": "data", "path": "data", "valid_users": ["alcie"]}]),
        "pi1: samba_shares: share `data` names user `alcie` who is not in samba_users. Fix: did you mean `alice`? If not, add alcie",
    ),
    "syncthing_device_folder_typo": (
        lambda ns: set_all(ns, syncthing_devices=[{"name": "phone", "id": "ABCDEFG-HIJKLMN-OPQRSTU-VWXYZ23-4567ABC-DEFGHIJ-KLMNOPQ-RSTUVWX", "folders": ["homecloud-dat"]}]),
        "pi1: syncthing_devices: device `phone` gets unknown folder `homecloud-dat`. Fix: did you mean `homecloud-data`?",
    ),
    # Syncthing keeps each node's keys in dnas_path/.config: never shared.
    "syncthing_folder_root": (
        lambda ns: set_all(ns, syncthing_folders=[{"id": "all", "path": "."}]),
        "pi1: syncthing_folders: path `.` is dnas_path itself: syncing it shares dnas_path/.config, where each node keeps its own Syncthing keys",
    ),
    "syncthing_folder_empty_path": (
        lambda ns: set_all(ns, syncthing_folders=[{"id": "all", "path": "./"}]),
        "pi1: syncthing_folders: path `./` is dnas_path itself",
    ),
    "syncthing_folder_in_config": (
        lambda ns: set_all(ns, syncthing_folders=[{"id": "cfg", "path": "data/../.config"}]),
        "pi1: syncthing_folders: path `'data/../.config'` must be relative to dnas_path and stay inside it",
    ),
    "syncthing_folder_config": (
        lambda ns: set_all(ns, syncthing_folders=[{"id": "cfg", "path": ".config/syncthing"}]),
        "pi1: syncthing_folders: path `.config/syncthing` lies in dnas_path/.config, where each node keeps its own Syncthing keys",
    ),
    "samba_share_config": (
        lambda ns: set_all(ns, samba_shares=[{"name": "cfg", "path": ".config", "valid_users": ["alice"]}]),
        "pi1: samba_shares: path `.config` lies in dnas_path/.config",
    ),
    # Backups (homecloud/layers/backup.py).
    "backup_local_on_data_disk": (
        lambda ns: set_host(ns, "pi1", **{**BACKUP, "backup_targets": [{"name": "usb", "type": "local", "device": "LABEL=homecloud-data"}]}),
        "pi1: backup_targets: target `usb`: LABEL=homecloud-data is the same disk as the data (dnas_device). Fix: use another disk",
    ),
    "backup_local_without_device": (
        lambda ns: set_host(ns, "pi1", **{**BACKUP, "backup_targets": [{"name": "usb", "type": "local", "path": "/srv/backup"}]}),
        "pi1: backup_targets: target `usb`: a local target without a device is on the same disk as the data",
    ),
    "backup_sftp_to_itself": (
        lambda ns: set_host(ns, "pi1", **{**BACKUP, "backup_targets": [{"name": "self", "type": "sftp", "host": "pi1"}]}),
        "pi1: backup_targets: target `self`: the SFTP target is this node itself. Fix: back up to another node",
    ),
    "backup_sftp_to_its_own_address": (
        lambda ns: set_host(ns, "pi1", **{**BACKUP, "backup_targets": [{"name": "self", "type": "sftp", "host": "192.168.1.11", "host_key": "ssh-ed25519 AAAA"}]}),
        "pi1: backup_targets: target `self`: the SFTP target is this node itself",
    ),
    "backup_sftp_unknown_node": (
        lambda ns: set_host(ns, "pi1", **{**BACKUP, "backup_targets": [{"name": "n", "type": "sftp", "host": "pi33"}]}),
        "pi1: backup_targets: target `n`: host `pi33` is not in the inventory and has no host_key. Fix: did you mean `pi3`?",
    ),
    "backup_passphrase_missing": (
        lambda ns: set_host(ns, "pi1", **{**BACKUP, "backup_passphrase": None}),
        "pi1: backup_passphrase: missing, too short or an example value. Fix: set it from the secret store",
    ),
    "backup_retention_zero": (
        lambda ns: set_host(ns, "pi1", **BACKUP, backup_keep_daily=0),
        "pi1: backup_keep_daily: 0 keeps no daily snapshot",
    ),
    "restore_target_typo": (
        lambda ns: set_host(ns, "pi1", **BACKUP, restore_target="pi33"),
        "pi1: restore_target: `pi33` is not one of backup_targets. Fix: did you mean `pi3`?",
    ),
    "backup_no_target": (
        lambda ns: set_host(ns, "pi1", **{**BACKUP, "backup_targets": []}),
        "pi1: backup_targets: backup_enabled is True but no target is given",
    ),
    # Stable device paths: /dev/disk/by-id/... is accepted, /dev/sdX still is not.
    "longhorn_bare_device": (
        lambda ns: set_host(ns, "pi4", longhorn_device="/dev/sdb"),
        "pi4: longhorn_device: `/dev/sdb` may name another disk after a reboot. Fix: use UUID=... or LABEL=... (see `blkid`), or /dev/disk/by-id/...",
    ),
    "platform_acme_without_domain": (
        lambda ns: set_all(ns, platform_tls="acme", platform_acme_email="me@example.org"),
        'pi1: platform_domain: platform_tls is "acme" but no domain is given. Fix: set platform_domain',
    ),
    "platform_acme_local_domain": (
        lambda ns: set_all(ns, platform_tls="acme", platform_domain="cloud.home.arpa", platform_acme_email="me@example.org"),
        "pi1: platform_domain: `cloud.home.arpa` is a LAN-only name",
    ),
    "platform_s3_without_credentials": (
        lambda ns: set_all(ns, platform_backup_target="s3://my-bucket@us-east-1/homecloud/"),
        "pi1: platform_backup_s3_access_key_id: the S3 backup target needs credentials, and there are none in the secret store",
    ),
    "platform_nfs_export_missing": (
        lambda ns: set_all(ns, platform_backup_target="nfs://pi1/longhorn-backup"),
        "pi1: platform_backup_target: pi1 has no NFS export `longhorn-backup` (its nfs_exports: data, data/scans, public). Fix: add",
    ),
    "platform_nfs_not_dnas": (
        lambda ns: set_all(ns, platform_backup_target="nfs://pi3/data"),
        "pi1: platform_backup_target: `pi3` is not a dnas node. Fix: name one of the dnas group (pi1, pi2)",
    ),
    "platform_more_replicas_than_nodes": (
        lambda ns: set_host(set_host(set_all(ns, platform_longhorn_replicas=3), "pi3", longhorn_enabled=False), "pi4", longhorn_enabled=False),
        "pi1: platform_longhorn_replicas: 3 replicas but 2 Longhorn node(s) (pi1, pi2). Fix: at most 2",
    ),
    "platform_addon_with_k3s_off": (
        lambda ns: set_all(ns, k3s_install="off", platform_longhorn=True),
        'pi1: platform_longhorn: True, but k3s_install is "off"',
    ),
    "platform_differs_between_servers": (
        lambda ns: set_host(ns, "pi2", platform_tls="acme"),
        "pi2: platform_tls: differs from pi1's: the platform is one per cluster",
    ),
    "platform_monitoring_without_grafana_password": (
        lambda ns: set_all(ns, platform_monitoring=True, k3s_server_config={"etcd-expose-metrics": True}),
        "pi1: platform_grafana_admin_password: monitoring is on but Grafana's admin password is not in the secret store",
    ),
    "platform_monitoring_without_etcd_metrics": (
        lambda ns: set_all(ns, platform_monitoring=True, platform_grafana_admin_password="a-long-random-Passw0rd"),
        "pi2: k3s_server_config: monitoring is on but etcd's metrics are only on 127.0.0.1",
    ),
    "platform_webhook_without_url": (
        lambda ns: set_all(ns, platform_monitoring=True, platform_grafana_admin_password="a-long-random-Passw0rd",
                           k3s_server_config={"etcd-expose-metrics": True}, platform_alert_receiver="webhook"),
        "pi1: platform_alert_webhook_url: the webhook alert receiver needs it, and it is not in the secret store",
    ),
    "platform_email_without_smarthost": (
        lambda ns: set_all(ns, platform_monitoring=True, platform_grafana_admin_password="a-long-random-Passw0rd",
                           k3s_server_config={"etcd-expose-metrics": True}, platform_alert_receiver="email",
                           platform_alert_email_to="me@example.org", platform_alert_email_from="hc@example.org",
                           platform_alert_smtp_password="a-long-random-Passw0rd"),
        "pi1: platform_alert_smtp_smarthost: None. Fix: host:port of your mail server",
    ),
    "platform_longhorn_ui_example_password": (
        lambda ns: set_all(ns, platform_longhorn_ui_password="changeme"),
        "pi1: platform_longhorn_ui_password: left at an example value",
    ),
    "platform_longhorn_ui_without_traefik": (
        lambda ns: set_all(ns, platform_longhorn_ui_password="a-long-random-Passw0rd", platform_traefik=False),
        "pi1: platform_longhorn_ui_password: set, but the UI needs both the longhorn and the traefik add-on",
    ),
    "platform_dashboard_without_traefik": (
        lambda ns: set_all(ns, platform_dashboard=True, platform_traefik=False),
        "pi1: platform_dashboard: True, but platform_traefik is False: its UI is only reached through the ingress",
    ),
    "platform_portainer_without_password": (
        lambda ns: set_all(ns, platform_portainer=True),
        "pi1: platform_portainer_admin_password: Portainer is on but its admin password is not in the secret store",
    ),
    "platform_bad_cron": (
        lambda ns: set_all(ns, platform_snapshot_cron="daily"),
        "pi1: platform_snapshot_cron: 'daily'. Fix: five cron fields",
    ),
    "hardening_bad_ssh_network": (
        lambda ns: set_all(ns, hardening_ssh_networks=["192.168.1.0/33"]),
        "pi1: hardening_ssh_networks: ['192.168.1.0/33'] are not networks",
    ),
    "hardening_bad_syncthing_network": (
        lambda ns: set_all(ns, hardening_syncthing_networks=["lan"]),
        "pi1: hardening_syncthing_networks: ['lan'] are not networks",
    ),
    "hardening_ssh_networks_not_a_list": (
        lambda ns: set_all(ns, hardening_ssh_networks="192.168.1.0/24"),
        "pi1: hardening_ssh_networks:",
    ),
    "hardening_extra_rule_breaks_out": (
        lambda ns: set_all(ns, hardening_firewall_extra=["accept; } table ip x {"]),
        "pi1: hardening_firewall_extra: `'accept; } table ip x {'` is not one nftables rule",
    ),
    "hardening_bad_reboot_time": (
        lambda ns: set_all(ns, hardening_reboot_time="3am"),
        "pi1: hardening_reboot_time: `3am` is not a time of day",
    ),
    "hardening_bad_origins": (
        lambda ns: set_all(ns, hardening_upgrade_origins=[]),
        "pi1: hardening_upgrade_origins: `[]` is not a list of origin patterns",
    ),
    "hardening_root_login_yes": (
        lambda ns: set_all(ns, hardening_ssh_root_login="yes"),
        "pi1: hardening_ssh_root_login: `yes` is not a PermitRootLogin value homecloud allows",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inventory_is_refused_with_a_clear_message(case):
    mutate, expected = BAD[case]
    namespace = good_inventory()
    mutate(namespace)
    errors = errors_of(namespace)
    print(f"{case}:", *errors, sep="\n  ")
    assert any(expected in error for error in errors), f"expected {expected!r} in {errors}"
    # Every message names a host (or hosts), the key, and says how to fix it.
    for error in errors:
        assert ": " in error and "Fix: " in error, error


def test_nfs_write_to_a_subnet_passes_with_the_opt_in_or_without_samba_on_the_folder():
    namespace = set_all(good_inventory(), nfs_exports=[{"path": "data", "networks": ["192.168.1.0/24"], "read_only": False, "unauthenticated_write": True}])
    assert errors_of(namespace) == []
    namespace = set_all(good_inventory(), samba_enabled=False, nfs_exports=[{"path": "data", "networks": ["192.168.1.0/24"], "read_only": False}])
    assert errors_of(namespace) == []
    guests = [{"name": "data", "path": "data", "read_only": True, "guest_ok": True}]
    namespace = set_all(good_inventory(), samba_shares=guests, nfs_exports=[{"path": "data", "networks": ["192.168.1.0/24"], "read_only": False}])
    assert errors_of(namespace) == []


def test_stable_device_paths_pass():
    namespace = good_inventory()
    set_host(namespace, "pi1", dnas_device="/dev/disk/by-id/usb-SanDisk_Extreme_1234-0:0-part1")
    set_host(namespace, "pi4", longhorn_device="/dev/disk/by-id/ata-Samsung_SSD_870_S5Y1NX0R-part1")
    assert errors_of(namespace) == []


def test_agent_outside_the_vip_subnet_passes():
    """Agents never hold the VIP (keepalived_group is k3s_servers): they reach it routed."""
    namespace = set_host(good_inventory(), "pi4", ssh_hostname="192.168.2.14", node_ip="192.168.2.14")
    assert errors_of(namespace) == []
    # A server outside it is still refused: it would hold a VIP its interface cannot answer.
    set_host(namespace, "pi3", ssh_hostname="192.168.2.13", node_ip="192.168.2.13")
    assert [e for e in errors_of(namespace) if "vip" in e] == [
        "pi3: vip: `192.168.1.240` is outside the node's subnet 192.168.2.0/24. Fix: pick a free address inside 192.168.2.0/24 (or fix network_prefix)"
    ]


def test_misspelt_host_is_reported_as_such_only():
    namespace = good_inventory()
    namespace["dnas"] = ["pi1", "pi22"]
    assert errors_of(namespace) == [
        "pi22: inventory: listed in dnas by name only, and no group gives it data (not even an address). "
        "Fix: did you mean `pi2`? Write a host's name the same way in every group"
    ]


def test_one_message_for_one_mistake():
    """A value of the wrong type is reported once, not again by the checks that need the type."""
    namespace = good_inventory()
    namespace["k3s_agents"][0] = ("pi4", "192.168.1.14")
    assert errors_of(namespace) == [
        "pi4: inventory: its data in group `k3s_agents` is `'192.168.1.14'`, not a dict. "
        'Fix: write the host as ("pi4", {"ssh_hostname": ..., "node_ip": ...})'
    ]
    namespace = set_host(good_inventory(), "pi4", node_ip=14)
    assert errors_of(namespace) == ["pi4: node_ip: `14` is not a string. Fix: write node_ip as a string (see group_data/all.py)"]
    namespace = set_all(good_inventory(), samba_users=["alice"])
    assert {e.split(": ", 1)[1] for e in errors_of(namespace)} == {
        "samba_users: `['alice']` is not a dict. Fix: write samba_users as a dict (see group_data/all.py)"
    }


def test_group_data_file_for_an_unknown_group(tmp_path):
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "k3s_server.py").write_text("k3s_ready_timeout = 900\n")
    (tmp_path / "group_data" / "nas.py").write_text("dnas_path = '/srv/nas'\n")
    (tmp_path / "group_data" / "monitoring.py").write_text("dnas_path = '/srv/www'\n")
    specs, errors = hosts_from_inventory_namespace(good_inventory(), str(tmp_path / "home.py"))
    assert errors == [
        f"inventory: {tmp_path}/group_data/k3s_server.py: there is no group `k3s_server` (pyinfra never uses this data). "
        "Fix: did you mean k3s_servers.py?",
        f"inventory: {tmp_path}/group_data/monitoring.py: there is no group `monitoring` (pyinfra never uses this data). "
        "Fix: remove it, or rename it to a group: all, k3s_servers, k3s_agents, dnas, home",
        f"inventory: {tmp_path}/group_data/nas.py: there is no group `nas` (pyinfra never uses this data). "
        "Fix: did you mean dnas.py?",
    ]


def test_group_data_file_of_the_inventory_file_group_applies(tmp_path):
    """pyinfra puts every host of inventories/home.py in a group `home`: its group_data counts."""
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "home.py").write_text("k3s_ready_timeout = 900\n")
    (tmp_path / "group_data" / "dnas.py").write_text("dnas_path = '/srv/nas'\n")
    specs, errors = hosts_from_inventory_namespace(good_inventory(), str(tmp_path / "home.py"))
    assert errors == [] and validate(specs) == []
    assert {s.name: (s.data["k3s_ready_timeout"], s.data["dnas_path"]) for s in specs} == {
        "pi1": (900, "/srv/nas"),
        "pi2": (900, "/srv/nas"),
        "pi3": (900, "/srv/dnas"),
        "pi4": (900, "/srv/dnas"),
    }


def test_pyinfra_arguments_and_root_login_pass():
    namespace = set_all(good_inventory(), ssh_user="root", _sudo=None)
    set_host(namespace, "pi1", ssh_user="pi", _sudo=True, _sudo_user="root", _env={"LANG": "C"})
    assert errors_of(namespace) == []


def test_sudo_from_the_command_line_counts_for_a_non_root_user():
    specs, _ = hosts_from_inventory_namespace(set_all(good_inventory(), _sudo=None))
    assert any("is not root and _sudo is not True" in e for e in validate(specs))
    assert validate(specs, sudo=True) == []


def test_check_inventory_raises_one_error_listing_all_problems():
    namespace = good_inventory()
    set_host(namespace, "pi1", k3s_verison="x")
    set_all(namespace, keepalived_router_id=0)
    with pytest.raises(InventoryError) as info:
        check_inventory(namespace)
    message = str(info.value)
    assert "nothing was changed on any host" in message
    assert "k3s_verison: unknown key" in message
    assert "keepalived_router_id: `0` is outside 1-255" in message


def test_every_default_has_a_declared_kind_it_fits():
    """DATA_KINDS drives the type checks: a key added to group_data/all.py needs its kind there."""
    defaults = load_defaults()
    assert sorted(set(defaults) - set(DATA_KINDS)) == []
    misfits = {key: kind_problem(key, value, DATA_KINDS[key]) for key, value in defaults.items()}
    assert {key: problem for key, problem in misfits.items() if problem} == {}


def test_group_data_defaults_are_documented():
    """Every default in group_data/all.py sits under a comment saying what it is (a comment may
    cover a few related keys written right below it)."""
    import ast

    source = (REPO / "group_data" / "all.py").read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    assigned_lines = {n.lineno for n in tree.body if isinstance(n, ast.Assign)}
    ends = {n.lineno: n.end_lineno for n in tree.body if isinstance(n, ast.Assign)}
    for statement in tree.body:
        if not isinstance(statement, ast.Assign):
            continue
        key = statement.targets[0].id
        line = statement.lineno - 1  # the line above, 1-based
        while line in ends.values() and any(start in assigned_lines for start, end in ends.items() if end == line):
            line = next(start for start, end in ends.items() if end == line) - 1
        assert line >= 1 and lines[line - 1].startswith("#"), f"group_data/all.py: `{key}` has no comment above it"


def _pyinfra(*args, timeout=120):
    env = dict(os.environ, PYINFRA_PROGRESS="off")
    return subprocess.run(
        [sys.executable, "-m", "pyinfra", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_cli_broken_inventory_fails_before_connecting(tmp_path):
    """A broken copy of inventories/pi.py stops while pyinfra loads it: no connection attempt."""
    broken = (REPO / "inventories" / "pi.py").read_text().replace('"vip": "192.168.1.240"', '"vip": "10.9.9.9"')
    broken = broken.replace('"k3s_version": "v1.36.4+k3s1"', '"k3s_verison": "v1.36.4+k3s1"')
    path = tmp_path / "broken.py"
    path.write_text(broken)
    result = _pyinfra("--dry", str(path), "deploys/all.py")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "vip: `10.9.9.9` is outside the node's subnet 192.168.1.0/24" in output, output
    assert "k3s_verison: unknown key. Fix: did you mean `k3s_version`?" in output, output
    assert "Connecting to hosts" not in output, output


def test_cli_example_inventory_fails_fast_with_a_connection_error():
    """inventories/pi.py is valid: pyinfra gets as far as connecting, which fails (no such boards).

    192.168.1.0/24 is never contacted from here: the SSH connection is pointed at a port on
    loopback through --data ssh_hostname, so the test sends nothing to any LAN address.
    """
    result = _pyinfra(
        "--dry",
        "--data",
        "ssh_hostname=127.0.0.1",
        "--data",
        "ssh_port=1",
        "--data",
        "ssh_connect_retries=0",
        "inventories/pi.py",
        "deploys/all.py",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Connecting to hosts" in output, output
    assert "problem(s)" not in output, output
    assert "No hosts remaining" in output or "Could not connect" in output or "Connection refused" in output, output


def test_cli_data_override_is_checked_before_connecting():
    """--data is applied after the inventory file ran: group_data/all.py checks it, still before connecting."""
    result = _pyinfra(
        "--dry",
        "--data",
        "ssh_hostname=127.0.0.1",
        "--data",
        "ssh_port=1",
        "--data",
        "keepalived_router_id=300",
        "--data",
        "samba_shares=[{\"name\": \"pub\", \"path\": \"pub\", \"guest_ok\": \"no\", \"read_only\": true}]",
        "inventories/pi.py",
        "deploys/all.py",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "pi1: keepalived_router_id: `300` is outside 1-255" in output, output
    assert "pi1: samba_shares: share `pub`: guest_ok `'no'` is not True/False" in output, output
    assert "Connecting to hosts" not in output, output


def test_cli_inventory_without_check_inventory_fails_before_connecting(tmp_path):
    """An inventory that does not call check_inventory() is checked all the same, before connecting."""
    source = (REPO / "inventories" / "pi.py").read_text()
    assert "\ncheck_inventory(globals(), __file__)\n" in source
    broken = source.replace("\ncheck_inventory(globals(), __file__)\n", "\n").replace('"vip": "192.168.1.240"', '"vip": "10.9.9.9"')
    broken = broken.replace('dnas = ["pi1", "pi2"]', 'dnas = ["pi1", "pi2"]\ndnas_nodes = ["pi3"]')
    path = tmp_path / "home.py"
    path.write_text(broken)
    result = _pyinfra("--dry", str(path), "deploys/all.py")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "pi1: vip: `10.9.9.9` is outside the node's subnet 192.168.1.0/24" in output, output
    assert "inventory: dnas_nodes: a list of hosts is a pyinfra group, but `dnas_nodes` is not a homecloud group" in output, output
    assert "Connecting to hosts" not in output, output


def test_check_state_reports_a_misspelt_host_and_data_overrides(tmp_path, monkeypatch):
    """The check the deploys run (after connecting): same rules on the data pyinfra merged."""
    from pyinfra.api import Config, State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    from homecloud.model import check_state

    source = (REPO / "inventories" / "pi.py").read_text().replace("\ncheck_inventory(globals(), __file__)\n", "\n")
    path = tmp_path / "home.py"
    path.write_text(source.replace('dnas = ["pi1", "pi2"]', 'dnas = ["pi1", "pi02"]'))
    monkeypatch.chdir(REPO)
    state = State()
    with ctx_state.use(state):
        inventory = make_inventory(str(path), cwd=str(REPO), override_data={"keepalived_priority": "high"})
        state.init(inventory, Config())
        with pytest.raises(InventoryError) as info:
            check_state(state)
    message = str(info.value)
    assert "pi02: inventory: listed in dnas by name only, and no group gives it data (not even an address). Fix: did you mean `pi2`?" in message
    assert "pi1: keepalived_priority: `'high'` is not a whole number" in message
    assert "node_ip" not in message


@pytest.mark.parametrize(
    "changed",
    [{"vip": "192.168.1.240\n"}, {"auth_pass": "Vq8kZr2\n"}, {"interface": "eth0\n"}, {"script_user": "keepalived_script\n"}],
)
def test_operations_match_whole_values_too(changed):
    """The operations re-check what they write with model.py's patterns, on the whole value."""
    from pyinfra.api import OperationError

    from operations.keepalived import render_config

    args = {"vip": "192.168.1.240", "prefix": 24, "interface": "eth0", "router_id": 51, "priority": 100}
    args.update(auth_pass="Vq8kZr2p", node_name="pi1", script_user="keepalived_script")
    assert "192.168.1.240" in render_config(**args)
    with pytest.raises(OperationError):
        render_config(**{**args, **changed})


def test_a_key_given_to_a_group_that_does_not_read_it(tmp_path):
    """Each key's schema names the groups whose hosts read it: dnas keys on k3s agents do nothing."""
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "k3s_agents.py").write_text("dnas_path = '/srv/nas'\nk3s_ready_timeout = 900\n")
    specs, errors = hosts_from_inventory_namespace(good_inventory(), str(tmp_path / "home.py"))
    assert errors == [
        "inventory: dnas_path: given to group `k3s_agents`, but only hosts in dnas read it. "
        "Fix: set it for dnas (or per host) instead"
    ]
    # A group whose hosts are also in the reading group is fine (pi1 is a server and a dnas node).
    (tmp_path / "group_data" / "k3s_agents.py").unlink()
    (tmp_path / "group_data" / "k3s_servers.py").write_text("dnas_path = '/srv/nas'\n")
    assert hosts_from_inventory_namespace(good_inventory(), str(tmp_path / "home.py"))[1] == []


# --- Nextcloud (homecloud/layers/services.py) -------------------------------------------------

NEXTCLOUD = {
    "nextcloud_enabled": True,
    "nextcloud_domain": "cloud.example.org",
    "nextcloud_admin_password": "Xq7-admin-Vn2kLr9",
    "nextcloud_db_password": "Xq7-db-Vn2kLr9pw",
    "nextcloud_db_root_password": "Xq7-root-Vn2kLr9",
    "nextcloud_redis_password": "Xq7-redis-Vn2kLr",
    "nextcloud_storages": [
        {"mount": "Photos", "node": "pi1", "path": "data/photos", "users": ["alice"]},
        {"mount": "Family", "node": "pi2", "path": "data/family", "groups": ["family"]},
    ],
    "nextcloud_dump_node": "pi1",
    "nextcloud_dump_path": "data/backups/nextcloud-db",
    # Nextcloud's pods mount the dnas folders over NFS from any k3s node: read-write to those
    # nodes only (the default export is read-only).
    "nfs_exports": [
        {"path": "data", "networks": [f"192.168.1.{n}/32" for n in (11, 12, 13, 14)], "read_only": False},
        {"path": "public", "networks": ["192.168.1.0/24"], "read_only": False},
    ],
}


def nextcloud_inventory(**over):
    return set_all(good_inventory(), **{**copy.deepcopy(NEXTCLOUD), **over})


def test_good_nextcloud_inventory_passes():
    assert errors_of(nextcloud_inventory()) == []


NEXTCLOUD_BAD = {
    "unknown_node": (
        {"nextcloud_storages": [{"mount": "Photos", "node": "storage-box", "path": "data/photos", "users": ["alice"]}]},
        "pi1: nextcloud_storages: storage `Photos`: node `storage-box` is not a dnas node. Fix: name one of the dnas nodes (pi1, pi2)",
    ),
    "misspelt_node": (
        {"nextcloud_storages": [{"mount": "Photos", "node": "pi22", "path": "data/photos", "users": ["alice"]}]},
        "pi1: nextcloud_storages: storage `Photos`: node `pi22` is not a dnas node. Fix: did you mean `pi2`?",
    ),
    "no_export_holds_it": (
        {"nextcloud_storages": [{"mount": "Photos", "node": "pi1", "path": "photos", "users": ["alice"]}]},
        "pi1: nextcloud_storages: storage `Photos`: no writable NFS export of pi1 holds `photos`",
    ),
    "read_only_export": (
        {"nfs_exports": [{"path": "data", "networks": ["192.168.1.0/24"], "read_only": True}]},
        "pi1: nextcloud_storages: storage `Photos`: no writable NFS export of pi1 holds `data/photos`",
    ),
    "export_closed_to_a_k3s_node": (
        {"nfs_exports": [{"path": "data", "networks": ["192.168.1.11/32", "192.168.1.12/32", "192.168.1.13/32"], "read_only": False}]},
        "pi1: nextcloud_storages: storage `Photos`: the export `data` of pi1 does not let k3s node pi4 (192.168.1.14) in",
    ),
    "nfs_off": (
        {"nfs_enabled": False},
        "pi1: nextcloud_storages: storage `Photos`: pi1 does not serve NFS (nfs_enabled = False)",
    ),
    "escaping_path": (
        {"nextcloud_storages": [{"mount": "Photos", "node": "pi1", "path": "../etc", "users": ["alice"]}]},
        "pi1: nextcloud_storages: path `'../etc'` must be relative to dnas_path and stay inside it",
    ),
    "nobody_gets_it": (
        {"nextcloud_storages": [{"mount": "Photos", "node": "pi1", "path": "data/photos"}]},
        "pi1: nextcloud_storages: storage `Photos` names no users and no groups",
    ),
    "mount_twice": (
        {"nextcloud_storages": [{"mount": "Photos", "node": "pi1", "path": "data/a", "users": ["a"]}, {"mount": "photos", "node": "pi2", "path": "data/b", "users": ["b"]}]},
        "pi1: nextcloud_storages: mount `photos` is given twice",
    ),
    "typo_in_entry": (
        {"nextcloud_storages": [{"mount": "Photos", "node": "pi1", "path": "data/photos", "user": ["alice"]}]},
        "pi1: nextcloud_storages: storage `Photos`: unknown field `user`. Fix: did you mean `users`?",
    ),
    "dump_node_not_dnas": (
        {"nextcloud_dump_node": "pi4"},
        "pi1: nextcloud_dump_node: the database dumps: node `pi4` is not a dnas node",
    ),
    "dump_path_not_exported": (
        {"nextcloud_dump_path": "backups/nextcloud-db"},
        "pi1: nextcloud_dump_node: the database dumps: no writable NFS export of pi1 holds `backups/nextcloud-db`",
    ),
    "no_dump_node": ({"nextcloud_dump_node": None}, "pi1: nextcloud_dump_node: missing while nextcloud_enabled = True"),
    "no_domain": ({"nextcloud_domain": None}, "pi1: nextcloud_domain: missing while nextcloud_enabled = True"),
    "example_secret": ({"nextcloud_admin_password": "changeme"}, "pi1: nextcloud_admin_password: secret missing or left at an example value"),
    "missing_secret": ({"nextcloud_redis_password": None}, "pi1: nextcloud_redis_password: secret missing or left at an example value"),
    "bad_proxy": ({"nextcloud_trusted_proxies": ["10.42.0.1/16"]}, "pi1: nextcloud_trusted_proxies: `'10.42.0.1/16'` is not a network"),
    "bad_schedule": ({"nextcloud_dump_schedule": "nightly"}, "pi1: nextcloud_dump_schedule: `nightly` is not a cron schedule"),
    "longhorn_off": ({"longhorn_enabled": False, "nextcloud_storage_class": "longhorn"}, "pi1: nextcloud_storage_class: longhorn, but Longhorn is off on every k3s node"),
    "bad_storage_class": ({"nextcloud_storage_class": "nfs"}, "nextcloud_storage_class: `'nfs'` is not one of 'longhorn', 'local-path'"),
}


def test_nextcloud_settings_differing_between_servers_are_refused():
    namespace = set_host(nextcloud_inventory(), "pi2", nextcloud_domain="other.example.org")
    assert any(e.startswith("pi2: nextcloud_domain: differs from pi1's") for e in errors_of(namespace))


# --- contacts and calendars as files (homecloud/layers/davsync.py) ---------------------------

DAVSYNC = {
    "dav_sync_node": "pi1",
    "dav_sync_url": "https://cloud.example.org/remote.php/dav/",
    "dav_sync_users": [{"user": "alice", "password": "Tq9r-Wm2x-Kp7v-Lz3c", "folder": "data/dav/alice"}],
}


def davsync_inventory(**over):
    return set_all(good_inventory(), **{**copy.deepcopy(DAVSYNC), **over})


def test_good_davsync_inventory_passes():
    assert errors_of(davsync_inventory()) == []


DAVSYNC_BAD = {
    "node_not_dnas": ({"dav_sync_node": "pi3"}, "pi1: dav_sync_node: `pi3` is not a dnas node"),
    "folder_outside_syncthing": (
        {"dav_sync_users": [{"user": "alice", "password": "Tq9r-Wm2x-Kp7v-Lz3c", "folder": "dav/alice"}]},
        "pi1: dav_sync_users: folder `dav/alice` of `alice` is in no Syncthing folder",
    ),
    "example_password": (
        {"dav_sync_users": [{"user": "alice", "password": "changeme", "folder": "data/dav/alice"}]},
        "pi1: dav_sync_users: the password of `alice` is missing or an example value",
    ),
    "no_url": ({"dav_sync_url": None}, "pi1: dav_sync_url: missing, and there is no nextcloud_domain to derive it from"),
    "bad_url": ({"dav_sync_url": "cloud.example.org"}, "pi1: dav_sync_url: `'cloud.example.org'` is not an http(s) URL"),
    "bad_interval": ({"dav_sync_interval": "hourly"}, "pi1: dav_sync_interval: `hourly` is not a time span"),
    "bad_conflict": ({"dav_sync_conflict": "newest wins"}, "dav_sync_conflict: `'newest wins'` is not one of 'server wins', 'files win'"),
    "syncthing_off": ({"syncthing_enabled": False}, "pi1: dav_sync_node: Syncthing is off on this node"),
}


SERVICES_BAD = {
    **{f"nextcloud_{case}": (nextcloud_inventory, *bad) for case, bad in NEXTCLOUD_BAD.items()},
    **{f"davsync_{case}": (davsync_inventory, *bad) for case, bad in DAVSYNC_BAD.items()},
}


@pytest.mark.parametrize("case", sorted(SERVICES_BAD))
def test_bad_services_data_is_refused_with_a_clear_message(case):
    inventory, over, message = SERVICES_BAD[case]
    errors = errors_of(inventory(**over))
    assert any(message in e for e in errors), errors
    assert all("Fix: " in e for e in errors), errors


def test_davsync_config_pairs_files_and_server_per_user():
    from homecloud.layers import davsync

    config = davsync.LAYER.settings({**DAVSYNC, "dav_sync_verify": False, "dav_sync_conflict": "files win"})
    text = davsync.render_config(config)
    assert '[pair alice_contacts]' in text and '[pair alice_calendars]' in text
    assert 'path = "/srv/dnas/data/dav/alice/contacts/"' in text and 'fileext = ".ics"' in text
    assert text.count('conflict_resolution = "a wins"') == 2 and text.count("verify = false") == 2
    assert text.count('password = "Tq9r-Wm2x-Kp7v-Lz3c"') == 2
    derived = davsync.LAYER.settings({**DAVSYNC, "dav_sync_url": None, "nextcloud_domain": "cloud.example.org"})
    assert 'url = "https://cloud.example.org/remote.php/dav/"' in davsync.render_config(derived)


def test_nextcloud_storage_class_follows_longhorn_unless_given():
    from homecloud.layers import services

    assert errors_of(nextcloud_inventory(longhorn_enabled=False)) == []
    nodes = {"pi1": ("192.168.1.11", "/srv/dnas"), "pi2": ("192.168.1.12", "/srv/dnas")}
    config = services.LAYER.settings(NEXTCLOUD)
    assert services.nextcloud_settings(config, nodes, longhorn=True).storage_class == "longhorn"
    assert services.nextcloud_settings(config, nodes, longhorn=False).storage_class == "local-path"
    given = services.LAYER.settings({**NEXTCLOUD, "nextcloud_storage_class": "local-path"})
    assert services.nextcloud_settings(given, nodes, longhorn=True).storage_class == "local-path"


def test_nextcloud_folders_each_dnas_node_holds():
    from homecloud.layers import services

    config = services.LAYER.settings({**NEXTCLOUD, "nextcloud_dump_path": "data/backups/nextcloud-db"})
    assert services._folders_on(config, "pi1", "/srv/dnas") == (
        ["/srv/dnas/data", "/srv/dnas/data/photos", "/srv/dnas/data/backups"],
        "/srv/dnas/data/backups/nextcloud-db",
    )
    assert services._folders_on(config, "pi2", "/data") == (["/data/data", "/data/data/family"], None)


def test_backup_to_another_node_and_a_usb_disk_passes():
    namespace = good_inventory()
    set_host(namespace, "pi1", **{**BACKUP, "backup_targets": [
        {"name": "pi3", "type": "sftp", "host": "pi3"},
        {"name": "usb", "type": "local", "device": "LABEL=backup"},
    ]})
    assert errors_of(namespace) == []
