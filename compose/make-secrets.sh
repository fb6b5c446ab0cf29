#!/bin/sh
# Make the demo secrets of the compose stack: one random 128-bit hex token per file
# named in farm.toml and docker-compose.yml (the signing key of each service that
# publishes in DIR/keys/<service>), the password of each NATS user in
# DIR/nats/<user>, and a development CA with the NATS server's certificate in DIR/tls
# (made by `aaa-failover dev-ca`: AAA_FAILOVER, else the project's .venv, else PATH).
# Files that exist are kept, so running it again changes nothing; delete a file (or
# the folder) to make a new one.
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

# The services with a signing key of their own (farm.toml's bus.service_keys).
KEYED="collector
evaluator
targeter
notifier
readmitter"

# The NATS users of farm.toml's bus (bus.auth): each service, each agent container,
# the operator's tools, replay sandboxes and the harness (administrator).
USERS="aaa
collector
evaluator
targeter
notifier
readmitter
agent-1
agent-2
agent-3
tools
sandbox
harness"

umask 077
mkdir -p "$dir" "$dir/nats" "$dir/keys"
chmod 0700 "$dir" "$dir/nats" "$dir/keys"
made=0
for name in $SECRETS $(for service in $KEYED; do echo "keys/$service"; done) \
    $(for user in $USERS; do echo "nats/$user"; done); do
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

tls="$dir/tls"
if [ ! -s "$tls/ca.pem" ] || [ ! -s "$tls/server.pem" ] || [ ! -s "$tls/server-key.pem" ]; then
    cli="${AAA_FAILOVER:-}"
    venv="$(dirname "$0")/../.venv/bin/aaa-failover"
    if [ -z "$cli" ] && [ -x "$venv" ]; then
        cli="$venv"
    fi
    if [ -z "$cli" ]; then
        cli="$(command -v aaa-failover || true)"
    fi
    if [ -z "$cli" ]; then
        echo "make-secrets: aaa-failover not found for the TLS certificates: run make, or set AAA_FAILOVER" >&2
        exit 1
    fi
    rm -rf "$tls"
    "$cli" dev-ca "$tls" >/dev/null
    chmod 0700 "$tls"
    # readable inside the containers, as the other secrets: the folder keeps others out
    chmod 0444 "$tls"/*.pem
    made=$((made + 1))
fi
echo "make-secrets: $made new secret(s) in $dir" >&2
