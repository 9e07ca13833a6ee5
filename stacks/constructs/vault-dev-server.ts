import { Construct } from 'constructs';
import { Container } from '@cdktf/provider-docker/lib/container';
import { Image } from '@cdktf/provider-docker/lib/image';
import { Network } from '@cdktf/provider-docker/lib/network';

export interface VaultDevServerProps {
  readonly containerName: string;
  /** Image honouring the official Vault image's dev-mode contract (hashicorp/vault, or the local OpenBao image). */
  readonly image: string;
  readonly network: Network;
  /** Port published on 127.0.0.1 only. */
  readonly hostPort: number;
  /**
   * The dev server's root token, as a Terraform reference (a sensitive variable).
   * The Docker provider keeps a container's env in state, so this one secret is in local state.
   */
  readonly rootToken: string;
}

/** A Vault server in dev mode (in memory, unsealed): for local use only. */
export class VaultDevServer extends Construct {
  public readonly container: Container;
  /** Address reachable from the Docker host. */
  public readonly address: string;

  constructor(scope: Construct, id: string, props: VaultDevServerProps) {
    super(scope, id);
    const image = new Image(this, 'image', { name: props.image, keepLocally: true });
    this.address = `http://127.0.0.1:${props.hostPort}`;
    this.container = new Container(this, 'container', {
      name: props.containerName,
      hostname: props.containerName,
      image: image.imageId,
      command: ['server', '-dev'],
      env: [`VAULT_DEV_ROOT_TOKEN_ID=${props.rootToken}`, 'VAULT_DEV_LISTEN_ADDRESS=0.0.0.0:8200', 'SKIP_SETCAP=true'],
      // No capabilities block: dev mode does not mlock, and the Docker provider re-plans that block on every deploy.
      ports: [{ internal: 8200, external: props.hostPort, ip: '127.0.0.1' }],
      networksAdvanced: [{ name: props.network.name, aliases: [props.containerName] }],
      healthcheck: {
        test: ['CMD', 'vault', 'status', '-address=http://127.0.0.1:8200'],
        interval: '2s',
        timeout: '3s',
        retries: 30,
        startPeriod: '1s',
      },
      restart: 'unless-stopped',
      wait: true,
      waitTimeout: 120,
      mustRun: true,
    });
  }
}
