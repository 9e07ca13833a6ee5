#!/bin/sh
# Maps the official Vault image's dev-mode variables onto the OpenBao server.
set -eu
if [ "${1:-}" = "server" ]; then
	shift
	dev=false
	for a in "$@"; do [ "$a" = "-dev" ] && dev=true; done
	if $dev; then
		set -- "$@" "-dev-listen-address=${VAULT_DEV_LISTEN_ADDRESS:-0.0.0.0:8200}"
		if [ -n "${VAULT_DEV_ROOT_TOKEN_ID:-}" ]; then
			# Passed through the environment, not argv, so it does not show in `ps`.
			export BAO_DEV_ROOT_TOKEN_ID="$VAULT_DEV_ROOT_TOKEN_ID"
		fi
		unset VAULT_DEV_ROOT_TOKEN_ID
	fi
	exec bao server "$@"
fi
exec "$@"
