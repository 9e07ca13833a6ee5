#!/usr/bin/env node
/**
 * Issues an AppRole secret_id with the environment's admin token:
 *   npm run --silent secret-id -- <env> [--app <name>] [--wrap-ttl <seconds>]
 * stdout: the secret_id, or with --wrap-ttl a response-wrapping token (single use, expires after
 * that many seconds), and nothing else. stderr: its accessor, so that whoever delivers it can
 * check it later (sys/wrapping/lookup, the audit log) or destroy it.
 */
import * as fs from 'node:fs';
import { safeMessage } from '@pgvault/runtime';
import { outputsFile } from '../local/outputs';
import { log } from '../local/toolchain-env';
import { issueSecretIdWithAccessor, secretIdPath } from './vault-admin';

const USAGE = 'usage: npm run --silent secret-id -- <env> [--app <name>] [--wrap-ttl <seconds>]';

/** Exit status 2 with one line on stderr: bad arguments. */
class UsageError extends Error {
  readonly code = 'SECRET_ID_USAGE';
}

export function parseSecretIdArgs(argv: readonly string[]): { env: string; app?: string; wrapTtlSeconds?: number } {
  let env: string | undefined;
  let app: string | undefined;
  let wrapTtlSeconds: number | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--app' || a === '--wrap-ttl') {
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) throw new UsageError(`${a} needs a value; ${USAGE}`);
      if (a === '--app') app = v;
      else {
        if (!/^[0-9]+$/.test(v) || Number(v) < 1 || Number(v) > 31_536_000) {
          throw new UsageError(`--wrap-ttl is "${v}"; expected a whole number of seconds from 1 to 31536000 (how long the wrapping token may wait to be unwrapped)`);
        }
        wrapTtlSeconds = Number(v);
      }
    } else if (a.startsWith('--')) {
      throw new UsageError(`unknown option "${a}"; ${USAGE}`);
    } else if (env === undefined) {
      env = a;
    } else {
      throw new UsageError(`unexpected argument "${a}"; ${USAGE}`);
    }
  }
  if (!env) throw new UsageError(`no environment given; ${USAGE}`);
  return { env, app, wrapTtlSeconds };
}

/**
 * The app whose AppRole issues the secret_id: --app names one of the environment's apps; for an
 * environment without "apps", its AppRole's name is accepted too (what --app meant before apps).
 */
function chooseApp(envName: string, app: string | undefined): string | undefined {
  if (app === undefined) return undefined;
  const outputs = JSON.parse(fs.readFileSync(outputsFile(envName), 'utf8'));
  const apps = Object.keys(outputs.apps ?? {}).sort();
  if (apps.includes(app)) return app;
  if (apps.length <= 1 && app === secretIdPath(envName).role) return undefined;
  throw new UsageError(`--app is "${app}"; environment ${envName} has the apps ${apps.map((a) => `"${a}"`).join(', ')}: give one of them, or leave --app out`);
}

async function main(): Promise<number> {
  const args = parseSecretIdArgs(process.argv.slice(2));
  const app = chooseApp(args.env, args.app);
  const issued = await issueSecretIdWithAccessor(args.env, { wrapTtlSeconds: args.wrapTtlSeconds, app });
  process.stdout.write(issued.value + '\n');
  log(issued.wrapped ? `wrapping token accessor: ${issued.accessor} (expires in ${args.wrapTtlSeconds} s; single use)` : `secret_id accessor: ${issued.accessor}`);
  return 0;
}

// Run directly, or through scripts/build.js --then (which requires this file).
if (require.main === module || process.argv[1] === __filename) {
  main().then(
    (code) => process.exit(code),
    (e) => {
      log(`error: ${safeMessage(e)}`);
      process.exit(e instanceof UsageError ? 2 : 1);
    },
  );
}
