/**
 * The demo: deploy the environment when needed, then prove that its app's credentials work
 * (demo/verify.ts checks each role), and print the report. `npm run demo -- [env]`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { appConfigFromOutputs, readOutputs, VaultSession } from '@pgvault/runtime';
import { loadEnvironment, localDir } from '../stacks/config';
import { RoleReport, verifyRole } from './verify';
import { deploy, issueSecretId, log, outputsFile } from '../ops';

export async function demo(name: string): Promise<boolean> {
  const env = loadEnvironment(name);
  // The report is the point here: cdktf's own output goes to a log (its tail is shown on failure).
  fs.mkdirSync(localDir(name), { recursive: true, mode: 0o700 });
  process.env.PGVAULT_CDKTF_LOG ??= path.join(localDir(name), 'cdktf.log');
  log(`deploying ${name} (cdktf output: ${process.env.PGVAULT_CDKTF_LOG})`);
  await deploy(name);
  const secretId = await issueSecretId(name);
  const cfg = appConfigFromOutputs(readOutputs(outputsFile(name)), { secretId });
  const session = new VaultSession({ address: cfg.vaultAddress, addresses: cfg.vaultAddresses, caCert: cfg.vaultCaCert });
  await session.login(cfg.approleMount, cfg.roleId, cfg.secretId);
  const reports: RoleReport[] = [];
  try {
    // The app's roles (api's, or the one app's): another app's would answer 403.
    for (const role of env.roles.filter((r) => cfg.roles.includes(r.name))) {
      reports.push(await verifyRole(session, cfg, role.name, role.access, role.grants));
    }
  } finally {
    await session.revokeSelf();
  }
  console.log(`\nEnvironment ${name}: Vault ${cfg.vaultAddress}, Postgres ${cfg.postgres.host}:${cfg.postgres.port}/${cfg.postgres.database}`);
  console.log(`App logged in with AppRole (policies: ${session.policies.join(', ') || 'none'}); its token is revoked.\n`);
  let ok = true;
  for (const r of reports) {
    console.log(`role ${r.role}: user ${r.username}, lease TTL ${r.leaseDurationSeconds}s`);
    for (const c of r.checks) {
      console.log(`  ${c.ok ? 'PASS' : 'FAIL'}  ${c.name.padEnd(40)} ${c.detail}`);
      ok &&= c.ok;
    }
  }
  console.log(`\n${ok ? 'All checks passed.' : 'Some checks FAILED.'} Tear down with: npm run destroy -- ${name}`);
  return ok;
}
