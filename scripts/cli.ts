/**
 * pgvault: deploy, destroy and demo one environment.
 *
 *   node dist/scripts/cli.js deploy  [env]   (default env: local)
 *   node dist/scripts/cli.js destroy [env]
 *   node dist/scripts/cli.js demo    [env]   deploy when needed, then prove credentials work
 */
import { deploy, destroy, loadToolchainEnv, log } from '../ops';

async function main(): Promise<number> {
  const [command, name = 'local'] = process.argv.slice(2);
  loadToolchainEnv();
  switch (command) {
    case 'deploy':
      await deploy(name);
      return 0;
    case 'destroy':
      await destroy(name);
      return 0;
    case 'demo': {
      // Loaded here, not at the top: deploy and destroy start faster without the app's client.
      const { demo } = await import('../demo/demo');
      return (await demo(name)) ? 0 : 1;
    }
    default:
      console.error('usage: cli.js deploy|destroy|demo [environment]');
      return 2;
  }
}

main().then(
  (code) => process.exit(code),
  async (e) => {
    const { safeMessage } = await import('@pgvault/runtime');
    log(`error: ${safeMessage(e)}`);
    process.exit(1);
  },
);
