import { Construct } from 'constructs';
import { AuthBackend } from '@cdktf/provider-vault/lib/auth-backend';
import { Policy } from '@cdktf/provider-vault/lib/policy';
import { ApproleAuthBackendRole } from '@cdktf/provider-vault/lib/approle-auth-backend-role';
import { DatabaseRole } from './database-role';

export interface AppAccessProps {
  /** The roles the app may read credentials for. */
  readonly roles: readonly DatabaseRole[];
  /** AppRole auth mount path. @default "approle" */
  readonly approleMount?: string;
  /** Name of the AppRole and of its policy. @default "pgvault-app" */
  readonly roleName?: string;
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

/** The policy and AppRole the app logs in with. Its tokens carry no default policy. */
export class AppAccess extends Construct {
  public readonly backend: AuthBackend;
  public readonly policy: Policy;
  public readonly role: ApproleAuthBackendRole;
  /** The AppRole's role_id (not a secret on its own; the secret_id is issued out of band). */
  public readonly roleId: string;

  constructor(scope: Construct, id: string, props: AppAccessProps) {
    super(scope, id);
    const mount = props.approleMount ?? 'approle';
    const name = props.roleName ?? 'pgvault-app';
    this.backend = new AuthBackend(this, 'approle', { type: 'approle', path: mount });
    this.policy = new Policy(this, 'policy', {
      name,
      policy: appPolicy(props.roles.map((r) => r.credsPath)),
    });
    this.role = new ApproleAuthBackendRole(this, 'role', {
      backend: this.backend.path,
      roleName: name,
      tokenPolicies: [this.policy.name],
      tokenNoDefaultPolicy: true,
      tokenTtl: props.tokenTtlSeconds ?? 3600,
      tokenMaxTtl: props.tokenMaxTtlSeconds ?? 86400,
      secretIdTtl: props.secretIdTtlSeconds ?? 86400,
      secretIdNumUses: props.secretIdNumUses || undefined,
      secretIdBoundCidrs: props.secretIdBoundCidrs?.length ? [...props.secretIdBoundCidrs] : undefined,
      tokenBoundCidrs: props.tokenBoundCidrs?.length ? [...props.tokenBoundCidrs] : undefined,
      bindSecretId: true,
      tokenType: 'service',
    });
    this.roleId = this.role.roleId;
  }
}
