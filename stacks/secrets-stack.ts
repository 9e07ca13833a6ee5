import * as path from 'node:path';
import { Construct } from 'constructs';
import { LocalBackend, TerraformOutput, TerraformStack, TerraformVariable } from 'cdktf';
import { VaultProvider } from '@cdktf/provider-vault/lib/provider';
import { EnvironmentConfig, environmentsDir, localDir } from './config';
import { DatabaseSecretsEngine } from './constructs/database-secrets-engine';
import { DatabaseRole } from './constructs/database-role';
import { AppAccess } from './constructs/app-access';
import { DatabaseBootstrap } from './constructs/database-bootstrap';
import { InfraStack } from './infra-stack';
import { pinProviders, stateFile } from './common';

export interface SecretsStackProps {
  readonly env: EnvironmentConfig;
  /** The containers, when the environment has them: Vault's address and Postgres' host come from it. */
  readonly infra?: InfraStack;
}

/** Vault configuration: the database secrets engine, the roles and the app's access. */
export class SecretsStack extends TerraformStack {
  public readonly engine: DatabaseSecretsEngine;
  public readonly roles: DatabaseRole[];
  public readonly access: AppAccess;

  constructor(scope: Construct, id: string, props: SecretsStackProps) {
    super(scope, id);
    const { env, infra } = props;
    new LocalBackend(this, { path: stateFile(env, id) });

    // The token is read by the provider from a file at apply time: it is never in cdk.tf.json.
    new VaultProvider(this, 'vault', {
      address: infra ? infra.vault.address : env.vault.address,
      caCertFile: env.vault.caCertFile,
      tlsServerName: env.vault.tlsServerName,
      skipChildToken: true,
      authLoginTokenFile: [{ filename: env.vault.tokenFile }],
    });
    pinProviders(this);

    const setupPassword = new TerraformVariable(this, 'vault_db_setup_password', {
      type: 'string',
      sensitive: true,
      nullable: false,
      description: `Setup password of the Postgres role ${env.secretsEngine.vaultUser}; sent once to Vault (write-only), then rotated.`,
    });

    const bootstrap = new DatabaseBootstrap(this, 'bootstrap', {
      environment: env.name,
      script: path.resolve(__dirname, '..', 'scripts', 'db-bootstrap.js'),
      environmentsDir: environmentsDir(),
      localDir: path.dirname(localDir(env.name)),
      triggers: {
        vault_user: env.secretsEngine.vaultUser,
        setup_password_version: env.secretsEngine.setupPasswordVersion,
        database: env.postgres.database,
        // Cross-stack references: a new Postgres or a new (empty) Vault dev server means a fresh bootstrap.
        postgres: infra ? infra.postgres.container.id : `${env.postgres.host}:${env.postgres.port}`,
        vault: infra ? infra.vault.container.id : env.vault.address,
      },
    });

    this.engine = new DatabaseSecretsEngine(this, 'database', {
      path: env.secretsEngine.mountPath,
      connectionName: env.secretsEngine.connectionName,
      host: infra ? infra.postgres.hostname : env.postgres.host,
      port: infra ? infra.postgres.port : env.postgres.port,
      database: env.postgres.database,
      sslmode: env.postgres.sslmode,
      username: env.secretsEngine.vaultUser,
      setupPassword: setupPassword.stringValue,
      setupPasswordVersion: env.secretsEngine.setupPasswordVersion,
      allowedRoles: env.roles.map((r) => r.name),
      maxLeaseTtlSeconds: Math.max(...env.roles.map((r) => r.maxTtlSeconds)),
      maxOpenConnections: env.secretsEngine.maxOpenConnections,
      bootstrap: bootstrap.resource,
    });

    this.roles = env.roles.map(
      (r) =>
        new DatabaseRole(this, `role-${r.name}`, {
          engine: this.engine,
          name: r.name,
          groupRole: env.database.groupRoles[r.access],
          ownerRole: env.database.ownerRole,
          defaultTtlSeconds: r.defaultTtlSeconds,
          maxTtlSeconds: r.maxTtlSeconds,
        }),
    );

    this.access = new AppAccess(this, 'app-access', {
      roles: this.roles,
      approleMount: env.appAccess.approleMount,
      roleName: env.appAccess.roleName,
      tokenTtlSeconds: env.appAccess.tokenTtlSeconds,
      tokenMaxTtlSeconds: env.appAccess.tokenMaxTtlSeconds,
      secretIdTtlSeconds: env.appAccess.secretIdTtlSeconds,
    });

    const out = (name: string, value: unknown) => new TerraformOutput(this, name, { value, staticId: true });
    out('vault_address', infra ? infra.vault.address : env.vault.address);
    out('postgres_host', env.postgres.clientHost);
    out('postgres_port', env.postgres.clientPort);
    out('postgres_database', env.postgres.database);
    out('postgres_sslmode', env.postgres.sslmode);
    out('mount_path', this.engine.path);
    out('connection_name', this.engine.connectionName);
    out('roles', this.roles.map((r) => r.name));
    out('role_max_ttl_seconds', Object.fromEntries(env.roles.map((r) => [r.name, r.maxTtlSeconds])));
    out('approle_mount', this.access.backend.path);
    out('approle_role_name', this.access.role.roleName);
    out('approle_role_id', this.access.roleId);
    out('policy_name', this.access.policy.name);
  }
}
