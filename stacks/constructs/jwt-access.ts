import { Construct } from 'constructs';
import { JwtAuthBackend } from '@cdktf/provider-vault/lib/jwt-auth-backend';
import { JwtAuthBackendRole } from '@cdktf/provider-vault/lib/jwt-auth-backend-role';
import { Policy } from '@cdktf/provider-vault/lib/policy';

/** One app's JWT role: a token with this subject logs in with the app's policy. */
export interface JwtAppRole {
  readonly app: string;
  /** Its construct ID: "role" for the environment's main app, so that an upgrade keeps it. */
  readonly id: string;
  readonly roleName: string;
  /** The app's policy (AppAccess): a JWT login gets exactly what the app's AppRole login gets. */
  readonly policy: Policy;
  readonly boundSubject: string;
}

export interface JwtAccessProps {
  /** At least one. */
  readonly roles: readonly JwtAppRole[];
  /** @default "jwt" */
  readonly mount?: string;
  /** Exactly one of publicKeys (PEM), jwksUrl and oidcDiscoveryUrl. */
  readonly publicKeys?: readonly string[];
  readonly jwksUrl?: string;
  readonly oidcDiscoveryUrl?: string;
  readonly boundIssuer?: string;
  readonly boundAudiences: readonly string[];
  /** @default "sub" */
  readonly userClaim?: string;
  readonly tokenTtlSeconds: number;
  readonly tokenMaxTtlSeconds: number;
  readonly tokenBoundCidrs?: readonly string[];
}

/**
 * Workload-identity login: a `jwt` auth mount that checks signatures with the issuer's keys (or
 * its JWKS or discovery URL), and per app one role bound to the audience and the app's subject,
 * with the app's policy and the token TTLs. Its tokens carry no default policy.
 */
export class JwtAccess extends Construct {
  public readonly backend: JwtAuthBackend;
  /** Each app's role, by app name. */
  public readonly roles: ReadonlyMap<string, JwtAuthBackendRole>;

  constructor(scope: Construct, id: string, props: JwtAccessProps) {
    super(scope, id);
    const ways = [props.publicKeys, props.jwksUrl, props.oidcDiscoveryUrl].filter((w) => w !== undefined);
    if (ways.length !== 1) {
      throw new Error(`JwtAccess: ${ways.length} ways to check signatures are given; expected exactly one of publicKeys, jwksUrl or oidcDiscoveryUrl`);
    }
    if (props.roles.length === 0) throw new Error('JwtAccess: "roles" is empty; expected at least one app\'s role. Give an app a JWT subject.');
    this.backend = new JwtAuthBackend(this, 'backend', {
      type: 'jwt',
      path: props.mount ?? 'jwt',
      description: 'pgvault workload identity (JWT)',
      jwtValidationPubkeys: props.publicKeys ? [...props.publicKeys] : undefined,
      jwksUrl: props.jwksUrl,
      oidcDiscoveryUrl: props.oidcDiscoveryUrl,
      boundIssuer: props.boundIssuer,
    });
    const role = (r: JwtAppRole) =>
      new JwtAuthBackendRole(this, r.id, {
      backend: this.backend.path,
      roleName: r.roleName,
      roleType: 'jwt',
      boundAudiences: [...props.boundAudiences],
      boundSubject: r.boundSubject,
      userClaim: props.userClaim ?? 'sub',
      tokenPolicies: [r.policy.name],
      tokenNoDefaultPolicy: true,
      tokenTtl: props.tokenTtlSeconds,
      tokenMaxTtl: props.tokenMaxTtlSeconds,
      tokenBoundCidrs: props.tokenBoundCidrs?.length ? [...props.tokenBoundCidrs] : undefined,
      tokenType: 'service',
    });
    this.roles = new Map(props.roles.map((r) => [r.app, role(r)]));
  }
}
