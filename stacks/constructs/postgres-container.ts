import { Construct } from 'constructs';
import { Container } from '@cdktf/provider-docker/lib/container';
import { Image } from '@cdktf/provider-docker/lib/image';
import { Network } from '@cdktf/provider-docker/lib/network';
import { Volume } from '@cdktf/provider-docker/lib/volume';
import { reaperStatement } from '../statements';

export interface PostgresContainerProps {
  /** Container name; also its host name on the private network. */
  readonly containerName: string;
  /** Image honouring the official postgres image's contract. */
  readonly image: string;
  /** The private network the container joins. */
  readonly network: Network;
  /** Port published on 127.0.0.1 only. */
  readonly hostPort: number;
  /** Database created on first start. */
  readonly database: string;
  /** Superuser created on first start. @default "postgres" */
  readonly adminUser?: string;
  /**
   * Absolute path of a file on the Docker host that holds the superuser password.
   * It is mounted read-only and read through POSTGRES_PASSWORD_FILE, so the password
   * never enters Terraform's configuration or state.
   */
  readonly passwordFile: string;
  /**
   * Serve TLS only: every TCP connection, replication included, must use TLS (hostssl), with
   * `tls.pem` and `tls-key.pem` from this host directory, mounted read-only at /pgvault/postgres
   * and owned by the image's postgres user. Connections are logged (with their TLS protocol).
   * @default no TLS (plain TCP)
   */
  readonly tlsDir?: string;
  /**
   * A role that may stream WAL (over TLS only), created on the first start with the SCRAM
   * verifier in `<tlsDir>/replication.scram` (never the password), and a physical slot.
   * Needs tlsDir. @default no replication role or slot
   */
  readonly replication?: { readonly role: string; readonly slot: string; readonly mark: string };
  /**
   * The environment's mark, `pgvault:<env>`: the reaper beside Postgres ends, every
   * reapIntervalSeconds, the sessions of dropped roles (a login that raced its revocation), of the
   * roles this environment disarmed, and of its dynamic users past their statement or
   * idle-in-transaction bound (see reaperStatement).
   */
  readonly mark: string;
  /** How often the reaper runs. @default 0.5 */
  readonly reapIntervalSeconds?: number;
  /**
   * PostgreSQL 16+: connection slots kept for roles with pg_use_reserved_connections (Vault's),
   * so that users who fill every other slot cannot stop issuance and revocation. Ignored before 16.
   * @default 4 (Vault's default pool)
   */
  readonly reservedConnections?: number;
}

/** Where the TLS and replication files are mounted in the container. */
export const POSTGRES_FILES_DIR = '/pgvault/postgres';

/** Server settings for TLS from POSTGRES_FILES_DIR, as `-c` arguments. */
export function tlsSettings(): string[] {
  return ['-c', 'ssl=on', '-c', `ssl_cert_file=${POSTGRES_FILES_DIR}/tls.pem`, '-c', `ssl_key_file=${POSTGRES_FILES_DIR}/tls-key.pem`,
    '-c', 'ssl_min_protocol_version=TLSv1.2', '-c', 'log_connections=on'];
}

/**
 * First-start script (sourced by the image's entrypoint as the postgres user, with a server on
 * the Unix socket): TCP only with TLS, and the replication role and slot. No `${` in it: it goes
 * through Terraform, base64-encoded all the same.
 */
function initScript(replication?: PostgresContainerProps['replication']): string {
  const lines = [
    '# pgvault: every TCP connection must use TLS (hostssl); the Unix socket stays for the entrypoint.',
    'sed -E -i \'s/^host([[:space:]])/hostssl\\1/\' "$PGDATA/pg_hba.conf"',
  ];
  if (replication) {
    lines.push(
      '# pgvault: the replica streams as this role, over TLS, through its slot.',
      `psql -v ON_ERROR_STOP=1 --dbname postgres -q --set role=${replication.role} --set slot=${replication.slot} --set mark='${replication.mark}' --set verifier="$(< ${POSTGRES_FILES_DIR}/replication.scram)" <<'SQL'`,
      `CREATE ROLE :"role" WITH LOGIN REPLICATION PASSWORD :'verifier';`,
      `COMMENT ON ROLE :"role" IS :'mark';`,
      "SELECT pg_catalog.pg_create_physical_replication_slot(:'slot');",
      'SQL',
      `echo "hostssl replication ${replication.role} all scram-sha-256" >> "$PGDATA/pg_hba.conf"`,
    );
  }
  return lines.join('\n') + '\n';
}

/**
 * The reaper, as a bash function `reap` for a start script that defines `as_postgres` and runs
 * Postgres as `$pg`: one psql session over the local socket as the superuser, one short
 * statement per interval (it holds no snapshot between passes, so on a standby it never holds up
 * replay), started again whenever that session ends. The user cannot influence it: it reads the
 * bounds from the role's comment, which only a role with CREATEROLE can set.
 */
export function reaperFunction(p: { adminUser: string; mark: string; intervalSeconds: number }): string {
  if (!(p.intervalSeconds > 0 && p.intervalSeconds <= 60)) throw new Error(`reapIntervalSeconds is ${p.intervalSeconds}; expected more than 0 and at most 60`);
  return `reap() {
  local sql="${reaperStatement(p.mark)}"
  while kill -0 "$pg" 2>/dev/null; do
    while sleep ${p.intervalSeconds}; do echo "$sql"; done \\
      | as_postgres env PGAPPNAME=pgvault-reaper psql -X -q -t -A -h /var/run/postgresql -U '${p.adminUser}' -d postgres 2>/dev/null \\
      | while read -r n; do [ "$n" = 0 ] || echo "pgvault reaper: terminated $n session(s) of dropped or disarmed roles, or past their bounds"; done || true
    sleep 1
  done
}
`;
}

/**
 * The end of a start script that started Postgres in the background as `$pg`: passes docker's
 * stop signal on to it, runs the reaper beside it, and exits with Postgres's status.
 */
export function superviseWithReaper(p: { adminUser: string; mark: string; intervalSeconds: number }): string {
  return `trap 'kill -INT "$pg" 2>/dev/null' INT TERM
${reaperFunction(p)}reap &
set +e
while :; do
  wait "$pg"
  status=$?
  kill -0 "$pg" 2>/dev/null || break
done
exit "$status"
`;
}

/**
 * The primary's start script, run as root: the image's own entrypoint in the background (its
 * contract unchanged: initdb, POSTGRES_*, /docker-entrypoint-initdb.d), the reaper beside it,
 * and on PostgreSQL 16+ the reserved slots. The shell stays PID 1 and passes docker's stop
 * signal on to postgres (the entrypoint execs into it, so its PID is postgres's).
 */
function startScript(p: { adminUser: string; mark: string; intervalSeconds: number; reservedConnections: number }): string {
  return `#!/bin/bash
# Made by stacks/constructs/postgres-container.ts.
set -Eeuo pipefail
as_postgres() { HOME=/var/lib/postgresql setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
major=$(postgres -V | sed -E 's/^[^0-9]*([0-9]+).*$/\\1/')
if [ "$major" -ge 16 ]; then set -- "$@" -c reserved_connections=${p.reservedConnections}; fi
/usr/local/bin/docker-entrypoint.sh "$@" &
pg=$!
${superviseWithReaper(p)}`;
}

/** Where the primary's start script is uploaded. */
const START_SCRIPT = '/usr/local/bin/pgvault-postgres.sh';

/** Postgres in a container, with its data on a named volume, a pg_isready health check and the reaper. */
export class PostgresContainer extends Construct {
  public readonly container: Container;
  public readonly volume: Volume;
  /** Host name that other containers on the network use. */
  public readonly hostname: string;
  public readonly port = 5432;

  constructor(scope: Construct, id: string, props: PostgresContainerProps) {
    super(scope, id);
    const adminUser = props.adminUser ?? 'postgres';
    const image = new Image(this, 'image', { name: props.image, keepLocally: true });
    this.volume = new Volume(this, 'data', { name: `${props.containerName}-data` });
    this.hostname = props.containerName;
    if (props.replication && !props.tlsDir) throw new Error(`PostgresContainer ${props.containerName}: replication needs tlsDir (the replica streams over TLS only)`);
    const reservedConnections = props.reservedConnections ?? 4;
    if (!(Number.isInteger(reservedConnections) && reservedConnections >= 1 && reservedConnections <= 50)) {
      throw new Error(`PostgresContainer ${props.containerName}: reservedConnections is ${reservedConnections}; expected an integer from 1 to 50`);
    }
    const script = startScript({ adminUser, mark: props.mark, intervalSeconds: props.reapIntervalSeconds ?? 0.5, reservedConnections });
    this.container = new Container(this, 'container', {
      name: props.containerName,
      hostname: props.containerName,
      image: image.imageId,
      env: [
        `POSTGRES_USER=${adminUser}`,
        `POSTGRES_DB=${props.database}`,
        'POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password',
      ],
      volumes: [
        { volumeName: this.volume.name, containerPath: '/var/lib/postgresql/data' },
        { hostPath: props.passwordFile, containerPath: '/run/secrets/postgres-password', readOnly: true },
        ...(props.tlsDir ? [{ hostPath: props.tlsDir, containerPath: POSTGRES_FILES_DIR, readOnly: true }] : []),
      ],
      entrypoint: ['bash', START_SCRIPT],
      command: props.tlsDir ? ['postgres', ...tlsSettings(), '-c', 'max_slot_wal_keep_size=1GB'] : ['postgres'],
      upload: [
        { file: START_SCRIPT, contentBase64: Buffer.from(script).toString('base64'), executable: true },
        ...(props.tlsDir
          ? [{ file: '/docker-entrypoint-initdb.d/20-pgvault-tls.sh', contentBase64: Buffer.from(initScript(props.replication)).toString('base64'), permissions: '0644' }]
          : []),
      ],
      ports: [{ internal: 5432, external: props.hostPort, ip: '127.0.0.1' }],
      networksAdvanced: [{ name: props.network.name, aliases: [props.containerName] }],
      healthcheck: {
        test: ['CMD', 'pg_isready', '-h', '127.0.0.1', '-U', adminUser, '-d', props.database],
        interval: '2s',
        timeout: '3s',
        retries: 30,
        startPeriod: '2s',
      },
      stopSignal: 'SIGINT',
      restart: 'unless-stopped',
      wait: true,
      waitTimeout: 120,
      mustRun: true,
    });
  }
}
