"""
Facts about the NFS exports of a dnas node, for either server:

- `KernelExports`: what the kernel server exports now (`exportfs -v`);
- `GaneshaExports`: the EXPORT blocks of nfs-ganesha's configuration, marked `active` when the
  running server reports the export over D-Bus (`ShowExports`; None when D-Bus cannot tell).

Both return the same shape: path -> {"clients": {network: {access, squash, anonuid, anongid}}}
(ganesha adds pseudo, protocols, transports, active), so tests read either backend alike.
"""

from __future__ import annotations

import re

from pyinfra.api import FactBase, QuoteString, StringCommand

SQUASH = {
    "all_squash": "all",
    "allsquash": "all",
    "all": "all",
    "all_anonymous": "all",
    "allanonymous": "all",
    "root_squash": "root",
    "rootsquash": "root",
    "root": "root",
    "no_root_squash": "none",
    "noidsquash": "none",
    "none": "none",
    "root_id_squash": "rootid",
    "rootidsquash": "rootid",
    "rootid": "rootid",
}


CLIENT_RE = re.compile(r"^(\S+)\((.*)\)$")


def _kernel_client(options: list[str]) -> dict:
    values = dict(option.split("=", 1) if "=" in option else (option, None) for option in options)
    if "all_squash" in values:
        squash = "all"
    elif "no_root_squash" in values:
        squash = "none"
    else:
        squash = "root"
    return {
        "access": "rw" if "rw" in values else "ro",
        "squash": squash,
        "anonuid": int(values["anonuid"]) if values.get("anonuid") else None,
        "anongid": int(values["anongid"]) if values.get("anongid") else None,
        "options": options,
    }


class KernelExports(FactBase):
    """
    The exports of the kernel NFS server (`exportfs -v`): path -> clients -> options.
    Empty when nfs-kernel-server is not installed or exports nothing.

    .. code:: python

        {
            "/srv/dnas/data": {
                "clients": {
                    "192.168.1.0/24": {
                        "access": "rw",
                        "squash": "all",
                        "anonuid": 2000,
                        "anongid": 2000,
                        "options": ["sync", "wdelay", "...", "rw", "all_squash"],
                    },
                },
            },
        }
    """

    requires_command = "exportfs"
    default = dict

    def command(self):
        return "exportfs -v 2>/dev/null || true"

    def process(self, output):
        # `exportfs -v` prints one line per (path, client): the path as it is (not escaped, so it
        # may hold blanks), padded to 14 characters, a tab, then client(options); a path longer
        # than 14 characters is printed alone and its client follows on the next line after two
        # tabs. An export to several clients repeats the path for each one.
        exports: dict[str, dict] = {}
        pending = None
        for line in output:
            if not line.strip():
                continue
            if line[0].isspace():
                if pending is None:
                    continue
                path, client_part = pending, line.strip()
            else:
                head, tab, rest = line.partition("\t")
                if not (tab and CLIENT_RE.match(rest.strip())):
                    # A long path alone; its client follows on the next line.
                    pending = line
                    continue
                path, client_part = head.rstrip(" "), rest.strip()
            pending = None
            match = CLIENT_RE.match(client_part)
            if not match:
                continue
            client, options = match.groups()
            client = "*" if client == "<world>" else client
            entry = exports.setdefault(path, {"clients": {}})
            entry["clients"][client] = _kernel_client([o for o in options.split(",") if o])
        return exports


# --- nfs-ganesha ------------------------------------------------------------------------------

TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|[{};=,]|[^\s{};=,"#]+')


def _tokens(lines):
    for line in lines:
        # Comments run from # to the end of the line (outside quotes).
        for token in TOKEN_RE.findall(_strip_comment(line)):
            yield token


def _strip_comment(line: str) -> str:
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def parse_ganesha(lines) -> list[dict]:
    """
    Parse ganesha's config syntax into blocks: {"name", "params": {lower key: [values]},
    "blocks": [...]}. Values keep their case; quoted strings lose their quotes.
    """
    tokens = list(_tokens(lines))
    position = 0

    def block_body():
        nonlocal position
        params: dict[str, list[str]] = {}
        blocks: list[dict] = []
        while position < len(tokens):
            token = tokens[position]
            if token == "}":
                position += 1
                return params, blocks
            if token in (";", ","):
                position += 1
                continue
            following = tokens[position + 1] if position + 1 < len(tokens) else None
            if following == "{":
                position += 2
                sub_params, sub_blocks = block_body()
                blocks.append({"name": token, "params": sub_params, "blocks": sub_blocks})
            elif following == "=":
                position += 2
                values = []
                while position < len(tokens) and tokens[position] not in (";", "}"):
                    if tokens[position] != ",":
                        values.append(tokens[position].strip('"'))
                    position += 1
                if position < len(tokens) and tokens[position] == ";":
                    position += 1
                params[token.lower()] = values
            else:
                position += 1
        return params, blocks

    _, blocks = block_body()
    return blocks


def _first(params: dict, key: str, default=None):
    values = params.get(key)
    return values[0] if values else default


def _client_view(params: dict, inherited: dict) -> dict:
    access = _first(params, "access_type", inherited.get("access_type", "None"))
    squash = _first(params, "squash", inherited.get("squash", "root_squash"))
    anonuid = _first(params, "anonymous_uid", inherited.get("anonymous_uid"))
    anongid = _first(params, "anonymous_gid", inherited.get("anonymous_gid"))
    return {
        "access": str(access).lower(),
        "squash": SQUASH.get(str(squash).lower(), str(squash).lower()),
        "anonuid": int(anonuid) if anonuid is not None else None,
        "anongid": int(anongid) if anongid is not None else None,
    }


class GaneshaExports(FactBase):
    """
    The EXPORT blocks of nfs-ganesha's configuration (EXPORT_DEFAULTS applied), and whether the
    running server has each one (`active`, from its D-Bus `ShowExports`, which names an export
    by its Pseudo path when NFS_CORE_PARAM sets mount_path_pseudo, by its Path otherwise; None
    when D-Bus gave no answer). `protocols`/`transports` are [] when neither the EXPORT nor
    EXPORT_DEFAULTS sets them (ganesha's built-in defaults apply). ``%include`` files are not
    read. Empty when the file is absent.

    .. code:: python

        {
            "/srv/dnas/data": {
                "export_id": 1,
                "pseudo": "/srv/dnas/data",
                "protocols": ["3", "4"],
                "transports": ["TCP"],
                "access": "none",
                "squash": "all",
                "clients": {
                    "192.168.1.0/24": {"access": "rw", "squash": "all", "anonuid": 2000, "anongid": 2000},
                },
                "active": True,
            },
        }
    """

    default = dict

    def command(self, config="/etc/ganesha/ganesha.conf"):
        return StringCommand(
            "cat",
            QuoteString(config),
            "2>/dev/null; echo '#homecloud-dbus'; dbus-send --system --print-reply --reply-timeout=3000"
            " --dest=org.ganesha.nfsd /org/ganesha/nfsd/ExportMgr"
            " org.ganesha.nfsd.exportmgr.ShowExports 2>/dev/null || true",
        )

    def process(self, output):
        config_lines, dbus_lines = [], []
        target = config_lines
        for line in output:
            if line.strip() == "#homecloud-dbus":
                target = dbus_lines
                continue
            target.append(line)

        active_paths = None
        if any("array [" in line for line in dbus_lines):
            active_paths = set()
            previous_id = False
            for line in dbus_lines:
                stripped = line.strip()
                if previous_id:
                    match = re.match(r'^string "(.*)"$', stripped)
                    if match:
                        active_paths.add(match.group(1))
                previous_id = bool(re.match(r"^uint16 \d+$", stripped))

        blocks = parse_ganesha(config_lines)
        defaults: dict[str, str] = {}
        default_lists: dict[str, list[str]] = {}
        for block in blocks:
            if block["name"].lower() == "export_defaults":
                defaults.update({key: values[0] for key, values in block["params"].items() if values})
                default_lists.update({key: values for key, values in block["params"].items() if values})

        # ShowExports names each export by its Pseudo path when NFS_CORE_PARAM sets
        # mount_path_pseudo (default false), by its Path otherwise.
        by_pseudo = False
        for block in blocks:
            if block["name"].lower() == "nfs_core_param":
                value = _first(block["params"], "mount_path_pseudo")
                if value is not None:
                    by_pseudo = value.lower() in ("true", "yes", "on", "1")

        exports = {}
        for block in blocks:
            if block["name"].lower() != "export":
                continue
            params = block["params"]
            path = _first(params, "path")
            if not path:
                continue
            inherited = dict(defaults)
            inherited.update({key: values[0] for key, values in params.items() if values})
            clients = {}
            for sub in block["blocks"]:
                if sub["name"].lower() != "client":
                    continue
                view = _client_view(sub["params"], inherited)
                for network in sub["params"].get("clients", []):
                    clients[network] = view
            export_view = _client_view({}, inherited)
            export_id = _first(params, "export_id")
            pseudo = _first(params, "pseudo")
            reported = pseudo if by_pseudo and pseudo else path
            exports[path] = {
                "export_id": int(export_id) if export_id and export_id.isdigit() else None,
                "pseudo": pseudo,
                # Lists given neither here nor in EXPORT_DEFAULTS (ganesha's own defaults apply): [].
                "protocols": params.get("protocols") or default_lists.get("protocols", []),
                "transports": params.get("transports") or default_lists.get("transports", []),
                "access": export_view["access"],
                "squash": export_view["squash"],
                "clients": clients,
                "active": None if active_paths is None else reported in active_paths,
            }
        return exports
