"""The local homecloud lab (systemd-nspawn nodes on a bridge)."""
