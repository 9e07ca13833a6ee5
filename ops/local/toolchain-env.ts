/** The toolchain's environment (PATH, TF_CLI_CONFIG_FILE, images, ...), loaded into this process. */
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { REPO_ROOT } from '../../stacks/config';

export function log(msg: string): void {
  process.stderr.write(`[pgvault] ${msg}\n`);
}

/** Variables a user may set to their own value: the toolchain's value applies only when they are unset. */
const USER_WINS = new Set(['POSTGRES_IMAGE']);

/** Loads `toolchain:env` into this process. */
export function loadToolchainEnv(): void {
  const r = spawnSync('bash', [path.join(REPO_ROOT, 'toolchain', 'toolchain.sh'), 'env'], { encoding: 'utf8' });
  if (r.status !== 0) {
    throw new Error(`the toolchain is not set up (${r.stderr.trim()}); run: npm run toolchain`);
  }
  applyToolchainEnv(r.stdout, process.env);
}

/** Sets the `export NAME=value` lines of `text` in `env`, as a shell's eval would ($PATH expanded); a user's own POSTGRES_IMAGE stays. */
export function applyToolchainEnv(text: string, env: NodeJS.ProcessEnv): void {
  for (const line of text.split('\n')) {
    const m = line.match(/^export ([A-Z_][A-Z0-9_]*)=(.*)$/);
    if (!m) continue;
    // A project image name in the variable is what an earlier eval of toolchain:env left, not the user's: the current one replaces it.
    if (USER_WINS.has(m[1]) && env[m[1]] && !env[m[1]]!.startsWith('pgvault/')) continue;
    let value = m[2].replace(/^"(.*)"$/, '$1');
    value = value.replace(/\$PATH/g, env.PATH ?? '');
    env[m[1]] = value;
  }
}
