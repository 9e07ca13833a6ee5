/**
 * Preloaded (NODE_OPTIONS=--require) by the demo test into the processes `npm run demo`
 * starts. In the demo's own process (dist/scripts/cli.js) it records the secrets the demo
 * really handled (the AppRole secret_id, the Vault token, every issued password) to
 * PGVAULT_DEMO_SPY_FILE, one per line, so the test can check that none of them was printed.
 * It changes nothing of what the demo does.
 */
import * as fs from 'node:fs';

const spyFile = process.env.PGVAULT_DEMO_SPY_FILE;

if (spyFile && process.argv.some((a) => a.endsWith('dist/scripts/cli.js'))) {
  const record = (kind: string, value: unknown) => {
    if (typeof value === 'string' && value) fs.appendFileSync(spyFile, `${kind}\t${value}\n`, { mode: 0o600 });
  };
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { VaultSession } = require('@pgvault/runtime');
  const login = VaultSession.prototype.login;
  VaultSession.prototype.login = async function (this: any, mount: string, roleId: string, secretId: unknown, ...rest: unknown[]) {
    record('secret_id', secretId);
    await login.call(this, mount, roleId, secretId, ...rest);
    record('token', this.client?.token);
  };
  const issue = VaultSession.prototype.issue;
  VaultSession.prototype.issue = async function (this: any, ...args: unknown[]) {
    const creds = await issue.apply(this, args);
    record('password', creds.password);
    return creds;
  };
}
