/**
 * The environment's local files: generated secrets, state, outputs and logs under
 * `.local/<env>/`. Every file that can hold a secret is mode 0600 in directories of
 * mode 0700, whatever the umask.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EnvironmentConfig, localDir } from '../../stacks/config';

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

/** Writes a file that may hold a secret: mode 0600, in a directory of mode 0700, atomically. */
export function writePrivateFile(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.chmodSync(tmp, 0o600);
  fs.renameSync(tmp, file);
}

/** Makes every directory under `.local/<env>` 0700 and every file 0600 (Terraform writes state with its own modes). */
export function securePermissions(envName: string): void {
  const walk = (p: string) => {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(p);
    } catch {
      return;
    }
    if (st.isSymbolicLink()) return;
    if (st.isDirectory()) {
      fs.chmodSync(p, 0o700);
      for (const e of fs.readdirSync(p)) walk(path.join(p, e));
    } else {
      fs.chmodSync(p, 0o600);
    }
  };
  walk(localDir(envName));
}

/** Creates the environment's local secrets (docker environments) and checks the operator's (existing ones). */
export function prepareLocalSecrets(env: EnvironmentConfig): void {
  const dir = localDir(env.name);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);
  if (env.infrastructure === 'docker') {
    ensureSecretFile(env.postgres.adminPasswordFile, randomSecret);
    // A cluster's admin token is written by its initialization (ops/vault/vault-cluster.ts).
    if (!env.docker?.vaultNodes) ensureSecretFile(env.vault.tokenFile, () => crypto.randomBytes(20).toString('hex'));
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
