/**
 * The actions Terraform runs through the stacks' terraform_data hooks (stacks/constructs/script-hook.ts):
 *
 *   node dist/ops/hooks.js bootstrap      <env>   prepare Postgres (values: vault_mount)
 *   node dist/ops/hooks.js teardown       <env>   remove what the bootstrap created (at destroy)
 *   node dist/ops/hooks.js revoke-leases  <env>   revoke every lease of the mount (at destroy)
 *   node dist/ops/hooks.js write-outputs  <env>   write .local/<env>/outputs.json (values: outputs)
 *   node dist/ops/hooks.js remove-outputs <env>   delete it (at destroy)
 *
 * Values arrive as JSON in PGVAULT_HOOK_<NAME>. Nothing here prints a secret.
 *
 * The action, the environment and the script are literals of the synthesized configuration.
 * The hook's input as the state holds it arrives as data in PGVAULT_HOOK_INPUT: when it names
 * another environment, or a script that is not a plain path, the state was changed outside
 * Terraform, and nothing runs.
 */
import * as fs from 'node:fs';
import { EnvironmentConfig, loadEnvironment } from '../stacks/config';
import { checkHookInput } from './terraform/state-trust';
import { down, up } from './postgres/db-bootstrap';
import { outputsFile, writeOutputsFile } from './local/outputs';
import { revokeAllLeases } from './vault/vault-admin';

function value(name: string): any {
  const raw = process.env[`PGVAULT_HOOK_${name.toUpperCase()}`];
  if (raw === undefined) throw new Error(`PGVAULT_HOOK_${name.toUpperCase()} is not set; this script is run by Terraform's hooks`);
  return JSON.parse(raw);
}

const actions: Record<string, (env: EnvironmentConfig) => Promise<void>> = {
  bootstrap: (env) => up(env, value('vault_mount')),
  teardown: (env) => down(env),
  'revoke-leases': async (env) => {
    const { revoked, forced } = await revokeAllLeases(env);
    const mount = env.secretsEngine.mountPath;
    if (forced) {
      console.log(
        `leases: ${env.name}: Vault revoked ${revoked} lease(s) of ${mount}/creds; it could not revoke ${forced} (its connection to Postgres is gone), ` +
          `so they were removed from Vault (revoke-force) and the teardown drops their Postgres users`,
      );
    } else {
      console.log(`leases: ${env.name}: revoked ${revoked} live lease(s) of ${mount}/creds before removing the connection`);
    }
  },
  'write-outputs': async (env) => writeOutputsFile(env, value('outputs')),
  'remove-outputs': async (env) => {
    fs.rmSync(outputsFile(env.name), { force: true });
  },
};

async function main(argv: string[]): Promise<void> {
  const [action, name] = argv;
  const run = actions[action];
  if (!run || !name || argv.length !== 2) throw new Error(`usage: hooks.js ${Object.keys(actions).join('|')} <environment>`);
  checkHookInput(action, name, process.env.PGVAULT_HOOK_INPUT);
  // Checked again here, where it is used: a safe name, with its own file in the environments directory.
  await run(loadEnvironment(name));
}

main(process.argv.slice(2)).catch((e) => {
  console.error(`${process.argv[2] ?? 'hook'} failed: ${e.message}`);
  process.exit(1);
});
