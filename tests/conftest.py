"""
Test options for the whole suite.

    pytest                          # unit tier only; lab tests are skipped
    pytest --lab=local              # + the local nspawn lab (root, Debian host): brought up if
                                    #   needed, deployed once, checked, destructive tests included
    pytest --lab=vagrant            # + a Vagrant lab (lab/vagrant.py, inventories/vagrant.py)
    pytest --inventory inventories/home.py
                                    # post-deploy checks against a real cluster: no deploy, no
                                    #   destructive test; the cluster must be deployed already

The default of --lab can also come from $HOMECLOUD_TEST_LAB.
"""

import os

LAB_MODES = ("none", "local", "vagrant")


def pytest_addoption(parser):
    group = parser.getgroup("homecloud")
    group.addoption(
        "--lab",
        choices=LAB_MODES,
        default=os.environ.get("HOMECLOUD_TEST_LAB", "none"),
        help="where the lab tests run: none (skip them, default), local (nspawn lab on this host, "
        "needs root), vagrant (Vagrant VMs)",
    )
    group.addoption(
        "--inventory",
        default=None,
        metavar="PATH",
        help="run the post-deploy checks against the real cluster of this inventory (no deploy, "
        "no destructive tests)",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "destructive: crashes, powers off or cuts nodes; runs only on a lab (--lab=local/vagrant), "
        "never with --inventory",
    )
