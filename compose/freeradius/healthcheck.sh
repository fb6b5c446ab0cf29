#!/bin/sh
# Healthy when the status virtual server answers a Status-Server request.
set -eu
printf 'Message-Authenticator = 0x00\nFreeRADIUS-Statistics-Type = 1\n' |
    radclient -q -r 1 -t 2 -S "${AAA_STATUS_SECRET_FILE:-/run/secrets/status-F}" \
        "${AAA_STATUS_ADDRESS:-127.0.0.14:18121}" status >/dev/null
