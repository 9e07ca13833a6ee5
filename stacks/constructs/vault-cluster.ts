import { Construct } from 'constructs';
import { Container } from '@cdktf/provider-docker/lib/container';
import { Image } from '@cdktf/provider-docker/lib/image';
import { Network } from '@cdktf/provider-docker/lib/network';
import { Volume } from '@cdktf/provider-docker/lib/volume';

export interface VaultClusterProps {
  /** Node i is the container `<namePrefix>-<i>`, with the volume `<namePrefix>-<i>-data`. */
  readonly namePrefix: string;
  /** An OpenBao image (seal "static" exists only in OpenBao) with `bao` and `sh` on its PATH. */
  readonly image: string;
  readonly network: Network;
  /** Node i is published on 127.0.0.1:(firstHostPort + i), the address it advertises (api_addr). */
  readonly firstHostPort: number;
  /**
   * Each node's configuration directory on the host: config.hcl, TLS files and the seal key,
   * made outside Terraform (ops/vault/vault-cluster.ts) so no key is ever in state.
   */
  readonly configDirs: readonly string[];
  /**
   * A digest of each node's configuration, as a label: a changed configuration replaces the
   * node (a running node reads its config.hcl only at start).
   * @default no label: a changed configuration is read at the node's next restart
   */
  readonly configDigests?: readonly string[];
  /**
   * Where the image's user may write: the node's volume is mounted there, and Docker gives an
   * empty volume the owner of that directory in the image.
   * @default "/vault" (the home of the offline image's `vault` user)
   */
  readonly dataDir?: string;
}

/**
 * An OpenBao cluster on integrated Raft storage: one container per node on the private
 * network, TLS on the API and cluster listeners, static-key auto-unseal, a file audit log on
 * the node's volume. The cluster is initialized after apply (ops/vault/vault-cluster.ts).
 */
export class VaultCluster extends Construct {
  public readonly containers: Container[];
  public readonly volumes: Volume[];
  /** Addresses reachable from the Docker host, node 0 first. */
  public readonly addresses: string[];
  /** The first node's address. */
  public readonly address: string;

  constructor(scope: Construct, id: string, props: VaultClusterProps) {
    super(scope, id);
    const dataDir = props.dataDir ?? '/vault';
    const image = new Image(this, 'image', { name: props.image, keepLocally: true });
    this.addresses = props.configDirs.map((_, i) => `https://127.0.0.1:${props.firstHostPort + i}`);
    this.address = this.addresses[0];
    this.volumes = [];
    this.containers = props.configDirs.map((configDir, i) => {
      const name = `${props.namePrefix}-${i}`;
      const volume = new Volume(this, `data-${i}`, { name: `${name}-data` });
      this.volumes.push(volume);
      return new Container(this, `node-${i}`, {
        name,
        hostname: name,
        image: image.imageId,
        entrypoint: ['sh', '-c'],
        command: [`mkdir -p ${dataDir}/raft ${dataDir}/audit && exec bao server -config=/pgvault/config/config.hcl`],
        env: ['SKIP_SETCAP=true'],
        labels: props.configDigests ? [{ label: 'pgvault.config-sha256', value: props.configDigests[i] }] : undefined,
        mounts: [
          { type: 'volume', source: volume.name, target: dataDir },
          { type: 'bind', source: configDir, target: '/pgvault/config', readOnly: true },
        ],
        ports: [{ internal: 8200, external: props.firstHostPort + i, ip: '127.0.0.1' }],
        networksAdvanced: [{ name: props.network.name, aliases: [name] }],
        // Listening is enough: a node is sealed until the cluster is initialized after apply.
        healthcheck: {
          test: ['CMD-SHELL', `bao status -address=https://127.0.0.1:8200 -ca-cert=/pgvault/config/ca.pem >/dev/null 2>&1; [ $? -ne 1 ]`],
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
    });
  }
}
