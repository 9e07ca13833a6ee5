import { Construct } from 'constructs';
import { TerraformOutput, TerraformStack, TerraformVariable } from 'cdktf';
import { DockerProvider } from '@cdktf/provider-docker/lib/provider';
import { Network } from '@cdktf/provider-docker/lib/network';
import { EnvironmentConfig } from './config';
import { PostgresContainer } from './constructs/postgres-container';
import { VaultDevServer } from './constructs/vault-dev-server';
import { pinProviders, stateBackend } from './common';

/** Containers for an environment with "infrastructure": "docker". */
export class InfraStack extends TerraformStack {
  public readonly postgres: PostgresContainer;
  public readonly vault: VaultDevServer;
  public readonly network: Network;

  constructor(scope: Construct, id: string, env: EnvironmentConfig) {
    super(scope, id);
    if (!env.docker) throw new Error(`InfraStack ${id}: environment ${env.name} has no docker settings`);
    stateBackend(this, env, id);
    new DockerProvider(this, 'docker', {});
    pinProviders(this);

    const rootToken = new TerraformVariable(this, 'vault_dev_root_token', {
      type: 'string',
      sensitive: true,
      nullable: false,
      description: 'Root token of the local Vault dev server (the deploy reads it from .local/<env>/vault-token).',
    });

    this.network = new Network(this, 'network', { name: `pgvault-${env.name}`, driver: 'bridge' });
    this.postgres = new PostgresContainer(this, 'postgres', {
      containerName: env.postgres.host,
      image: env.docker.postgresImage,
      network: this.network,
      hostPort: env.docker.postgresHostPort,
      database: env.postgres.database,
      adminUser: env.postgres.adminUser,
      passwordFile: env.postgres.adminPasswordFile,
    });
    this.vault = new VaultDevServer(this, 'vault', {
      containerName: `pgvault-${env.name}-vault`,
      image: env.docker.vaultImage,
      network: this.network,
      hostPort: env.docker.vaultHostPort,
      rootToken: rootToken.stringValue,
    });

    new TerraformOutput(this, 'network_name', { value: this.network.name });
    new TerraformOutput(this, 'postgres_container', { value: this.postgres.container.name });
    new TerraformOutput(this, 'postgres_volume', { value: this.postgres.volume.name });
    new TerraformOutput(this, 'vault_container', { value: this.vault.container.name });
  }
}
