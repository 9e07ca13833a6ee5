import { Construct } from 'constructs';
import { Container } from '@cdktf/provider-docker/lib/container';
import { Network } from '@cdktf/provider-docker/lib/network';
import { Volume } from '@cdktf/provider-docker/lib/volume';
import { POSTGRES_FILES_DIR, PostgresContainer, superviseWithReaper, tlsSettings } from './postgres-container';

export interface PostgresReplicaProps {
  /** Container name; also its host name on the private network. */
  readonly containerName: string;
  /** The primary it streams from, over TLS, through a slot the primary made on its first start. */
  readonly primary: PostgresContainer;
  readonly network: Network;
  /** Port published on 127.0.0.1 only. */
  readonly hostPort: number;
  /** The primary's superuser: the reaper connects as it over the replica's own Unix socket. @default "postgres" */
  readonly adminUser?: string;
  /** The replication role and the primary's physical slot. */
  readonly replicationRole: string;
  readonly slot: string;
  /**
   * A host directory, owned by the image's postgres user and mounted read-only at
   * /pgvault/postgres: tls.pem and tls-key.pem (the replica's certificate), ca.pem (to verify the
   * primary), and pgpass (the replication password, for libpq). Made outside Terraform, so the
   * password is in no state.
   */
  readonly filesDir: string;
  /** The environment's mark, `pgvault:<env>`: the reaper's (see PostgresContainerProps.mark). */
  readonly mark: string;
  /**
   * How often the reaper ends sessions here: of roles that no longer exist (a revoked user,
   * dropped on the primary and replayed here), of disarmed roles, and of users past their
   * statement or idle-in-transaction bound (with hot_standby_feedback, an idle transaction on the
   * replica would hold back vacuum on the primary).
   * @default 0.5
   */
  readonly reapIntervalSeconds?: number;
}

/**
 * The replica's start script, run as root. First start: pg_basebackup from the primary through
 * the slot (retried until the primary answers). Every start: postgres as a hot standby, and the
 * reaper beside it. Postgres's DROP ROLE does not end a dropped user's sessions, on the primary
 * (Vault's revocation statements do that there) nor on a standby (nothing does), so the reaper
 * does it here, with the primary's reaper (reaperFunction): disarmed roles and users past their
 * bounds too. The shell stays PID 1
 * and passes docker's stop signal on to postgres.
 */
function startScript(p: { primaryHost: string; role: string; slot: string; adminUser: string; interval: number; mark: string }): string {
  const conninfo = `host=${p.primaryHost} port=5432 user=${p.role} passfile=${POSTGRES_FILES_DIR}/pgpass sslmode=verify-full sslrootcert=${POSTGRES_FILES_DIR}/ca.pem application_name=${p.slot}`;
  const settings = [...tlsSettings(), '-c', 'hot_standby=on', '-c', 'hot_standby_feedback=on', '-c', `primary_slot_name=${p.slot}`]
    .map((s) => `'${s}'`)
    .join(' ');
  return `#!/bin/bash
# Made by stacks/constructs/postgres-replica.ts.
set -Eeuo pipefail
PGDATA=/var/lib/postgresql/data
conninfo='${conninfo}'
as_postgres() { HOME=/var/lib/postgresql setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until as_postgres pg_basebackup --pgdata="$PGDATA" --dbname="$conninfo" --wal-method=stream --slot='${p.slot}' --checkpoint=fast --no-password; do
    echo "pgvault: pg_basebackup from ${p.primaryHost} failed; retrying in 2 s" >&2
    find "$PGDATA" -mindepth 1 -delete
    sleep 2
  done
  echo "pgvault: replica cloned from ${p.primaryHost} through slot ${p.slot}"
fi
as_postgres touch "$PGDATA/standby.signal"
# exec: $! is postgres itself, which the stop signal must reach.
(HOME=/var/lib/postgresql exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql ${settings} -c primary_conninfo="$conninfo") &
pg=$!
${superviseWithReaper({ adminUser: p.adminUser, mark: p.mark, intervalSeconds: p.interval })}`;
}

/**
 * A streaming replica of a PostgresContainer: physical replication through a slot, cloned by
 * pg_basebackup on its first start, TLS only (like its primary), a hot standby that roles with
 * "target": "replica" connect to, and a reaper that ends revoked users' sessions on it.
 */
export class PostgresReplica extends Construct {
  public readonly container: Container;
  public readonly volume: Volume;
  /** Host name that other containers on the network use. */
  public readonly hostname: string;
  public readonly port = 5432;

  constructor(scope: Construct, id: string, props: PostgresReplicaProps) {
    super(scope, id);
    const adminUser = props.adminUser ?? 'postgres';
    const interval = props.reapIntervalSeconds ?? 0.5;
    if (!(interval > 0 && interval <= 60)) throw new Error(`PostgresReplica ${props.containerName}: reapIntervalSeconds is ${interval}; expected more than 0 and at most 60`);
    this.hostname = props.containerName;
    this.volume = new Volume(this, 'data', { name: `${props.containerName}-data` });
    const script = startScript({ primaryHost: props.primary.hostname, role: props.replicationRole, slot: props.slot, adminUser, interval, mark: props.mark });
    this.container = new Container(this, 'container', {
      name: props.containerName,
      hostname: props.containerName,
      // The primary's image: a replica runs the same major version.
      image: props.primary.container.image,
      entrypoint: ['bash', '/usr/local/bin/pgvault-replica.sh'],
      command: [],
      upload: [{ file: '/usr/local/bin/pgvault-replica.sh', contentBase64: Buffer.from(script).toString('base64'), executable: true }],
      volumes: [
        { volumeName: this.volume.name, containerPath: '/var/lib/postgresql/data' },
        { hostPath: props.filesDir, containerPath: POSTGRES_FILES_DIR, readOnly: true },
      ],
      ports: [{ internal: 5432, external: props.hostPort, ip: '127.0.0.1' }],
      networksAdvanced: [{ name: props.network.name, aliases: [props.containerName] }],
      healthcheck: {
        test: ['CMD', 'pg_isready', '-h', '127.0.0.1', '-U', adminUser],
        interval: '2s',
        timeout: '3s',
        retries: 60,
        startPeriod: '2s',
      },
      stopSignal: 'SIGINT',
      restart: 'unless-stopped',
      wait: true,
      waitTimeout: 180,
      mustRun: true,
      dependsOn: [props.primary.container],
    });
  }
}
