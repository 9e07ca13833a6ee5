import { Construct } from 'constructs';
import { Container } from '@cdktf/provider-docker/lib/container';
import { Image } from '@cdktf/provider-docker/lib/image';
import { Network } from '@cdktf/provider-docker/lib/network';
import { Volume } from '@cdktf/provider-docker/lib/volume';

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

/** Postgres in a container, with its data on a named volume and a pg_isready health check. */
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
      command: props.tlsDir ? ['postgres', ...tlsSettings(), '-c', 'max_slot_wal_keep_size=1GB'] : undefined,
      upload: props.tlsDir
        ? [{ file: '/docker-entrypoint-initdb.d/20-pgvault-tls.sh', contentBase64: Buffer.from(initScript(props.replication)).toString('base64'), permissions: '0644' }]
        : undefined,
      ports: [{ internal: 5432, external: props.hostPort, ip: '127.0.0.1' }],
      networksAdvanced: [{ name: props.network.name, aliases: [props.containerName] }],
      healthcheck: {
        test: ['CMD', 'pg_isready', '-h', '127.0.0.1', '-U', adminUser, '-d', props.database],
        interval: '2s',
        timeout: '3s',
        retries: 30,
        startPeriod: '2s',
      },
      restart: 'unless-stopped',
      wait: true,
      waitTimeout: 120,
      mustRun: true,
    });
  }
}
