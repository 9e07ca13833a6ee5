import * as path from 'node:path';
import { Construct } from 'constructs';
import { TerraformOutput, TerraformStack, TerraformVariable } from 'cdktf';
import { VaultProvider } from '@cdktf/provider-vault/lib/provider';
import { DEFAULT_APP, EnvironmentConfig, forDatabase, readJwtPublicKeys, REPO_ROOT } from './config';
import { DatabaseSecretsEngine } from './constructs/database-secrets-engine';
import { DatabaseRole } from './constructs/database-role';
import { AppAccess, AppLogin } from './constructs/app-access';
import { JwtAccess, JwtAppRole } from './constructs/jwt-access';
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
    const script = path.relative(path.join(REPO_ROOT, 'cdktf.out', 'stacks', id), path.resolve(__dirname, '..', 'ops', 'hooks.js'));
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
        roles: jwtRoles(env, this.access.apps),
        mount: jwt.mount,
        publicKeys: readJwtPublicKeys(env),
        jwksUrl: jwt.jwksUrl,
        oidcDiscoveryUrl: jwt.oidcDiscoveryUrl,
        boundIssuer: jwt.boundIssuer,
        boundAudiences: jwt.boundAudiences,
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
      const main = defaultApp && this.jwt.roles.get(defaultApp.name);
      if (main) outputs.jwt_role_name = main.roleName;
      for (const [app, role] of this.jwt.roles) (outputs.apps as Record<string, Record<string, unknown>>)[app].jwt_role_name = role.roleName;
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
 * The JWT roles: the main app (`api`, or the one app of a file without "apps") gets
 * appAccess.jwt's role and subject unless it sets its own; every other app with a
 * "jwt.boundSubject" gets the role "<appAccess.jwt.roleName>-<app>".
 */
function jwtRoles(env: EnvironmentConfig, apps: ReadonlyMap<string, AppLogin>): JwtAppRole[] {
  const jwt = env.appAccess.jwt!;
  const roles: JwtAppRole[] = [];
  for (const app of env.apps) {
    const main = app.name === DEFAULT_APP;
    const subject = app.jwtBoundSubject ?? (main ? jwt.boundSubject : undefined);
    if (subject === undefined) continue;
    roles.push({ app: app.name, id: main ? 'role' : `role-${app.name}`, roleName: main ? jwt.roleName : `${jwt.roleName}-${app.name}`, policy: apps.get(app.name)!.policy, boundSubject: subject });
  }
  if (roles.length === 0) {
    throw new Error(
      `${env.file}: "appAccess.jwt" is set but no app can log in with it: "apps" declares ${[...apps.keys()].join(', ')}, none named "${DEFAULT_APP}" and none with "jwt": { "boundSubject": … }. ` +
        `Fix: give each app that logs in with JWT "apps.<app>.jwt.boundSubject", or remove "appAccess.jwt"`,
    );
  }
  return roles;
}
