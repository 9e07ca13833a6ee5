import { Construct } from 'constructs';
import { JwtAuthBackend } from '@cdktf/provider-vault/lib/jwt-auth-backend';
import { JwtAuthBackendRole } from '@cdktf/provider-vault/lib/jwt-auth-backend-role';
import { Policy } from '@cdktf/provider-vault/lib/policy';

export interface JwtAccessProps {
  /** The app's policy (AppAccess): a JWT login gets exactly what an AppRole login gets. */
  readonly policy: Policy;
  /** @default "jwt" */
  readonly mount?: string;
  readonly roleName: string;
  /** Exactly one of publicKeys (PEM), jwksUrl and oidcDiscoveryUrl. */
  readonly publicKeys?: readonly string[];
  readonly jwksUrl?: string;
  readonly oidcDiscoveryUrl?: string;
  readonly boundIssuer?: string;
  readonly boundAudiences: readonly string[];
  readonly boundSubject: string;
  /** @default "sub" */
  readonly userClaim?: string;
  readonly tokenTtlSeconds: number;
  readonly tokenMaxTtlSeconds: number;
  readonly tokenBoundCidrs?: readonly string[];
}

/**
 * Workload-identity login: a `jwt` auth mount that checks signatures with the issuer's keys (or
 * its JWKS or discovery URL), and one role bound to the audience and the subject, with the
 * app's policy and token TTLs. Its tokens carry no default policy.
 */
export class JwtAccess extends Construct {
  public readonly backend: JwtAuthBackend;
  public readonly role: JwtAuthBackendRole;

  constructor(scope: Construct, id: string, props: JwtAccessProps) {
    super(scope, id);
    const ways = [props.publicKeys, props.jwksUrl, props.oidcDiscoveryUrl].filter((w) => w !== undefined);
    if (ways.length !== 1) {
      throw new Error(`JwtAccess: ${ways.length} ways to check signatures are given; expected exactly one of publicKeys, jwksUrl or oidcDiscoveryUrl`);
    }
    this.backend = new JwtAuthBackend(this, 'backend', {
      type: 'jwt',
      path: props.mount ?? 'jwt',
      description: 'pgvault workload identity (JWT)',
      jwtValidationPubkeys: props.publicKeys ? [...props.publicKeys] : undefined,
      jwksUrl: props.jwksUrl,
      oidcDiscoveryUrl: props.oidcDiscoveryUrl,
      boundIssuer: props.boundIssuer,
    });
    this.role = new JwtAuthBackendRole(this, 'role', {
      backend: this.backend.path,
      roleName: props.roleName,
      roleType: 'jwt',
      boundAudiences: [...props.boundAudiences],
      boundSubject: props.boundSubject,
      userClaim: props.userClaim ?? 'sub',
      tokenPolicies: [props.policy.name],
      tokenNoDefaultPolicy: true,
      tokenTtl: props.tokenTtlSeconds,
      tokenMaxTtl: props.tokenMaxTtlSeconds,
      tokenBoundCidrs: props.tokenBoundCidrs?.length ? [...props.tokenBoundCidrs] : undefined,
      tokenType: 'service',
    });
  }
}
