#!/bin/bash
# Entry point compatible with the official postgres image's environment contract.
set -Eeuo pipefail

# file_env VAR [DEFAULT]: VAR may come from VAR or from the file named by VAR_FILE, not both.
file_env() {
	local var="$1" fileVar="${1}_FILE" def="${2:-}"
	if [ -n "${!var:-}" ] && [ -n "${!fileVar:-}" ]; then
		echo >&2 "error: both $var and $fileVar are set; set only one of them"
		exit 1
	fi
	local val="$def"
	if [ -n "${!var:-}" ]; then
		val="${!var}"
	elif [ -n "${!fileVar:-}" ]; then
		if [ ! -r "${!fileVar}" ]; then
			echo >&2 "error: $fileVar names ${!fileVar}, which is not a readable file"
			exit 1
		fi
		val="$(< "${!fileVar}")"
	fi
	export "$var"="$val"
	unset "$fileVar"
}

if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

if [ "$1" = 'postgres' ]; then
	# A cluster made by another major version cannot be opened: say so once and stop,
	# instead of letting postgres fail on every restart.
	if [ -s "$PGDATA/PG_VERSION" ] && [ "$(< "$PGDATA/PG_VERSION")" != "$PG_MAJOR" ]; then
		echo >&2 "error: $PGDATA holds a PostgreSQL $(< "$PGDATA/PG_VERSION") cluster, but this image runs PostgreSQL $PG_MAJOR, which cannot open it."
		echo >&2 "       Fix: run a PostgreSQL $(< "$PGDATA/PG_VERSION") image on it, upgrade it (pg_dumpall, then restore into a new volume),"
		echo >&2 "       or start over with an empty volume (pgvault: npm run destroy -- <env>, then npm run deploy -- <env>; this deletes its data)."
		exit 78
	fi
	if [ "$(id -u)" = '0' ]; then
		# Read secrets as root (the file may be root-only), then drop to the postgres user.
		file_env POSTGRES_PASSWORD
		mkdir -p "$PGDATA"
		chown postgres:postgres "$PGDATA"
		chmod 700 "$PGDATA"
		exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
	fi
	file_env POSTGRES_PASSWORD
	: "${POSTGRES_USER:=postgres}"
	: "${POSTGRES_DB:=$POSTGRES_USER}"

	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		if [ -z "$POSTGRES_PASSWORD" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != 'trust' ]; then
			echo >&2 "error: database is uninitialized and no superuser password is set."
			echo >&2 "       Set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (or POSTGRES_HOST_AUTH_METHOD=trust, unsafe)."
			exit 1
		fi
		pwfile="$(mktemp)"
		printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
		initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
			--auth-host=scram-sha-256 --encoding=UTF8 ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA" >/dev/null
		rm -f "$pwfile"
		{
			echo
			echo "host all all all ${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
		} >> "$PGDATA/pg_hba.conf"

		# Temporary server on the Unix socket only, for the database and the init scripts.
		pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" -w start >/dev/null
		export PGHOST=/var/run/postgresql PGUSER="$POSTGRES_USER"
		if [ "$POSTGRES_DB" != 'postgres' ]; then
			psql -v ON_ERROR_STOP=1 --dbname postgres -q --set db="$POSTGRES_DB" <<< 'CREATE DATABASE :"db";'
		fi
		for f in /docker-entrypoint-initdb.d/*; do
			case "$f" in
				*.sh)  echo "running $f"; . "$f" ;;
				*.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 --dbname "$POSTGRES_DB" -q -f "$f" ;;
				*)     [ -e "$f" ] && echo "ignoring $f" ;;
			esac
		done
		unset PGHOST PGUSER
		pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
		echo "PostgreSQL init process complete; ready for start up."
	fi
	unset POSTGRES_PASSWORD
	exec postgres -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql "${@:2}"
fi

exec "$@"
