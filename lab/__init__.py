"""
The local homecloud lab: Debian 12 nodes (real systemd + sshd) in systemd-nspawn containers on a
Linux bridge, with an apt proxy as the only way out, real ext4 data disks on the dnas nodes, and
no hypervisor.

    sudo .venv/bin/python -m lab up            # 4 nodes (HOMECLOUD_LAB=<name> for another instance)
    sudo .venv/bin/pyinfra -y inventories/lab.py deploys/all.py
    sudo .venv/bin/python -m pytest --lab=local
    sudo .venv/bin/python -m lab down

Modules: `lab.core` (up/down/reset, nodes, network, disks), `lab.base` (the cached debootstrap
base), `lab.proxy` and `lab.aptproxy` (the apt proxy of each instance), `lab.api` (functions for tests),
`lab.results` (running pyinfra --json and reading its results), `lab.arm` (qemu-user arm64).
"""
