#!/bin/sh
# Read the compose secrets FreeRADIUS needs into the environment its radiusd.conf
# expands ($ENV{...}), then run the command (FreeRADIUS in the foreground).
set -eu

read_secret() {
    if [ ! -r "$1" ]; then
        echo "aaa-radius: cannot read the secret file $1" >&2
        exit 2
    fi
    head -n 1 "$1" | tr -d '\r\n'
}

AAA_STATUS_SECRET="$(read_secret "${AAA_STATUS_SECRET_FILE:-/run/secrets/status-F}")"
AAA_CLIENT_SECRET="$(read_secret "${AAA_CLIENT_SECRET_FILE:-/run/secrets/radius-F}")"
export AAA_STATUS_SECRET AAA_CLIENT_SECRET
exec "$@"
