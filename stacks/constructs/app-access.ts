import { Construct } from 'constructs';
import { AuthBackend } from '@cdktf/provider-vault/lib/auth-backend';
import { Policy } from '@cdktf/provider-vault/lib/policy';
import { ApproleAuthBackendRole } from '@cdktf/provider-vault/lib/approle-auth-backend-role';
import { DatabaseRole } from './database-role';

/** One app: a name, its AppRole's name, and the roles it may read credentials for. */
export interface AppAccessApp {
  readonly name: string;
  /** Name of its AppRole and of its policy. */
  readonly roleName: string;
  /** The roles the app may read credentials for (at least one). */
  readonly roles: readonly DatabaseRole[];
}

export interface AppAccessProps {
  /** The apps; each gets its own policy and AppRole. */
  readonly apps: readonly AppAccessApp[];
  /**
   * The environment declares no apps: its one app's resources keep the construct IDs "policy"
   * and "role" they had before apps existed, so an upgrade does not replace the AppRole (and
   * its role_id). @default false: each app's IDs carry its name
   */
  readonly singleApp?: boolean;
  /** AppRole auth mount path. @default "approle" */
  readonly approleMount?: string;
  /** @default 3600 */
  readonly tokenTtlSeconds?: number;
  /** @default 86400 */
  readonly tokenMaxTtlSeconds?: number;
  /** 0: secret_ids never expire. @default 86400 */
  readonly secretIdTtlSeconds?: number;
  /** Logins one secret_id serves; 0: unlimited. @default 0 */
  readonly secretIdNumUses?: number;
  /** Where secret_ids may log in from (CIDR). @default anywhere */
  readonly secretIdBoundCidrs?: readonly string[];
  /** Where the role's tokens may be used from (CIDR). @default anywhere */
  readonly tokenBoundCidrs?: readonly string[];
}

/**
 * Renders the app's policy: its roles' creds, its own leases and its own token, nothing else.
 *
 * Leases are renewed and revoked in both request forms. Our client puts the lease in the URL
 * (`sys/leases/renew/<lease>`); the standard consumers (Vault/OpenBao Agent, the Go client's
 * `lease renew`, hvac, Spring Vault) send `PUT sys/leases/renew` or `sys/leases/revoke` with the
 * lease_id in the body. For the body form the lease_id values are restricted to the app's creds
 * paths, so a lease of any other role still answers 403. The tokens carry no `default` policy,
 * which is where Vault would otherwise grant `sys/leases/renew` to every token.
 */
export function appPolicy(credsPaths: readonly string[]): string {
  if (credsPaths.length === 0) {
    // An empty value list in allowed_parameters admits any value: every lease in Vault.
    throw new Error('AppAccess: "roles" is empty; expected at least one role the app may read credentials for. Give the app a role.');
  }
  const blocks = credsPaths.flatMap((p) => [
    `path "${p}" {\n  capabilities = ["read"]\n}`,
    `path "sys/leases/renew/${p}/*" {\n  capabilities = ["update"]\n}`,
    `path "sys/leases/revoke/${p}/*" {\n  capabilities = ["update"]\n}`,
  ]);
  const leaseIds = credsPaths.map((p) => `"${p}/*"`).join(', ');
  blocks.push(
    `path "sys/leases/renew" {\n  capabilities = ["update"]\n  allowed_parameters = {\n    "lease_id" = [${leaseIds}]\n    "increment" = []\n  }\n}`,
    `path "sys/leases/revoke" {\n  capabilities = ["update"]\n  allowed_parameters = {\n    "lease_id" = [${leaseIds}]\n    "sync" = []\n  }\n}`,
    'path "auth/token/lookup-self" {\n  capabilities = ["read"]\n}',
    'path "auth/token/renew-self" {\n  capabilities = ["update"]\n}',
    'path "auth/token/revoke-self" {\n  capabilities = ["update"]\n}',
  );
  return blocks.join('\n\n') + '\n';
}

/** What one app logs in with: its policy and its AppRole. */
export interface AppLogin {
  readonly name: string;
  readonly policy: Policy;
  readonly role: ApproleAuthBackendRole;
  /** The AppRole's role_id (not a secret on its own; the secret_id is issued out of band). */
  readonly roleId: string;
  /** The names of its roles, as references. */
  readonly roles: readonly string[];
}

export interface AppLoginProps {
  readonly backend: AuthBackend;
  readonly app: AppAccessApp;
  readonly tokenTtlSeconds: number;
  readonly tokenMaxTtlSeconds: number;
  readonly secretIdTtlSeconds: number;
  readonly secretIdNumUses?: number;
  readonly secretIdBoundCidrs?: readonly string[];
  readonly tokenBoundCidrs?: readonly string[];
}

/**
 * One app's policy and AppRole, in `scope` with the construct IDs `<kind><idSuffix>`. Its
 * tokens carry no default policy. Every login method of an app goes next to this.
 */
export function appLogin(scope: Construct, idSuffix: string, props: AppLoginProps): AppLogin {
  const { app } = props;
  const policy = new Policy(scope, `policy${idSuffix}`, {
    name: app.roleName,
    policy: appPolicy(app.roles.map((r) => r.credsPath)),
  });
  const role = new ApproleAuthBackendRole(scope, `role${idSuffix}`, {
    backend: props.backend.path,
    roleName: app.roleName,
    tokenPolicies: [policy.name],
    tokenNoDefaultPolicy: true,
    tokenTtl: props.tokenTtlSeconds,
    tokenMaxTtl: props.tokenMaxTtlSeconds,
    secretIdTtl: props.secretIdTtlSeconds,
    secretIdNumUses: props.secretIdNumUses || undefined,
    secretIdBoundCidrs: props.secretIdBoundCidrs?.length ? [...props.secretIdBoundCidrs] : undefined,
    tokenBoundCidrs: props.tokenBoundCidrs?.length ? [...props.tokenBoundCidrs] : undefined,
    bindSecretId: true,
    tokenType: 'service',
  });
  return { name: app.name, policy, role, roleId: role.roleId, roles: app.roles.map((r) => r.name) };
}

/** The AppRole auth mount, and each app's policy and AppRole on it. */
export class AppAccess extends Construct {
  public readonly backend: AuthBackend;
  /** Each app's login, by app name. */
  public readonly apps: ReadonlyMap<string, AppLogin>;

  constructor(scope: Construct, id: string, props: AppAccessProps) {
    super(scope, id);
    if (props.apps.length === 0) throw new Error('AppAccess: "apps" is empty; expected at least one app. Give the environment an app.');
    if (props.singleApp && props.apps.length !== 1) throw new Error(`AppAccess: "singleApp" is set with ${props.apps.length} apps; expected exactly one`);
    const mount = props.approleMount ?? 'approle';
    this.backend = new AuthBackend(this, 'approle', { type: 'approle', path: mount });
    const common = {
      backend: this.backend,
      tokenTtlSeconds: props.tokenTtlSeconds ?? 3600,
      tokenMaxTtlSeconds: props.tokenMaxTtlSeconds ?? 86400,
      secretIdTtlSeconds: props.secretIdTtlSeconds ?? 86400,
      secretIdNumUses: props.secretIdNumUses,
      secretIdBoundCidrs: props.secretIdBoundCidrs,
      tokenBoundCidrs: props.tokenBoundCidrs,
    };
    this.apps = new Map(props.apps.map((app) => [app.name, appLogin(this, props.singleApp ? '' : `-${app.name}`, { ...common, app })]));
  }
}
