/** The operations' entry points for the CLI, the server, the benchmarks and the tests. */
export { deploy, destroy, PHASES } from './pipeline';
export { stackIds } from './terraform/stacks';
export { log, loadToolchainEnv } from './local/toolchain-env';
export { readSecretFile, prepareLocalSecrets } from './local/local-secrets';
export { outputsFile } from './local/outputs';
export { vaultFetch, vaultAdmin, issueSecretId } from './vault/vault-admin';
