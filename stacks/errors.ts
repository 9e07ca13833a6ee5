/**
 * Every configuration error message is built here, so each one says what was
 * wrong, the value given, what is expected, and how to fix it.
 */

/** An environment file, or a setting in it, is not usable. */
export class ConfigError extends Error {
  public readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'ConfigError';
    this.code = code;
  }
}

export function unknownEnvironment(name: string, dir: string, known: readonly string[]): ConfigError {
  return new ConfigError(
    'ENV_UNKNOWN',
    `Unknown environment "${name}": there is no file ${dir}/${name}.json. ` +
      `Known environments: ${known.length ? known.join(', ') : '(none)'}. ` +
      `Pick one of those, or add ${dir}/${name}.json to define it.`,
  );
}

export function invalidEnvironmentName(name: string): ConfigError {
  return new ConfigError(
    'ENV_NAME',
    `Environment name "${name}" is not usable: expected lower-case letters, digits and dashes, ` +
      'starting with a letter (at most 32 characters). Rename the file to match.',
  );
}

export function unreadableFile(file: string, cause: unknown): ConfigError {
  const why = cause instanceof Error ? cause.message : String(cause);
  return new ConfigError('ENV_JSON', `${file}: not valid JSON (${why}). Fix the syntax and try again.`);
}

export function schemaViolation(file: string, setting: string, value: unknown, expected: string): ConfigError {
  const given = value === undefined ? 'nothing (the setting is missing)' : JSON.stringify(value);
  return new ConfigError(
    'ENV_SCHEMA',
    `${file}: setting "${setting}" is ${given}; expected ${expected}. Edit the file and set "${setting}" accordingly.`,
  );
}

export function ttlOrder(file: string, role: string, defaultTtl: number, maxTtl: number): ConfigError {
  return new ConfigError(
    'ENV_TTL',
    `${file}: setting "roles.${role}.defaultTtlSeconds" is ${defaultTtl}, greater than ` +
      `"roles.${role}.maxTtlSeconds" (${maxTtl}); expected defaultTtlSeconds <= maxTtlSeconds. ` +
      'Lower the default or raise the maximum.',
  );
}

export function portClash(file: string, port: number): ConfigError {
  return new ConfigError(
    'ENV_PORT',
    `${file}: settings "docker.postgresHostPort" and "docker.vaultHostPort" are both ${port}; ` +
      'expected two different ports. Change one of them.',
  );
}

export function missingSetting(file: string, setting: string, why: string): ConfigError {
  return new ConfigError(
    'ENV_MISSING',
    `${file}: setting "${setting}" is missing; it is required ${why}. Add it to the file.`,
  );
}

export function tlsVerificationOff(variable: string, value: string): ConfigError {
  return new ConfigError(
    'ENV_TLS_SKIP',
    `${variable} is "${value}" in this shell; expected it unset. The Vault provider (and Vault's Go client) would skip verifying ` +
      `Vault's TLS certificate even though the stacks set skip_tls_verify = false. Unset it (unset ${variable}) and run again; ` +
      'to trust a private CA, set "vault.caCertFile" in the environment file instead.',
  );
}

export function unknownAppRole(file: string, app: string, index: number, role: string, known: readonly string[]): ConfigError {
  return new ConfigError(
    'ENV_APP_ROLE',
    `${file}: setting "apps.${app}.roles[${index}]" is "${role}", a role the file does not declare; expected one of ${known.map((r) => `"${r}"`).join(', ')}. ` +
      `Declare "${role}" under "roles", or name one of those.`,
  );
}

export function unknownApp(file: string, app: string, known: readonly string[]): ConfigError {
  return new ConfigError(
    'ENV_APP_UNKNOWN',
    `${file}: there is no app "${app}"; the environment's apps are ${known.map((a) => `"${a}"`).join(', ')}. ` +
      'Name one of those (PGVAULT_APP), or add the app under "apps" in the file.',
  );
}
