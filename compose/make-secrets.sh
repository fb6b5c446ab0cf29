#!/bin/sh
# Make the demo secrets of the compose stack: one random 128-bit hex token per file
# named in farm.toml and docker-compose.yml. Files that exist are kept, so running it
# again changes nothing; delete a file (or the folder) to make a new one.
#
#   compose/make-secrets.sh [DIR]     DIR defaults to compose/secrets
#
# The folder is private to its owner (0700). The files are readable by all (0444)
# because compose bind-mounts each one into the containers, which run as an
# unprivileged user: the folder's mode, not the file's, keeps other users of
# this host out, and inside a container only the services granted a secret see it.
set -eu

dir="${1:-$(dirname "$0")/secrets}"

SECRETS="bus.key
status-A
status-B
status-C
status-F
radius-F
client-nas-01
client-nas-02
client-nas-03
client-nas-04
client-nas-05
client-nas-06"

umask 077
mkdir -p "$dir"
chmod 0700 "$dir"
made=0
for name in $SECRETS; do
    path="$dir/$name"
    if [ -s "$path" ]; then
        continue
    fi
    token="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
    if [ "${#token}" -ne 32 ]; then
        echo "make-secrets: could not read 16 random bytes" >&2
        exit 1
    fi
    printf '%s\n' "$token" >"$path.tmp"
    chmod 0444 "$path.tmp"
    mv -f "$path.tmp" "$path"
    made=$((made + 1))
done
echo "make-secrets: $made new secret(s) in $dir" >&2
