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
      restart: 'unless-stopped',
      wait: true,
      waitTimeout: 120,
      mustRun: true,
    });
  }
}
