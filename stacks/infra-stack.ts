import { createHash } from 'node:crypto';
import { Construct } from 'constructs';
import { TerraformOutput, TerraformStack, TerraformVariable } from 'cdktf';
import { DockerProvider } from '@cdktf/provider-docker/lib/provider';
import { Network } from '@cdktf/provider-docker/lib/network';
import { EnvironmentConfig } from './config';
import { PostgresContainer } from './constructs/postgres-container';
import { PostgresReplica } from './constructs/postgres-replica';
import { VaultDevServer } from './constructs/vault-dev-server';
import { VaultCluster } from './constructs/vault-cluster';
import { clusterNodeDirs, nodeConfig, postgresFiles, replicationNames } from './cluster-files';
import { pinProviders, stateBackend } from './common';

/** Containers for an environment with "infrastructure": "docker". */
export class InfraStack extends TerraformStack {
  public readonly postgres: PostgresContainer;
  /** The streaming replica, when the environment has one. */
  public readonly replica?: PostgresReplica;
  /** What the -secrets stack needs of Vault, whatever the topology. */
  public readonly vault: { readonly address: string };
  public readonly network: Network;

  constructor(scope: Construct, id: string, env: EnvironmentConfig) {
    super(scope, id);
    if (!env.docker) throw new Error(`InfraStack ${id}: environment ${env.name} has no docker settings`);
    stateBackend(this, env, id);
    new DockerProvider(this, 'docker', {});
    pinProviders(this);

    this.network = new Network(this, 'network', { name: `pgvault-${env.name}`, driver: 'bridge' });
    this.postgres = new PostgresContainer(this, 'postgres', {
      containerName: env.postgres.host,
      image: env.docker.postgresImage,
      network: this.network,
      hostPort: env.docker.postgresHostPort,
      database: env.postgres.database,
      adminUser: env.postgres.adminUser,
      passwordFile: env.postgres.adminPasswordFile,
      tlsDir: env.docker.postgresTls ? postgresFiles(env).primaryDir : undefined,
      replication: env.docker.postgresReplica ? { ...replicationNames(env), mark: env.database.mark } : undefined,
      mark: env.database.mark,
      reservedConnections: env.secretsEngine.maxOpenConnections,
    });
    if (env.docker.postgresReplica && env.postgres.replica) {
      this.replica = new PostgresReplica(this, 'postgres-replica', {
        containerName: env.postgres.replica.host,
        primary: this.postgres,
        network: this.network,
        hostPort: env.docker.postgresReplica.hostPort,
        adminUser: env.postgres.adminUser,
        replicationRole: replicationNames(env).role,
        slot: replicationNames(env).slot,
        filesDir: postgresFiles(env).replicaDir,
        mark: env.database.mark,
      });
      new TerraformOutput(this, 'postgres_replica_container', { value: this.replica.container.name });
      new TerraformOutput(this, 'postgres_replica_volume', { value: this.replica.volume.name });
    }
    if (env.docker.vaultNodes) {
      const cluster = new VaultCluster(this, 'vault-cluster', {
        namePrefix: `pgvault-${env.name}-vault`,
        image: env.docker.vaultImage,
        network: this.network,
        firstHostPort: env.docker.vaultHostPort,
        configDirs: clusterNodeDirs(env),
        dataDir: env.docker.vaultDataDir,
        configDigests: clusterNodeDirs(env).map((_, i) => createHash('sha256').update(nodeConfig(env, i)).digest('hex')),
      });
      this.vault = cluster;
      new TerraformOutput(this, 'vault_containers', { value: cluster.containers.map((c) => c.name) });
      new TerraformOutput(this, 'vault_addresses', { value: cluster.addresses });
    } else {
      const rootToken = new TerraformVariable(this, 'vault_dev_root_token', {
        type: 'string',
        sensitive: true,
        nullable: false,
        description: 'Root token of the local Vault dev server (the deploy reads it from .local/<env>/vault-token).',
      });
      const dev = new VaultDevServer(this, 'vault', {
        containerName: `pgvault-${env.name}-vault`,
        image: env.docker.vaultImage,
        network: this.network,
        hostPort: env.docker.vaultHostPort,
        rootToken: rootToken.stringValue,
      });
      this.vault = dev;
      new TerraformOutput(this, 'vault_container', { value: dev.container.name });
    }

    new TerraformOutput(this, 'network_name', { value: this.network.name });
    new TerraformOutput(this, 'postgres_container', { value: this.postgres.container.name });
    new TerraformOutput(this, 'postgres_volume', { value: this.postgres.volume.name });
  }
}
