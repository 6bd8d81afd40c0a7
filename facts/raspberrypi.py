"""
Raspberry Pi facts: the board model and the kernel command line the Pi firmware boots with.
"""

from __future__ import annotations

from pyinfra.api import FactBase

# Where the firmware's cmdline.txt lives: Raspberry Pi OS bookworm and Ubuntu mount the boot
# partition at /boot/firmware; older Raspberry Pi OS releases at /boot.
CMDLINE_PATHS = ("/boot/firmware/cmdline.txt", "/boot/cmdline.txt")
MODEL_PATHS = ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model")


class Board(FactBase):
    """
    The board and its boot command line: the device-tree model (None when the node has no
    device tree), the cmdline.txt in use and its first line (the firmware reads only that
    one), the command line the running kernel was booted with, and whether the memory and
    cpuset cgroup controllers are enabled (/proc/cgroups).

    .. code:: python

        {
            "model": "Raspberry Pi 4 Model B Rev 1.4",
            "raspberry_pi": True,
            "cmdline_path": "/boot/firmware/cmdline.txt",
            "cmdline": "console=serial0,115200 console=tty1 root=PARTUUID=0c8c5b7a-02 rootwait",
            "running": "coherent_pool=1M 8250.nr_uarts=0 ... console=tty1 root=PARTUUID=0c8c5b7a-02",
            "cgroups": {"memory": False, "cpuset": True},
        }
    """

    @staticmethod
    def default():
        return {
            "model": None,
            "raspberry_pi": False,
            "cmdline_path": None,
            "cmdline": None,
            "running": "",
            "cgroups": {},
        }

    def command(self) -> str:
        models = " ".join(MODEL_PATHS)
        cmdlines = " ".join(CMDLINE_PATHS)
        return (
            f"for f in {models}; do if [ -r \"$f\" ]; then "
            "printf 'model\\t%s\\n' \"$(tr -d '\\000' < \"$f\")\"; break; fi; done; "
            f"for f in {cmdlines}; do if [ -f \"$f\" ] && ! grep -qs 'DO NOT EDIT' \"$f\"; then "
            "printf 'cmdline_path\\t%s\\n' \"$f\"; printf 'cmdline\\t%s\\n' \"$(head -n 1 \"$f\" | tr -d '\\r')\"; "
            "break; fi; done; "
            "printf 'running\\t%s\\n' \"$(cat /proc/cmdline 2>/dev/null)\"; "
            "awk 'NR > 1 { printf \"cgroup\\t%s %s\\n\", $1, $4 }' /proc/cgroups 2>/dev/null; true"
        )

    def process(self, output):
        fact = self.default()
        for line in output:
            key, _, value = line.rstrip("\n").partition("\t")
            value = value.strip()
            if key == "model" and value:
                fact["model"] = value
                fact["raspberry_pi"] = value.startswith("Raspberry Pi")
            elif key == "cmdline_path" and value:
                fact["cmdline_path"] = value
            elif key == "cmdline":
                fact["cmdline"] = value
            elif key == "running":
                fact["running"] = value
            elif key == "cgroup":
                parts = value.split()
                if len(parts) == 2:
                    fact["cgroups"][parts[0]] = parts[1] == "1"
        return fact
