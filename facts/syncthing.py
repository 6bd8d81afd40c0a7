"""
Facts about a Syncthing instance run by a system user (``syncthing@<user>``).

The state is read on the node by a short python3 program from the user's config.xml and
certificate: Syncthing saves every change it accepts (GUI, REST API, our helper) to config.xml
at once, so the file is the configuration it runs with, and reading it needs no REST calls and
no network modules (~45 ms instead of ~100 ms for the program with three REST calls). Changes go
through the REST API (API_CLIENT below), with the API key read on the node.
"""

from __future__ import annotations

import json
import shlex

from pyinfra.api import FactBase

# Python prelude shared by the fact, the REST helper and the lab tests: `d` is the config folder
# of the Syncthing of user argv[1] (1.27+ uses ~/.local/state/syncthing unless the older
# ~/.config/syncthing exists; Debian 12 ships 1.19: ~/.config/syncthing; None until Syncthing
# has written its first config.xml: `config_dir()` looks again), `gui()` gives the
# <gui> element and the API's base URL, `api(url, key, path, method, body)` calls the REST API.
_FIND_DIR = """
import json, os, pwd, sys, xml.etree.ElementTree as E
try:
    home = pwd.getpwnam(sys.argv[1]).pw_dir
except KeyError:
    home = None
def config_dir():
    return home and next((p for p in (home + "/.config/syncthing", home + "/.local/state/syncthing") if os.path.isfile(p + "/config.xml")), None)
d = config_dir()
"""
FIND_CONFIG = _FIND_DIR + """import ssl, urllib.request as R
def gui():
    g = E.parse(d + "/config.xml").getroot().find("gui")
    a = g.findtext("address") or "127.0.0.1:8384"
    h, _, port = a.rpartition(":")
    h = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "[::1]"}.get(h, h)
    tls = g.get("tls") == "true"
    return g, ("https://" if tls else "http://") + h + ":" + port
def api(url, key, path, method="GET", body=None):
    r = R.Request(url + path, data=body, method=method, headers={"X-API-Key": key, "Content-Type": "application/json"})
    with R.urlopen(r, timeout=30, context=ssl._create_unverified_context()) as f:
        return f.read()
"""

# Syncthing's device ID from the certificate (PEM text): SHA-256 of the DER, base32, a Luhn
# check character per 13, groups of 7. One source: the Node script runs it on the node, the
# DeviceId fact on the controller.
_DEVICE_ID_SOURCE = """
import base64, hashlib
def device_id(pem):
    der = base64.b64decode("".join(l for l in pem.splitlines() if l and not l.startswith("-----")))
    s = base64.b32encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    a = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    def check(part):
        f, t = 1, 0
        for c in part:
            v = f * a.index(c)
            f = 1 if f == 2 else 2
            t += v // 32 + v % 32
        return a[(32 - t % 32) % 32]
    s = "".join(s[i:i + 13] + check(s[i:i + 13]) for i in range(0, 52, 13))
    return "-".join(s[i:i + 7] for i in range(0, 56, 7))
"""
_DEVICE_ID: dict = {}
exec(_DEVICE_ID_SOURCE, _DEVICE_ID)  # noqa: S102 - our own constant source, defines device_id()

_NODE_SCRIPT = (
    _FIND_DIR
    + """
OPTIONS = ("globalAnnounceEnabled", "localAnnounceEnabled", "relaysEnabled", "natEnabled", "crashReportingEnabled", "urAccepted")
out = {}
"""
    + _DEVICE_ID_SOURCE
    + """
def empty(p):
    p = os.path.expanduser(p.replace("~", home, 1) if p.startswith("~") else p)
    try:
        return not any(e.name not in (".stfolder", ".stignore") for e in os.scandir(p))
    except OSError:
        return True
if d:
    t = E.parse(d + "/config.xml").getroot()
    g = t.find("gui")
    out = {"config": d + "/config.xml", "home": home,
           "gui": {"address": g.findtext("address") or "", "tls": g.get("tls") == "true",
                   "user": g.findtext("user") or "", "password_hash": g.findtext("password") or ""}}
    o = t.find("options")
    out["options"] = {} if o is None else {k: o.findtext(k) or "" for k in OPTIONS}
    try:
        out["device_id"] = device_id(open(d + "/cert.pem").read())
    except OSError:
        out["device_id"] = None
    out["devices"] = {x.get("id"): {"name": x.get("name") or "", "addresses": [a.text for a in x.findall("address")]}
                      for x in t.findall("device")}
    out["folders"] = {f.get("id"): {"label": f.get("label") or "", "path": f.get("path"), "type": f.get("type"),
                                    "devices": sorted(x.get("id") for x in f.findall("device")),
                                    "empty": empty(f.get("path"))} for f in t.findall("folder")}
print(json.dumps(out, sort_keys=True))
"""
)

# Changes a user's Syncthing through its REST API: argv = user, action[, argument].
#   wait              wait (up to 90 s) until the REST API answers
#   edit JSON|@file   merge an edit into the configuration and save it in one PUT /rest/config:
#                     {"devices": [{deviceID, name, addresses}], "remove_devices": [id],
#                      "folders": [{id, label, path, type, devices: [id]}], "remove_folders": [id],
#                      "gui": {address, useTLS, user, password},
#                      "options": {globalAnnounceEnabled, relaysEnabled, natEnabled, ...}}
#                     New devices and folders start from Syncthing's own defaults; a folder's
#                     devices are only ever added to (devices added by hand stay).
# The API key is read from config.xml on the node; an edit holding a password comes from a
# file (mode 0600), never from the command line.
API_CLIENT = (
    "#!/usr/bin/python3\n# homecloud: Syncthing REST helper (installed by operations/syncthing.py, see facts/syncthing.py)."
    + FIND_CONFIG
    + """
import time
action = sys.argv[2]
if action == "wait":
    for i in range(90):
        try:
            d = config_dir()  # a Syncthing started a moment ago writes its first config.xml now
            g, url = gui()
            api(url, g.findtext("apikey"), "/rest/system/ping")
            sys.exit(0)
        except Exception:
            time.sleep(1)
    sys.exit("Syncthing of " + sys.argv[1] + " does not answer on its REST API")
if not d:
    sys.exit("no Syncthing config for user " + sys.argv[1])
g, url = gui()
key = g.findtext("apikey")
def call(*args):
    # Syncthing restarts its GUI/REST listener after a change of the GUI settings (the edit
    # before this one may have been one): a refused or dropped connection is tried again for
    # up to 60 s; an HTTP error answer is not (a PUT repeated after a lost answer is the same).
    for i in range(120):
        try:
            return api(url, key, *args)
        except R.HTTPError:
            raise
        except OSError:
            if i == 119:
                raise
            time.sleep(0.5)
arg = sys.argv[3]
e = json.loads(open(arg[1:]).read() if arg.startswith("@") else arg)
c = json.loads(call("/rest/config"))
def find(items, k, v):
    return next((x for x in items if x[k] == v), None)
for x in e.get("devices", []):
    cur = find(c["devices"], "deviceID", x["deviceID"])
    if cur is None:
        cur = json.loads(call("/rest/config/defaults/device"))
        c["devices"].append(cur)
    cur.update(x)
gone = set(e.get("remove_devices", []))
c["devices"] = [x for x in c["devices"] if x["deviceID"] not in gone]
for f in c["folders"]:
    f["devices"] = [x for x in f["devices"] if x["deviceID"] not in gone]
for x in e.get("folders", []):
    x = dict(x)
    want = x.pop("devices", [])
    cur = find(c["folders"], "id", x["id"])
    if cur is None:
        cur = json.loads(call("/rest/config/defaults/folder"))
        c["folders"].append(cur)
    cur.update(x)
    have = {y["deviceID"] for y in cur["devices"]}
    cur["devices"] += [{"deviceID": i, "introducedBy": "", "encryptionPassword": ""} for i in want if i not in have]
gone = set(e.get("remove_folders", []))
c["folders"] = [x for x in c["folders"] if x["id"] not in gone]
c["gui"].update(e.get("gui", {}))
c["options"].update(e.get("options", {}))
call("/rest/config", "PUT", json.dumps(c).encode())
"""
)


class Node(FactBase):
    """
    Returns the state of the Syncthing run by ``user``; an empty dict when it has no config yet.

    Read from config.xml (Syncthing saves each change it accepts there at once) and the
    device ID from the certificate, whether Syncthing runs or not. Folders list their device
    IDs (the node's own included) and whether the folder holds nothing but Syncthing's marker.

    .. code:: python

        {
            "config": "/var/lib/dnas/.config/syncthing/config.xml",
            "home": "/var/lib/dnas",
            "device_id": "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD",
            "gui": {"address": "127.0.0.1:8384", "tls": False, "user": "homecloud", "password_hash": "$2a$10$..."},
            "options": {  # as config.xml has them
                "globalAnnounceEnabled": "false", "localAnnounceEnabled": "true", "relaysEnabled": "false",
                "natEnabled": "false", "crashReportingEnabled": "false", "urAccepted": "-1",
            },
            "devices": {"MFZWI3D-...": {"name": "node1", "addresses": ["dynamic"]}},
            "folders": {
                "homecloud-data": {
                    "label": "homecloud data", "path": "/srv/dnas/data", "type": "sendreceive",
                    "devices": ["MFZWI3D-...", "P56IOI7-..."], "empty": False,
                },
            },
        }
    """

    default = dict
    requires_command = "python3"

    def command(self, user: str) -> str:
        return f"python3 -c {shlex.quote(_NODE_SCRIPT)} {shlex.quote(user)} || true"

    def process(self, output):
        text = "\n".join(output).strip()
        if not text:
            return {}
        return json.loads(text)


class DeviceId(FactBase):
    """
    Returns the Syncthing device ID of the node (``None`` before Syncthing first ran), computed
    here from the node's certificate (public; the key is not read): the same ID the running
    Syncthing reports, at the cost of one ``cat`` instead of the Node program (python3 parsing
    config.xml), because peers read it from each other.

    .. code:: python

        "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD"

    Command output: the certificate of the config folder the Node fact would use::

        -----BEGIN CERTIFICATE-----
        MIIB...
        -----END CERTIFICATE-----
    """

    @staticmethod
    def default():
        return None

    def command(self, user: str) -> str:
        # The folder as FIND_CONFIG picks it: ~/.config/syncthing if it has a config.xml, else
        # ~/.local/state/syncthing.
        return (
            f"h=$(getent passwd {shlex.quote(user)} | cut -d: -f6); "
            'if [ -n "$h" ]; then for d in "$h/.config/syncthing" "$h/.local/state/syncthing"; do '
            'if [ -f "$d/config.xml" ]; then cat -- "$d/cert.pem" 2>/dev/null; break; fi; done; fi; true'
        )

    def process(self, output):
        pem = "\n".join(output)
        if "BEGIN CERTIFICATE" not in pem:
            return None
        return _DEVICE_ID["device_id"](pem)
