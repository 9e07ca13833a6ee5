/** Admin calls to an environment's Vault, with its CA; the token comes from the environment's token file. */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { EnvironmentConfig, loadEnvironment } from '../../stacks/config';
import { readSecretFile } from '../local/local-secrets';
import { outputsFile } from '../local/outputs';
import { readOutputs } from '@pgvault/runtime/config';

/** Vault answered with an error status. `detail` is Vault's own error text, which never holds a secret. */
export class VaultAdminError extends Error {
  constructor(message: string, public readonly status: number, public readonly detail: string) {
    super(message);
  }
}

/** A minimal admin call to Vault with the environment's CA. */
/** `agent`: the HTTP agent (default: Node's global one, which keeps connections alive); `false` opens a new connection for this call. */
export async function vaultFetch(env: EnvironmentConfig, url: string, token: string, method = 'GET', body?: unknown, timeoutMillis = 10_000, headers: Record<string, string> = {}, agent?: http.Agent | false): Promise<any> {
  const u = new URL(url);
  const ca = env.vault.caCertFile ? fs.readFileSync(env.vault.caCertFile) : undefined;
  return new Promise((resolve, reject) => {
    const req = (u.protocol === 'https:' ? https : http).request(
      u,
      { method, headers: { ...headers, 'X-Vault-Token': token, 'Content-Type': 'application/json' }, ca, servername: env.vault.tlsServerName, ...(agent === undefined ? {} : { agent }) } as any,
      (res) => {
        let data = '';
        res.on('data', (c) => (data += c));
        res.on('end', () => {
          const status = res.statusCode ?? 500;
          if (status >= 300) {
            let detail = '';
            try {
              detail = (JSON.parse(data).errors ?? []).join('; ');
            } catch {
              detail = '';
            }
            reject(new VaultAdminError(`Vault ${method} ${u.pathname} answered ${status}${detail ? `: ${detail.slice(0, 400)}` : ''}`, status, detail));
          } else {
            resolve(data ? JSON.parse(data) : {});
          }
        });
      },
    );
    req.setTimeout(timeoutMillis, () => req.destroy(new Error(`no answer within ${timeoutMillis / 1000} s`)));
    req.on('error', (e) => reject(new Error(`Vault ${method} ${u.pathname}: ${e.message}`)));
    if (body !== undefined) req.write(JSON.stringify(body));
    req.end();
  });
}

/** An admin call with the environment's admin token, to its configured address. */
export async function vaultAdmin(env: EnvironmentConfig, method: string, apiPath: string, body?: unknown, timeoutMillis?: number, headers?: Record<string, string>): Promise<any> {
  const token = readSecretFile(env.vault.tokenFile, 'the Vault admin token');
  // A cluster: a node that does not answer or is sealed (503) is skipped for the next.
  const addresses = env.vault.addresses ?? [env.vault.address];
  for (let i = 0; ; i++) {
    try {
      return await vaultFetch(env, `${addresses[i]}/v1/${apiPath}`, token, method, body, timeoutMillis, headers);
    } catch (e) {
      const skip = !(e instanceof VaultAdminError) || e.status === 503;
      if (!skip || i === addresses.length - 1) throw e;
    }
  }
}

/** Issues a fresh AppRole secret_id with the environment's admin token (local use: demo, serve, tests). */
export async function issueSecretId(name: string, timeoutMillis = 10_000, app?: string): Promise<string> {
  return (await issueSecretIdWithAccessor(name, { timeoutMillis, app })).value;
}

/** A secret_id and its accessor (to destroy it, or find it in the audit log), or a wrapping token and the wrapping token's accessor. */
export interface IssuedSecretId {
  /** The secret_id, or with `wrapTtlSeconds` the wrapping token. Never logged. */
  readonly value: string;
  readonly accessor: string;
  readonly wrapped: boolean;
}

/**
 * The AppRole's secret-id path of a deployed environment, from its outputs, for the app `app`
 * (default: PGVAULT_APP, else the app the top-level outputs describe).
 */
export function secretIdPath(name: string, app?: string): { env: EnvironmentConfig; mount: string; role: string } {
  const env = loadEnvironment(name);
  const outputs = readOutputs(outputsFile(env.name), app);
  return { env, mount: outputs.approle_mount, role: outputs.approle_role_name };
}

/**
 * Issues a secret_id with the environment's admin token; with `wrapTtlSeconds`, response-wrapped
 * (Vault answers with a single-use wrapping token that expires after that many seconds).
 */
export async function issueSecretIdWithAccessor(name: string, opts: { wrapTtlSeconds?: number; timeoutMillis?: number; app?: string } = {}): Promise<IssuedSecretId> {
  const { env, mount, role } = secretIdPath(name, opts.app);
  const wrap = opts.wrapTtlSeconds ? { 'X-Vault-Wrap-TTL': `${opts.wrapTtlSeconds}s` } : undefined;
  const res = await vaultAdmin(env, 'POST', `auth/${mount}/role/${role}/secret-id`, {}, opts.timeoutMillis ?? 10_000, wrap);
  if (wrap) return { value: res.wrap_info.token, accessor: res.wrap_info.accessor, wrapped: true };
  return { value: res.data.secret_id, accessor: res.data.secret_id_accessor, wrapped: false };
}

/** Destroys one secret_id by its accessor (the secret_id itself is not needed). */
export async function destroySecretIdAccessor(name: string, accessor: string, timeoutMillis = 5000, app?: string): Promise<void> {
  const { env, mount, role } = secretIdPath(name, app);
  await vaultAdmin(env, 'POST', `auth/${mount}/role/${role}/secret-id-accessor/destroy`, { secret_id_accessor: accessor }, timeoutMillis);
}

/** The accessors of the AppRole's live secret_ids. */
export async function secretIdAccessors(name: string, app?: string): Promise<string[]> {
  const { env, mount, role } = secretIdPath(name, app);
  try {
    return (await vaultAdmin(env, 'GET', `auth/${mount}/role/${role}/secret-id?list=true`)).data?.keys ?? [];
  } catch (e) {
    if (e instanceof VaultAdminError && e.status === 404) return [];
    throw e;
  }
}

/** What state the environment's database mount is in, as seen by the admin token. */
export type MountState = 'absent' | 'healthy' | 'tainted' | 'no-connection';

export async function mountState(env: EnvironmentConfig): Promise<MountState> {
  const { mountPath, connectionName } = env.secretsEngine;
  const mounts = await vaultAdmin(env, 'GET', 'sys/mounts');
  if (!(mounts.data ?? mounts)[`${mountPath}/`]) return 'absent';
  try {
    await vaultAdmin(env, 'GET', `${mountPath}/config/${connectionName}`);
    return 'healthy';
  } catch (e) {
    if (e instanceof VaultAdminError && /tainted/i.test(e.detail)) return 'tainted';
    if (e instanceof VaultAdminError && e.status === 404) return 'no-connection';
    throw e;
  }
}

/** Leases still live under the mount's creds/ (all roles). */
export async function liveLeaseCount(env: EnvironmentConfig): Promise<number> {
  const base = `sys/leases/lookup/${env.secretsEngine.mountPath}/creds`;
  let roles: string[];
  try {
    roles = (await vaultAdmin(env, 'GET', `${base}?list=true`)).data?.keys ?? [];
  } catch (e) {
    if (e instanceof VaultAdminError && e.status === 404) return 0;
    throw e;
  }
  let n = 0;
  for (const r of roles) {
    try {
      n += ((await vaultAdmin(env, 'GET', `${base}/${r.replace(/\/$/, '')}?list=true`)).data?.keys ?? []).length;
    } catch (e) {
      if (!(e instanceof VaultAdminError && e.status === 404)) throw e;
    }
  }
  return n;
}

/**
 * Revokes every lease under the mount's creds/ while the connection still exists, so Vault's
 * revocation statements drop the users. When Vault cannot revoke them (the connection is gone
 * or the mount is tainted), the leases are removed from Vault with revoke-force, and the
 * Postgres side drops their users (see db-bootstrap `dropDynamicUsers`). Returns what it did.
 */
export async function revokeAllLeases(env: EnvironmentConfig): Promise<{ revoked: number; forced: number }> {
  const prefix = `${env.secretsEngine.mountPath}/creds`;
  const before = await liveLeaseCount(env);
  if (before === 0) return { revoked: 0, forced: 0 };
  try {
    await vaultAdmin(env, 'PUT', `sys/leases/revoke-prefix/${prefix}`, { sync: true }, 120_000);
    return { revoked: before, forced: 0 };
  } catch (e: any) {
    const left = await liveLeaseCount(env);
    await vaultAdmin(env, 'PUT', `sys/leases/revoke-force/${prefix}`, {}, 120_000);
    return { revoked: before - left, forced: left };
  }
}
