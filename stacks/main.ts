import { App } from 'cdktf';
import { listEnvironments, loadEnvironment } from './config';
import { InfraStack } from './infra-stack';
import { SecretsStack } from './secrets-stack';

/**
 * One App, one pair of stacks per environment file:
 * `<env>-infra` (only with "infrastructure": "docker") and `<env>-secrets`.
 * PGVAULT_ONLY_ENV=<name> synthesizes that environment alone.
 */
export function buildApp(app: App, names: readonly string[] = listEnvironments()): App {
  for (const name of names) {
    const env = loadEnvironment(name);
    const infra = env.infrastructure === 'docker' ? new InfraStack(app, `${name}-infra`, env) : undefined;
    const secrets = new SecretsStack(app, `${name}-secrets`, { env, infra });
    if (infra) secrets.addDependency(infra);
  }
  return app;
}

if (require.main === module) {
  try {
    const only = process.env.PGVAULT_ONLY_ENV;
    buildApp(new App(), only ? [only] : undefined).synth();
  } catch (e: any) {
    console.error(e?.code ? `${e.message}` : e);
    process.exit(1);
  }
}
