import { Counter, Gauge, Registry } from 'prom-client';
import { CredentialRuntime } from './runtime';

/** Prometheus metrics for a runtime: lease TTLs, renewals, rotations, revocations, failures, pool sizes. */
export class RuntimeMetrics {
  public readonly registry = new Registry();
  public readonly httpRequests: Counter<'route' | 'status'>;
  private readonly failures: Counter<'reason'>;

  constructor(rt: CredentialRuntime) {
    const r = this.registry;
    const lease = (name: string, help: string) => new Counter({ name, help, labelNames: ['role'], registers: [r] });
    const issued = lease('pgvault_lease_issued_total', 'Credentials issued by Vault');
    const renewals = lease('pgvault_lease_renewals_total', 'Lease renewals');
    const rotations = lease('pgvault_lease_rotations_total', 'Credential rotations (new credentials replacing old ones)');
    const revocations = lease('pgvault_lease_revocations_total', 'Leases revoked by the app');
    const renewAttempts = lease('pgvault_lease_renew_attempts_total', 'Lease renewals sent to Vault, failed ones included');
    const lost = lease('pgvault_lease_lost_total', 'Current leases found gone (revoked or expired behind the app)');
    this.failures = new Counter({ name: 'pgvault_failures_total', help: 'Failures by reason', labelNames: ['reason'], registers: [r] });
    this.httpRequests = new Counter({ name: 'pgvault_http_requests_total', help: 'HTTP requests', labelNames: ['route', 'status'], registers: [r] });
    const failures = this.failures;
    new Gauge({
      name: 'pgvault_lease_ttl_remaining_seconds',
      help: 'Seconds until the current lease expires',
      labelNames: ['role'],
      registers: [r],
      collect() {
        for (const [role, l] of rt.leases) this.set({ role }, Math.round(l.secondsToExpiry));
      },
    });
    new Gauge({
      name: 'pgvault_lease_max_ttl_remaining_seconds',
      help: 'Seconds until the current credentials reach their max TTL',
      labelNames: ['role'],
      registers: [r],
      collect() {
        for (const [role, l] of rt.leases) {
          const s = l.secondsToMaxTtl;
          if (s !== undefined) this.set({ role }, Math.round(s));
        }
      },
    });
    new Gauge({
      name: 'pgvault_lease_duration_seconds',
      help: 'The TTL Vault gave the current lease when it was issued (the scale of pgvault_lease_ttl_remaining_seconds)',
      labelNames: ['role'],
      registers: [r],
      collect() {
        for (const [role, l] of rt.leases) this.set({ role }, l.leaseDurationSeconds);
      },
    });
    new Gauge({
      name: 'pgvault_token_ttl_seconds',
      help: 'The TTL of the Vault token at its login',
      registers: [r],
      collect() {
        this.set(rt.session.tokenTtlSeconds);
      },
    });
    new Gauge({
      name: 'pgvault_token_ttl_remaining_seconds',
      help: 'Seconds until the Vault token expires unless renewed (renewals stop at its max TTL; then a re-login replaces it)',
      registers: [r],
      collect() {
        const at = rt.session.tokenExpiresAt;
        this.set(at > 0 ? Math.max(0, Math.round((at - Date.now()) / 1000)) : 0);
      },
    });
    new Gauge({
      name: 'pgvault_pool_connections',
      help: 'Pool connections by state (retiring pools included)',
      labelNames: ['role', 'state'],
      registers: [r],
      collect() {
        for (const [role, p] of rt.pools) {
          const s = p.stats();
          this.set({ role, state: 'total' }, s.total);
          this.set({ role, state: 'idle' }, s.idle);
          this.set({ role, state: 'waiting' }, s.waiting);
          this.set({ role, state: 'retiring_pools' }, s.retiring);
        }
      },
    });
    new Counter({
      name: 'pgvault_replica_lag_retries_total',
      help: 'Logins on a replica refused within the lag window after issuance, retried with the same credentials',
      labelNames: ['role'],
      registers: [r],
      collect() {
        this.reset();
        for (const [role, p] of rt.pools) this.inc({ role }, p.lagRetries);
      },
    });
    new Counter({
      name: 'pgvault_pool_failures_total',
      help: 'Pool failures by reason (SQLSTATE or error code)',
      labelNames: ['role', 'reason'],
      registers: [r],
      collect() {
        this.reset();
        for (const [role, p] of rt.pools) for (const [reason, n] of p.failures) this.inc({ role, reason }, n);
      },
    });
    for (const [role, l] of rt.leases) {
      // Series exist from the start; the credentials issued before metrics were attached count once.
      issued.inc({ role }, l.leaseDurationSeconds > 0 ? 1 : 0);
      for (const c of [renewals, rotations, revocations, renewAttempts, lost]) c.inc({ role }, 0);
      l.on('issued', () => issued.inc({ role }));
      l.on('renewed', () => renewals.inc({ role }));
      l.on('rotated', () => rotations.inc({ role }));
      l.on('revoked', () => revocations.inc({ role }));
      l.on('renewAttempt', () => renewAttempts.inc({ role }));
      l.on('lost', () => lost.inc({ role }));
      l.on('error', (e, op) => failures.inc({ reason: `${op}_${e.code.toLowerCase()}` }));
    }
    rt.session.on('error', (e) => failures.inc({ reason: `token_${e.code.toLowerCase()}` }));
    const relogins = new Counter({ name: 'pgvault_token_relogins_total', help: 'AppRole logins that replaced a token that could no longer be renewed', registers: [r] });
    const tokenRenewals = new Counter({ name: 'pgvault_token_renewals_total', help: 'Token renewals', registers: [r] });
    rt.session.on('relogin', () => relogins.inc());
    rt.session.on('renewed', () => tokenRenewals.inc());
    const loginFailures = new Counter({ name: 'pgvault_token_login_failures_total', help: 'Re-logins that failed, by whether Vault refused them', labelNames: ['refused'], registers: [r] });
    rt.session.on('loginFailed', (_e, refused) => loginFailures.inc({ refused: String(refused) }));
  }

  fail(reason: string): void {
    this.failures.inc({ reason });
  }
}
