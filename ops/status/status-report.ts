/**
 * The status report of an environment, from facts gathered by ops/status/status.ts: the problems
 * they show (one line each, with what to do), the one-screen text, and the --json document.
 * Pure: no I/O, so that unit tests read it like a table.
 */

/** A Raft peer as autopilot (or, without its grant, the Raft configuration) sees it. */
export interface RaftPeer {
  readonly nodeId: string;
  /** leader, voter or non-voter. */
  readonly status: string;
  /** undefined when only the Raft configuration could be read. */
  readonly healthy?: boolean;
  readonly lastContact?: string;
}

export interface VaultNodeFacts {
  readonly address: string;
  readonly reachable: boolean;
  readonly initialized?: boolean;
  readonly sealed?: boolean;
  /** leader or standby in a HA cluster; single for a server without HA (the dev server). */
  readonly haRole?: 'leader' | 'standby' | 'single';
  readonly version?: string;
  readonly raft?: RaftPeer;
  readonly error?: string;
}

export interface PostgresFacts {
  readonly endpoint: string;
  /** What the environment says this server is. */
  readonly expectedRole: 'primary' | 'replica';
  readonly reachable: boolean;
  readonly role?: 'primary' | 'replica';
  readonly version?: string;
  readonly replayLagSeconds?: number;
  readonly replayLagBytes?: number;
  /** On a primary: how many replicas stream from it. */
  readonly streamingReplicas?: number;
  readonly error?: string;
}

export interface RoleLeaseFacts {
  readonly liveLeases: number;
  readonly earliestExpiry?: string;
  /** Leases whose expiry was looked up, when fewer than liveLeases (the look-ups are capped). */
  readonly lookedUp?: number;
  readonly error?: string;
}

export interface CertificateFacts {
  /** Relative to the repository when inside it. */
  readonly file: string;
  readonly subject: string;
  readonly expiresAt: string;
  readonly daysLeft: number;
  readonly isCa: boolean;
}

export interface StateLockFacts {
  readonly stack: string;
  /** Who holds it: the deploy's application_name (pg), or Terraform's lock info (local). */
  readonly holder: string;
  readonly since?: string;
  /** pg: the backend pid holding the advisory lock. */
  readonly pid?: number;
  /** local: Terraform's lock info file. */
  readonly file?: string;
}

export interface StateFacts {
  readonly backend: 'local' | 'pg';
  readonly locks: readonly StateLockFacts[];
  readonly error?: string;
}

export interface StatusFacts {
  readonly environment: string;
  readonly deployed: boolean;
  readonly mountPath: string;
  /** The runtime's replica lag window: a replica further behind refuses new users past it. */
  readonly replicaLagWindowSeconds: number;
  readonly vault: readonly VaultNodeFacts[];
  /** Whether the environment is a Raft cluster (several nodes expected, one leader). */
  readonly vaultCluster: boolean;
  readonly raftError?: string;
  readonly postgres: readonly PostgresFacts[];
  readonly roles: Readonly<Record<string, RoleLeaseFacts>>;
  readonly certificates: readonly CertificateFacts[];
  readonly state: StateFacts;
  /** When the facts were gathered (ms since epoch): lock ages and expiries are measured from it. */
  readonly now: number;
}

/** Thresholds of the problems; defaults as documented in docs/operators.md. */
export interface StatusThresholds {
  /** A certificate with fewer days left is a problem. @default 30 */
  readonly certificateDays?: number;
  /** A state lock held longer is a problem (a deploy takes minutes). @default 900 */
  readonly lockSeconds?: number;
}

/** The --json document. Its top level is stable: tests outside the project read it. */
export interface StatusJson {
  environment: string;
  ok: boolean;
  problems: string[];
  vault: { address: string; sealed: boolean | null; haRole: string | null; version: string | null; reachable: boolean; raft?: RaftPeer }[];
  postgres: { endpoint: string; role: string | null; version: string | null; replayLagSeconds?: number; replayLagBytes?: number; reachable: boolean }[];
  roles: Record<string, { liveLeases: number; earliestExpiry?: string }>;
  certificates: { file: string; expiresAt: string; daysLeft: number }[];
  state: { backend: string; locked: boolean; holder?: string };
}

/** Every problem the facts show, one line each, saying what to do. */
export function problemsOf(f: StatusFacts, t: StatusThresholds = {}): string[] {
  const certificateDays = t.certificateDays ?? 30;
  const lockSeconds = t.lockSeconds ?? 900;
  const p: string[] = [];
  const env = f.environment;
  // Everything else follows from it: one line, not one per part that cannot answer.
  if (!f.deployed) return [`${env} is not deployed (no .local/${env}/outputs.json): run npm run deploy -- ${env}`];
  for (const v of f.vault) {
    if (!v.reachable) p.push(`Vault ${v.address} does not answer (${v.error ?? 'no answer'}): check its container or process (docker ps -a, docker logs), then its network`);
    else if (v.initialized === false) p.push(`Vault ${v.address} is not initialized: run npm run deploy -- ${env}`);
    else if (v.sealed) p.push(`Vault ${v.address} is sealed: it unseals itself when restarted with its seal key (docker restart); check its log for the seal error`);
    if (v.raft && v.raft.healthy === false) p.push(`Raft peer ${v.raft.nodeId} (${v.address}) is unhealthy (last contact ${v.raft.lastContact ?? 'unknown'}): check the node's log and that it reaches the leader on port 8201`);
  }
  const reachable = f.vault.filter((v) => v.reachable && !v.sealed);
  if (f.vaultCluster && reachable.length > 0 && !reachable.some((v) => v.haRole === 'leader')) {
    p.push('the Vault cluster has no leader: a majority of its nodes must run and reach each other; start the stopped nodes');
  }
  if (f.raftError) p.push(`Raft peers could not be read (${f.raftError}): check the admin token (npm run deploy -- ${env} renews it and its policy)`);
  for (const s of f.postgres) {
    if (!s.reachable) {
      p.push(`Postgres ${s.expectedRole} ${s.endpoint} does not answer (${s.error ?? 'no answer'}): check its container or service and its log`);
      continue;
    }
    if (s.role !== s.expectedRole) {
      p.push(`Postgres ${s.endpoint} is a ${s.role}, expected the ${s.expectedRole}: ${s.role === 'primary' ? 'the replica was promoted; point the environment at it or rebuild the replica' : 'the primary is in recovery; finish the failover or restore it'}`);
    }
    if (s.role === 'primary' && f.postgres.some((r) => r.expectedRole === 'replica') && s.streamingReplicas === 0) {
      p.push(`no replica streams from the primary ${s.endpoint}: check the replica's log (replication password, slot, network), then docker restart it`);
    }
    if (s.role === 'replica' && s.replayLagSeconds !== undefined && s.replayLagSeconds > f.replicaLagWindowSeconds) {
      p.push(
        `the replica ${s.endpoint} replays ${s.replayLagSeconds.toFixed(1)} s behind, past the runtime's lag window (${f.replicaLagWindowSeconds} s): ` +
          'new users of replica roles are refused until it catches up; look for long transactions or I/O load on the replica',
      );
    }
  }
  const leaseErrors = new Map<string, string[]>();
  for (const [role, r] of Object.entries(f.roles)) if (r.error) leaseErrors.set(r.error, [...(leaseErrors.get(r.error) ?? []), role]);
  for (const [error, roles] of leaseErrors) {
    p.push(`the leases of role${roles.length > 1 ? 's' : ''} ${roles.join(', ')} could not be listed (${error}): check the admin token in the environment's token file and that Vault answers`);
  }
  for (const c of f.certificates) {
    const fix = c.isCa
      ? 'plan a new CA: every certificate it signed must be issued again (docs/operators.md, "Certificates")'
      : `remove it and its key (tls-key.pem beside it), then npm run deploy -- ${env} issues a new one from the CA`;
    if (c.daysLeft < 0) p.push(`certificate ${c.file} (${c.subject}) expired on ${c.expiresAt}: ${fix}`);
    else if (c.daysLeft < certificateDays) p.push(`certificate ${c.file} (${c.subject}) expires in ${c.daysLeft} days (${c.expiresAt}): ${fix}`);
  }
  if (f.state.error) p.push(`the state lock could not be read (${f.state.error}): check the state backend`);
  for (const l of f.state.locks) {
    const ageSeconds = l.since ? (f.now - Date.parse(l.since)) / 1000 : undefined;
    if (ageSeconds === undefined || ageSeconds <= lockSeconds) continue;
    const minutes = Math.round(ageSeconds / 60);
    p.push(
      f.state.backend === 'pg'
        ? `the state lock of ${l.stack} has been held for ${minutes} min by "${l.holder}" (pid ${l.pid}): if no deploy runs any more, end that session with SELECT pg_terminate_backend(${l.pid})`
        : `the state lock of ${l.stack} has been held for ${minutes} min by ${l.holder}: if no terraform or deploy runs any more, remove ${l.file ?? 'the lock info file beside the state file'}`,
    );
  }
  return p;
}

export function statusJson(f: StatusFacts, problems: string[]): StatusJson {
  const firstLock = f.state.locks[0];
  return {
    environment: f.environment,
    ok: problems.length === 0,
    problems,
    vault: f.vault.map((v) => ({
      address: v.address,
      sealed: v.sealed ?? null,
      haRole: v.haRole ?? null,
      version: v.version ?? null,
      reachable: v.reachable,
      ...(v.raft ? { raft: v.raft } : {}),
    })),
    postgres: f.postgres.map((s) => ({
      endpoint: s.endpoint,
      role: s.role ?? null,
      version: s.version ?? null,
      ...(s.replayLagSeconds !== undefined ? { replayLagSeconds: s.replayLagSeconds } : {}),
      ...(s.replayLagBytes !== undefined ? { replayLagBytes: s.replayLagBytes } : {}),
      reachable: s.reachable,
    })),
    roles: Object.fromEntries(Object.entries(f.roles).map(([k, r]) => [k, { liveLeases: r.liveLeases, ...(r.earliestExpiry ? { earliestExpiry: r.earliestExpiry } : {}) }])),
    certificates: f.certificates.map((c) => ({ file: c.file, expiresAt: c.expiresAt, daysLeft: c.daysLeft })),
    state: { backend: f.state.backend, locked: f.state.locks.length > 0, ...(firstLock ? { holder: `${firstLock.holder} (${firstLock.stack})` } : {}) },
  };
}

function inWords(seconds: number): string {
  const s = Math.round(seconds);
  if (Math.abs(s) < 120) return `${s} s`;
  if (Math.abs(s) < 7200) return `${Math.round(s / 60)} min`;
  if (Math.abs(s) < 172_800) return `${(s / 3600).toFixed(1)} h`;
  return `${Math.round(s / 86_400)} days`;
}

function bytes(n: number): string {
  return n < 1024 ? `${n} B` : n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** The one screen. */
export function statusText(f: StatusFacts, problems: string[]): string {
  const out: string[] = [];
  const row = (...cells: string[]) => out.push(`  ${cells.join('  ').trimEnd()}`);
  out.push(`Environment ${f.environment}: ${problems.length ? `${problems.length} problem${problems.length > 1 ? 's' : ''}` : 'OK'}`);
  out.push('', 'Vault');
  const addrWidth = Math.max(0, ...f.vault.map((v) => v.address.length));
  for (const v of f.vault) {
    if (!v.reachable) {
      row(v.address.padEnd(addrWidth), `UNREACHABLE (${v.error ?? 'no answer'})`);
      continue;
    }
    const raft = v.raft ? `raft ${v.raft.status}${v.raft.healthy === undefined ? '' : v.raft.healthy ? ' healthy' : ' UNHEALTHY'}` : '';
    row(v.address.padEnd(addrWidth), (v.sealed ? 'SEALED' : 'unsealed').padEnd(8), (v.haRole ?? '-').padEnd(7), (v.version ?? '').padEnd(8), raft);
  }
  out.push('', 'Postgres');
  const epWidth = Math.max(0, ...f.postgres.map((s) => s.endpoint.length));
  for (const s of f.postgres) {
    if (!s.reachable) {
      row(s.endpoint.padEnd(epWidth), `UNREACHABLE (${s.error ?? 'no answer'})`);
      continue;
    }
    const lag = s.role === 'replica' ? `replay lag ${s.replayLagSeconds?.toFixed(1) ?? '?'} s, ${s.replayLagBytes === undefined ? '?' : bytes(s.replayLagBytes)}` : s.streamingReplicas ? `${s.streamingReplicas} streaming replica${s.streamingReplicas > 1 ? 's' : ''}` : '';
    row(s.endpoint.padEnd(epWidth), (s.role ?? '?').padEnd(7), (s.version ?? '').padEnd(6), lag);
  }
  out.push('', `Leases (${f.mountPath}/creds/<role>)`);
  const roleWidth = Math.max(0, ...Object.keys(f.roles).map((r) => r.length));
  for (const [role, r] of Object.entries(f.roles)) {
    if (r.error) {
      row(role.padEnd(roleWidth), `unknown (${r.error})`);
      continue;
    }
    const earliest = r.earliestExpiry
      ? `earliest expiry ${r.earliestExpiry} (in ${inWords((Date.parse(r.earliestExpiry) - f.now) / 1000)})${r.lookedUp !== undefined ? `, of ${r.lookedUp} looked up` : ''}`
      : '';
    row(role.padEnd(roleWidth), `${r.liveLeases} live`.padEnd(9), earliest);
  }
  out.push('', 'Certificates');
  if (!f.certificates.length) row('none (this environment uses no TLS of its own)');
  const fileWidth = Math.max(0, ...f.certificates.map((c) => c.file.length));
  for (const c of f.certificates) row(c.file.padEnd(fileWidth), `${c.daysLeft} days left`.padEnd(15), `${c.expiresAt}  ${c.subject}`);
  out.push('', 'State');
  if (f.state.error) row(f.state.backend, `lock unknown (${f.state.error})`);
  else if (!f.state.locks.length) row(f.state.backend, 'not locked');
  for (const l of f.state.locks) row(f.state.backend, `LOCKED: ${l.stack} by ${l.holder}${l.since ? ` since ${l.since}` : ''}`);
  out.push('', 'Problems');
  if (!problems.length) row('none');
  for (const p of problems) out.push(`  - ${p}`);
  return out.join('\n') + '\n';
}
