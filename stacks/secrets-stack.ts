import * as path from 'node:path';
import { Construct } from 'constructs';
import { TerraformOutput, TerraformStack, TerraformVariable } from 'cdktf';
import { VaultProvider } from '@cdktf/provider-vault/lib/provider';
import { DEFAULT_APP, EnvironmentConfig, forDatabase, readJwtPublicKeys, REPO_ROOT } from './config';
import { DatabaseSecretsEngine } from './constructs/database-secrets-engine';
import { DatabaseRole } from './constructs/database-role';
import { AppAccess, AppLogin } from './constructs/app-access';
import { JwtAccess } from './constructs/jwt-access';
import { ScriptHook, ScriptHookProps } from './constructs/script-hook';
import { InfraStack } from './infra-stack';
import { pinProviders, stateBackend } from './common';

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
  /** Workload-identity login, when the environment sets appAccess.jwt. */
  public readonly jwt?: JwtAccess;

  constructor(scope: Construct, id: string, props: SecretsStackProps) {
    super(scope, id);
    const { env, infra } = props;
    stateBackend(this, env, id);

    // The token is read by the provider from a file at apply time: it is never in cdk.tf.json.
    // TLS verification is set explicitly, so VAULT_SKIP_VERIFY in the operator's shell cannot turn it off.
    new VaultProvider(this, 'vault', {
      address: infra ? infra.vault.address : env.vault.address,
      caCertFile: env.vault.caCertFile,
      tlsServerName: env.vault.tlsServerName,
      skipTlsVerify: false,
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

    // Terraform runs this stack in cdktf.out/stacks/<id>: the hooks script is found from there.
    const script = path.relative(path.join(REPO_ROOT, 'cdktf.out', 'stacks', id), path.resolve(__dirname, '..', 'scripts', 'hooks.js'));
    const hook = (hookId: string, props: Omit<ScriptHookProps, 'script' | 'environment'>) =>
      new ScriptHook(this, hookId, { script, environment: env.name, ...props });

    // Destroy runs in the reverse order of creation: the roles go first (nothing issues new
    // credentials), then every lease is revoked while the connection and the group roles still
    // exist, then the connection, the mount, and last the teardown of what the bootstrap created.
    // The teardown is a resource of its own that nothing replaces: re-running the bootstrap
    // never removes data.
    const teardown = hook('teardown', { onDestroy: 'teardown' });
    this.engine = new DatabaseSecretsEngine(this, 'database', {
      path: env.secretsEngine.mountPath,
      connectionName: env.secretsEngine.connectionName,
      host: infra ? infra.postgres.hostname : env.postgres.host,
      port: infra ? infra.postgres.port : env.postgres.port,
      database: env.postgres.database,
      sslmode: env.postgres.sslmode,
      sslRootCertOnVault: env.postgres.caCertFileOnVault,
      username: env.secretsEngine.vaultUser,
      setupPassword: setupPassword.stringValue,
      setupPasswordVersion: env.secretsEngine.setupPasswordVersion,
      allowedRoles: env.roles.filter((r) => r.database === env.postgres.database).map((r) => r.name),
      moreDatabases: env.postgres.databases.slice(1).map((db) => {
        const at = forDatabase(env, db);
        return { database: db, connectionName: at.secretsEngine.connectionName, username: at.secretsEngine.vaultUser, allowedRoles: env.roles.filter((r) => r.database === db).map((r) => r.name) };
      }),
      maxLeaseTtlSeconds: Math.max(...env.roles.map((r) => r.maxTtlSeconds)),
      maxOpenConnections: env.secretsEngine.maxOpenConnections,
      after: [teardown.resource],
      bootstrap: (mount) =>
        hook('bootstrap', {
          onCreate: 'bootstrap',
          // The mount's accessor is new whenever the mount is (a restarted dev server, a recreated
          // mount): the bootstrap then runs again and drops the users nobody can revoke any more.
          values: { vault_mount: mount.accessor },
          triggers: {
            vault_user: env.secretsEngine.vaultUser,
            setup_password_version: env.secretsEngine.setupPasswordVersion,
            database: env.postgres.database,
            // Only with several databases, so an environment of one keeps its bootstrap.
            ...(env.postgres.databases.length > 1 ? { databases: env.postgres.databases.join(',') } : {}),
            postgres: infra ? infra.postgres.container.id : `${env.postgres.host}:${env.postgres.port}`,
            vault_mount: mount.accessor,
            // A role's shape changed: its group role and grants are brought to the file (npm run deploy does it every time).
            role_shapes: JSON.stringify(env.roles.map((r) => [r.name, r.access, r.grants])),
          },
        }).resource,
    });
    const revokeLeases = hook('revoke-leases', {
      onDestroy: 'revoke-leases',
      dependsOn: [...this.engine.connections.keys()].map((db) => this.engine.ready(db)),
    });

    this.roles = env.roles.map(
      (r) =>
        new DatabaseRole(this, `role-${r.name}`, {
          engine: this.engine,
          name: r.name,
          groupRole: r.groupRole,
          database: r.database,
          retiredRole: env.database.retiredRole,
          mark: env.database.mark,
          // Only a writer can create what is worth keeping: the others' objects (temporary ones,
          // large objects) are dropped, and a migrator's tables are the owner role's already.
          access: r.access === 'write' ? 'write' : 'read',
          setRole: r.access === 'migrate' ? env.database.ownerRole : undefined,
          connectionLimit: r.connectionLimit,
          statementTimeoutSeconds: r.statementTimeoutSeconds,
          idleInTransactionTimeoutSeconds: r.idleInTransactionTimeoutSeconds,
          defaultTtlSeconds: r.defaultTtlSeconds,
          maxTtlSeconds: r.maxTtlSeconds,
          after: [revokeLeases.resource],
        }),
    );

    const byName = new Map(this.roles.map((r, i) => [env.roles[i].name, r]));
    this.access = new AppAccess(this, 'app-access', {
      apps: env.apps.map((a) => ({ name: a.name, roleName: a.roleName, roles: a.roles.map((r) => byName.get(r)!) })),
      singleApp: !env.appsDeclared,
      approleMount: env.appAccess.approleMount,
      tokenTtlSeconds: env.appAccess.tokenTtlSeconds,
      tokenMaxTtlSeconds: env.appAccess.tokenMaxTtlSeconds,
      secretIdTtlSeconds: env.appAccess.secretIdTtlSeconds,
      secretIdNumUses: env.appAccess.secretIdNumUses,
      secretIdBoundCidrs: env.appAccess.secretIdBoundCidrs,
      tokenBoundCidrs: env.appAccess.tokenBoundCidrs,
    });
    const defaultApp = this.access.apps.get(DEFAULT_APP);
    // Disabling the AppRole mount revokes the apps' tokens and, with them, their leases: at destroy
    // it waits for the hook that revokes every lease while the connections still exist.
    const backend = this.access.backend;
    revokeLeases.resource.dependsOn = [...(revokeLeases.resource.dependsOn ?? []), `${backend.terraformResourceType}.${backend.friendlyUniqueId}`];
    const jwt = env.appAccess.jwt;
    if (jwt) {
      this.jwt = new JwtAccess(this, 'jwt-access', {
        policy: jwtApp(env, this.access.apps).policy,
        mount: jwt.mount,
        roleName: jwt.roleName,
        publicKeys: readJwtPublicKeys(env),
        jwksUrl: jwt.jwksUrl,
        oidcDiscoveryUrl: jwt.oidcDiscoveryUrl,
        boundIssuer: jwt.boundIssuer,
        boundAudiences: jwt.boundAudiences,
        boundSubject: jwt.boundSubject,
        userClaim: jwt.userClaim,
        tokenTtlSeconds: env.appAccess.tokenTtlSeconds,
        tokenMaxTtlSeconds: env.appAccess.tokenMaxTtlSeconds,
        tokenBoundCidrs: env.appAccess.tokenBoundCidrs,
      });
    }

    const outputs: Record<string, unknown> = {
      vault_address: infra ? infra.vault.address : env.vault.address,
      postgres_host: env.postgres.clientHost,
      postgres_port: env.postgres.clientPort,
      postgres_database: env.postgres.database,
      postgres_sslmode: env.postgres.sslmode,
      // Where each role's users connect: Vault creates them on the primary, a replica gets them by replication.
      role_endpoints: Object.fromEntries(
        env.roles.map((r) => {
          const at = r.target === 'replica' && env.postgres.replica ? env.postgres.replica : env.postgres;
          return [r.name, { host: at.clientHost, port: at.clientPort, target: r.target, ...(r.database !== env.postgres.database ? { database: r.database } : {}) }];
        }),
      ),
      mount_path: this.engine.path,
      connection_name: this.engine.connectionName,
      roles: this.roles.map((r) => r.name),
      role_max_ttl_seconds: Object.fromEntries(env.roles.map((r) => [r.name, r.maxTtlSeconds])),
      approle_mount: this.access.backend.path,
      // The app named "api" (the only app when the file declares none); absent without one.
      ...(defaultApp ? { approle_role_name: defaultApp.role.roleName, approle_role_id: defaultApp.roleId, policy_name: defaultApp.policy.name } : {}),
      apps: Object.fromEntries(
        [...this.access.apps.values()].map((a) => [a.name, { approle_role_name: a.role.roleName, approle_role_id: a.roleId, policy_name: a.policy.name, roles: a.roles }]),
      ),
    };
    if (this.jwt) {
      outputs.jwt_mount = this.jwt.backend.path;
      outputs.jwt_role_name = this.jwt.role.roleName;
    }
    // Several addresses (a cluster): the app fails over between them.
    if (env.vault.addresses.length > 1) outputs.vault_addresses = env.vault.addresses;
    for (const [name, value] of Object.entries(outputs)) new TerraformOutput(this, name, { value, staticId: true });
    // The app reads .local/<env>/outputs.json: the deploy writes it, whether run by npm or by
    // a plain `cdktf deploy`, and the destroy removes it, so it is never stale. No secret is in it.
    hook('outputs-file', { onDestroy: 'remove-outputs' });
    hook('outputs-writer', { onCreate: 'write-outputs', values: { outputs }, triggers: outputs });
  }
}

/**
 * The app whose policy the JWT role carries: `api`, or the only app. Several apps without `api`
 * have no one answer, so the file must say it (a per-app JWT role is not built yet).
 */
function jwtApp(env: EnvironmentConfig, apps: ReadonlyMap<string, AppLogin>): AppLogin {
  const app = apps.get(DEFAULT_APP) ?? (apps.size === 1 ? [...apps.values()][0] : undefined);
  if (!app) {
    throw new Error(
      `${env.file}: "appAccess.jwt" is set and "apps" declares ${[...apps.keys()].join(', ')} but no app named "${DEFAULT_APP}"; expected an app named "${DEFAULT_APP}", whose policy the JWT role carries. Fix: name the app that logs in with JWT "${DEFAULT_APP}", or remove "appAccess.jwt"`,
    );
  }
  return app;
}
