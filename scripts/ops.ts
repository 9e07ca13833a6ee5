/**
 * Deploy, destroy and local secrets for one environment. Secrets cross into
 * Terraform only as files (mode 0600) and TF_VAR_* at apply time; nothing here
 * prints one.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { EnvironmentConfig, REPO_ROOT, loadEnvironment, localDir } from '../stacks/config';
import { stateFile } from '../stacks/common';

export function log(msg: string): void {
  process.stderr.write(`[pgvault] ${msg}\n`);
}

/** Loads `toolchain:env` into this process (PATH, TF_CLI_CONFIG_FILE, images, ...). */
export function loadToolchainEnv(): void {
  const r = spawnSync('bash', [path.join(REPO_ROOT, 'toolchain', 'toolchain.sh'), 'env'], { encoding: 'utf8' });
  if (r.status !== 0) {
    throw new Error(`the toolchain is not set up (${r.stderr.trim()}); run: npm run toolchain`);
  }
  for (const line of r.stdout.split('\n')) {
    const m = line.match(/^export ([A-Z_][A-Z0-9_]*)=(.*)$/);
    if (!m) continue;
    let value = m[2].replace(/^"(.*)"$/, '$1');
    value = value.replace(/\$PATH/g, process.env.PATH ?? '');
    process.env[m[1]] = value;
  }
}

function randomSecret(): string {
  return crypto.randomBytes(24).toString('base64url');
}

/** Writes a file with mode 0600 unless it exists. Returns true when it wrote one. */
function ensureSecretFile(file: string, make: () => string): boolean {
  if (fs.existsSync(file)) {
    fs.chmodSync(file, 0o600);
    return false;
  }
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  fs.writeFileSync(file, make() + '\n', { mode: 0o600, flag: 'wx' });
  return true;
}

export function readSecretFile(file: string, what: string): string {
  let value: string;
  try {
    value = fs.readFileSync(file, 'utf8').trim();
  } catch (e: any) {
    throw new Error(`${what}: cannot read ${file} (${e.code}); create it (mode 0600) or redeploy`);
  }
  if (!value) throw new Error(`${what}: ${file} is empty; write the secret into it (mode 0600) or redeploy`);
  return value;
}

/** Creates the environment's local secrets (docker environments) and checks the operator's (existing ones). */
export function prepareLocalSecrets(env: EnvironmentConfig): void {
  const dir = localDir(env.name);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);
  if (env.infrastructure === 'docker') {
    ensureSecretFile(env.postgres.adminPasswordFile, randomSecret);
    ensureSecretFile(env.vault.tokenFile, () => crypto.randomBytes(20).toString("hex"));
  } else {
    for (const [setting, file] of [
      ['postgres.adminPasswordFile', env.postgres.adminPasswordFile],
      ['vault.tokenFile', env.vault.tokenFile],
    ]) {
      if (!fs.existsSync(file)) {
        throw new Error(`${env.file}: setting "${setting}" names ${file}, which does not exist; create it (mode 0600) with the secret, then deploy again`);
      }
    }
  }
  ensureSecretFile(env.secretsEngine.setupPasswordFile, randomSecret);
}

export function stackIds(env: EnvironmentConfig): string[] {
  return env.infrastructure === 'docker' ? [`${env.name}-infra`, `${env.name}-secrets`] : [`${env.name}-secrets`];
}

function hasResources(env: EnvironmentConfig, stackId: string): boolean {
  try {
    const state = JSON.parse(fs.readFileSync(stateFile(env, stackId), 'utf8'));
    return Array.isArray(state.resources) && state.resources.some((r: any) => r.mode === 'managed');
  } catch {
    return false;
  }
}

/** Runs the cdktf CLI with the secrets as TF_VAR_* in its environment only. */
async function cdktf(env: EnvironmentConfig, args: string[]): Promise<void> {
  const childEnv: NodeJS.ProcessEnv = {
    ...process.env,
    PGVAULT_ONLY_ENV: env.name,
    CHECKPOINT_DISABLE: '1',
    CI: process.env.CI ?? 'true',
    FORCE_COLOR: '0',
    TF_VAR_vault_db_setup_password: readSecretFile(env.secretsEngine.setupPasswordFile, 'the Vault setup password'),
  };
  if (env.infrastructure === 'docker') {
    childEnv.TF_VAR_vault_dev_root_token = readSecretFile(env.vault.tokenFile, 'the Vault dev root token');
  }
  const bin = path.join(REPO_ROOT, 'node_modules', '.bin', 'cdktf');
  // PGVAULT_CDKTF_LOG=<file>: send cdktf's output there instead of the terminal (the tests do).
  const logFile = process.env.PGVAULT_CDKTF_LOG;
  const out = logFile ? fs.openSync(logFile, 'a') : 'inherit';
  const code = await new Promise<number>((resolve) => {
    const child = spawn(bin, args, { cwd: REPO_ROOT, env: childEnv, stdio: ['ignore', out, out] });
    child.on('exit', (c) => resolve(c ?? 1));
    child.on('error', () => resolve(127));
  });
  if (typeof out === 'number') fs.closeSync(out);
  if (code !== 0) {
    const tail = logFile ? `\n--- last lines of ${logFile} ---\n${fs.readFileSync(logFile, 'utf8').split('\n').slice(-40).join('\n')}\n---` : '';
    throw new Error(`cdktf ${args[0]} exited with ${code}${tail}`);
  }
}

export function outputsFile(envName: string): string {
  return path.join(localDir(envName), 'outputs.json');
}

/** Deploys the environment's stacks and writes `.local/<env>/outputs.json`. */
export async function deploy(name: string): Promise<Record<string, unknown>> {
  const env = loadEnvironment(name);
  prepareLocalSecrets(env);
  const raw = path.join(localDir(env.name), 'cdktf-outputs.json');
  const started = Date.now();
  try {
    await cdktf(env, ['deploy', ...stackIds(env), '--auto-approve', '--skip-provider-lock', '--outputs-file', raw]);
  } catch (e: any) {
    throw new Error(
      `deploy of ${env.name} failed: ${e.message}. The environment may be partly deployed. ` +
        `Fix the cause shown above and run 'npm run deploy -- ${env.name}' again (it picks up where it stopped), ` +
        `or remove what was created with 'npm run destroy -- ${env.name}'.`,
    );
  }
  const byStack = JSON.parse(fs.readFileSync(raw, 'utf8'));
  const flat: Record<string, unknown> = {};
  for (const id of stackIds(env)) Object.assign(flat, byStack[id] ?? {});
  if (env.vault.caCertFile) flat.vault_ca_cert_file = env.vault.caCertFile;
  flat.environment = env.name;
  fs.writeFileSync(outputsFile(env.name), JSON.stringify(flat, null, 2) + '\n', { mode: 0o600 });
  fs.rmSync(raw, { force: true });
  log(`deployed ${env.name} in ${((Date.now() - started) / 1000).toFixed(1)}s; outputs: ${outputsFile(env.name)}`);
  return flat;
}

/** Destroys the environment's stacks. Harmless when nothing is deployed. */
export async function destroy(name: string): Promise<void> {
  const env = loadEnvironment(name);
  const deployed = stackIds(env).filter((id) => hasResources(env, id));
  const started = Date.now();
  if (deployed.length === 0) {
    log(`nothing deployed for ${env.name}; nothing to destroy`);
  } else {
    try {
      await cdktf(env, ['destroy', ...deployed, '--auto-approve', '--skip-provider-lock']);
    } catch (e: any) {
      throw new Error(
        `destroy of ${env.name} failed: ${e.message}. Fix the cause shown above and run 'npm run destroy -- ${env.name}' again. ` +
          (env.infrastructure === 'docker'
            ? `To remove the containers by hand: docker rm -f pgvault-${env.name}-postgres pgvault-${env.name}-vault; docker volume rm pgvault-${env.name}-postgres-data; docker network rm pgvault-${env.name}; then delete ${localDir(env.name)}.`
            : '')
      );
    }
  }
  // What the deploy generated goes too; operator-provided files (existing environments) stay.
  const dir = localDir(env.name);
  for (const f of [outputsFile(env.name), env.secretsEngine.setupPasswordFile, path.join(dir, 'state'), path.join(dir, 'app-secret-id')]) {
    fs.rmSync(f, { recursive: true, force: true });
  }
  if (env.infrastructure === 'docker') fs.rmSync(dir, { recursive: true, force: true });
  log(`destroyed ${env.name} in ${((Date.now() - started) / 1000).toFixed(1)}s`);
}

/** Issues a fresh AppRole secret_id with the environment's admin token (local use: demo, serve, tests). */
export async function issueSecretId(name: string, timeoutMillis = 10_000): Promise<string> {
  const env = loadEnvironment(name);
  const outputs = JSON.parse(fs.readFileSync(outputsFile(env.name), 'utf8'));
  const token = readSecretFile(env.vault.tokenFile, 'the Vault admin token');
  const res = await vaultFetch(env, `${outputs.vault_address}/v1/auth/${outputs.approle_mount}/role/${outputs.approle_role_name}/secret-id`, token, 'POST', {}, timeoutMillis);
  return res.data.secret_id;
}

/** A minimal admin call to Vault with the environment's CA. */
export async function vaultFetch(env: EnvironmentConfig, url: string, token: string, method = 'GET', body?: unknown, timeoutMillis = 10_000): Promise<any> {
  const https = await import('node:https');
  const http = await import('node:http');
  const u = new URL(url);
  const ca = env.vault.caCertFile ? fs.readFileSync(env.vault.caCertFile) : undefined;
  return new Promise((resolve, reject) => {
    const req = (u.protocol === 'https:' ? https : http).request(
      u,
      { method, headers: { 'X-Vault-Token': token, 'Content-Type': 'application/json' }, ca, servername: env.vault.tlsServerName } as any,
      (res) => {
        let data = '';
        res.on('data', (c) => (data += c));
        res.on('end', () => {
          if ((res.statusCode ?? 500) >= 300) {
            reject(new Error(`Vault ${method} ${u.pathname} answered ${res.statusCode}`));
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
