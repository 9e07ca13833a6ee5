/**
 * Before Terraform runs on an environment's stacks: a teardown that was interrupted (the
 * database mount tainted, or its connection gone while leases live) is finished, so that
 * deploy and destroy can go on.
 */
import { EnvironmentConfig } from '../../stacks/config';
import { log } from '../local/toolchain-env';
import { mountState, vaultAdmin } from '../vault/vault-admin';
import { hasResources } from './stacks';

/**
 * Finds a teardown that was interrupted and finishes it: the leases Vault can no longer revoke
 * are removed from Vault, and their Postgres users are dropped from Postgres's side by the
 * bootstrap (deploy) or the teardown (destroy).
 */
export async function recoverInterruptedTeardown(env: EnvironmentConfig, forDeploy: boolean): Promise<void> {
  if (!(await hasResources(env, `${env.name}-secrets`))) return;
  let state;
  try {
    state = await mountState(env);
  } catch {
    return; // Vault does not answer: Terraform will say so.
  }
  if (state === 'absent' || state === 'healthy') return;
  const mount = env.secretsEngine.mountPath;
  const what = state === 'tainted' ? `the mount ${mount}/ is tainted (an unmount was interrupted)` : `the connection ${mount}/config/${env.secretsEngine.connectionName} is gone`;
  log(`${env.name}: ${what}; Vault can no longer revoke the leases under ${mount}/creds/. Recovering:`);
  await vaultAdmin(env, 'PUT', `sys/leases/revoke-force/${mount}`, {}, 120_000);
  log(`  removed the leases under ${mount}/ from Vault (sys/leases/revoke-force/${mount})`);
  if (forDeploy) {
    await vaultAdmin(env, 'DELETE', `sys/mounts/${mount}`, undefined, 120_000);
    log(`  removed the mount ${mount}/ (it holds only configuration); the deploy recreates it, and its bootstrap drops the users Vault could not revoke`);
  } else {
    log('  the destroy goes on; its teardown drops the users Vault could not revoke');
  }
}
