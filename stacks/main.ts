import { App } from 'cdktf';
import { listEnvironments, loadEnvironment } from './config';
import { tlsVerificationOff } from './errors';
import { InfraStack } from './infra-stack';
import { SecretsStack } from './secrets-stack';

/**
 * One App, one pair of stacks per environment file:
 * `<env>-infra` (only with "infrastructure": "docker") and `<env>-secrets`.
 * PGVAULT_ONLY_ENV=<name> (or the first argument: `npm run synth -- <name>`) synthesizes that environment alone.
 */
export function buildApp(app: App, names: readonly string[] = listEnvironments()): App {
  refuseTlsSkip(process.env);
  for (const name of names) {
    const env = loadEnvironment(name);
    const infra = env.infrastructure === 'docker' ? new InfraStack(app, `${name}-infra`, env) : undefined;
    const secrets = new SecretsStack(app, `${name}-secrets`, { env, infra });
    if (infra) secrets.addDependency(infra);
  }
  return app;
}

/**
 * The Vault provider takes VAULT_SKIP_VERIFY from the environment of the `cdktf deploy` that
 * runs it, and an explicit skip_tls_verify = false does not undo it. cdktf synthesizes in that
 * same environment, so the synth refuses it: a plain `cdktf deploy` never skips the TLS check.
 */
export function refuseTlsSkip(env: NodeJS.ProcessEnv): void {
  for (const variable of ['VAULT_SKIP_VERIFY', 'BAO_SKIP_VERIFY']) {
    const value = env[variable];
    if (value !== undefined && value !== '' && !/^(0|false)$/i.test(value)) throw tlsVerificationOff(variable, value);
  }
}

if (require.main === module) {
  try {
    const only = process.env.PGVAULT_ONLY_ENV || process.argv[2];
    buildApp(new App(), only ? [only] : undefined).synth();
  } catch (e: any) {
    console.error(e?.code ? `${e.message}` : e);
    process.exit(1);
  }
}
