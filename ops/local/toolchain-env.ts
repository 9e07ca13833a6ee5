/** The toolchain's environment (PATH, TF_CLI_CONFIG_FILE, images, ...), loaded into this process. */
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { REPO_ROOT } from '../../stacks/config';

export function log(msg: string): void {
  process.stderr.write(`[pgvault] ${msg}\n`);
}

/** Loads `toolchain:env` into this process. */
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
