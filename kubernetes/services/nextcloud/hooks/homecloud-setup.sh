#!/bin/sh
# homecloud's Nextcloud setup, run by the image as www-data after the installation
# (post-installation) and before every start (before-starting), so a change of the data model
# reaches an installed Nextcloud too. Idempotent: what is already so is left alone.
#  - apps: Calendar and Contacts (from the app store; a store out of reach is a warning, the
#    next start tries again), External storage support;
#  - background jobs by cron (the pod's cron sidecar runs cron.php every 5 minutes);
#  - trusted_domains as NEXTCLOUD_TRUSTED_DOMAINS says (the data model's domain and extras);
#  - the dnas folders of storages.tsv as "Local" external storages at /mnt/dnas/<mount>,
#    each for its users and groups (groups are created; users are yours to create), checking for changes on every direct access (files changed
#    by Syncthing, Samba or NFS show up).
set -eu
HERE=$(dirname "$0")
occ() { php /var/www/html/occ "$@"; }

if ! occ status --output=json 2>/dev/null | grep -q '"installed":true'; then
    echo "homecloud: Nextcloud is not installed yet; nothing to set up"
    exit 0
fi

for app in calendar contacts; do
    if occ app:list --enabled --output=json | php -r '$a = json_decode(stream_get_contents(STDIN), true); exit(isset($a["enabled"][$argv[1]]) ? 0 : 1);' "$app"; then
        continue
    fi
    occ app:install "$app" || occ app:enable "$app" || echo "homecloud: WARNING: app $app could not be installed (app store out of reach?); the next start tries again"
done
occ app:enable files_external
occ background:cron

# trusted_domains from the data model (the image applies NEXTCLOUD_TRUSTED_DOMAINS only when it
# installs): index 0, 1, ... in order, extra old entries removed.
i=0
for domain in $NEXTCLOUD_TRUSTED_DOMAINS; do
    occ config:system:set trusted_domains "$i" --value="$domain" >/dev/null
    i=$((i + 1))
done
while occ config:system:get trusted_domains "$i" >/dev/null 2>&1; do
    occ config:system:delete trusted_domains "$i" >/dev/null
    i=$((i + 1))
done

mount_id() {
    occ files_external:list --output=json | php -r '
        foreach (json_decode(stream_get_contents(STDIN), true) ?: [] as $m) {
            if ($m["mount_point"] === "/" . $argv[1]) { echo $m["mount_id"]; exit(0); }
        }' "$1"
}

grep -v '^#' "$HERE/storages.tsv" | while IFS="$(printf '\t')" read -r mount path users groups; do
    [ -n "$mount" ] || continue
    if [ ! -d "$path" ]; then
        echo "homecloud: ERROR: $path (external storage $mount) is not mounted in the pod" >&2
        exit 1
    fi
    id=$(mount_id "$mount")
    if [ -z "$id" ]; then
        occ files_external:create "/$mount" local null::null -c "datadir=$path"
        id=$(mount_id "$mount")
    fi
    occ files_external:config "$id" datadir "$path"
    # 1: check for changes once on every direct access (Syncthing, Samba and NFS write here too).
    occ files_external:option "$id" filesystem_check_changes 1
    occ files_external:option "$id" enable_sharing true
    occ files_external:applicable "$id" --remove-all >/dev/null
    for user in $(echo "$users" | tr ',' ' '); do occ files_external:applicable "$id" --add-user "$user" >/dev/null || echo "homecloud: WARNING: user $user does not exist yet (create it; the next start adds it to /$mount)"; done
    for group in $(echo "$groups" | tr ',' ' '); do
        # The data model names the group: it exists (group:add fails when it already does).
        occ group:add "$group" >/dev/null 2>&1 || true
        occ files_external:applicable "$id" --add-group "$group" >/dev/null
    done
    echo "homecloud: external storage /$mount -> $path (users: ${users:-none}; groups: ${groups:-none})"
done
