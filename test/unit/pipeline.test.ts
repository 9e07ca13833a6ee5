/**
 * The deploy's list of phases (ops/pipeline.ts) and the steps it makes for each kind of
 * environment: the destroy is the same list backwards, and the stacks Terraform deploys side by
 * side run as one Terraform run (one synth), as the deploy's cost requires.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadEnvironment, REPO_ROOT } from '../../stacks/config';
import { PHASES } from '../../ops/pipeline';
import { steps } from '../../ops/phases/phase';

const names = (envName: string, command: 'deploy' | 'destroy', deployed: string[] = []) => {
  const phases = command === 'deploy' ? PHASES : [...PHASES].reverse();
  return steps(loadEnvironment(envName), command, phases, deployed).map((s) => ('stacks' in s ? s.stacks.join(' + ') : s.phase.name));
};

test('the phases, in the deploy\'s order, each in a file of ops/phases/ named for it', { timeout: 10_000 }, () => {
  assert.deepEqual(PHASES.map((p) => p.name), ['local-files', 'cluster-files', 'infra-stack', 'cluster-init', 'secrets-stack', 'grants', 'outputs']);
  for (const p of PHASES) assert.ok(fs.existsSync(path.join(REPO_ROOT, 'ops', 'phases', `${p.name}.ts`)), `ops/phases/${p.name}.ts`);
});

test('a docker environment deploys both stacks in one Terraform run, and destroys them in one', { timeout: 10_000 }, () => {
  assert.deepEqual(names('local', 'deploy'), ['local-files', 'local-infra + local-secrets', 'grants', 'outputs']);
  assert.deepEqual(names('local', 'destroy', ['local-infra', 'local-secrets']), ['local-infra + local-secrets', 'local-files']);
  // Half deployed: only what the state holds is destroyed; nothing deployed: only the local files go.
  assert.deepEqual(names('local', 'destroy', ['local-infra']), ['local-infra', 'local-files']);
  assert.deepEqual(names('local', 'destroy', []), ['local-files']);
});

test('a Vault cluster is initialized between its two stacks; its destroy is still one Terraform run', { timeout: 10_000 }, () => {
  assert.deepEqual(names('ha', 'deploy'), ['local-files', 'cluster-files', 'ha-infra', 'cluster-init', 'ha-secrets', 'grants', 'outputs']);
  assert.deepEqual(names('ha', 'destroy', ['ha-infra', 'ha-secrets']), ['ha-infra + ha-secrets', 'local-files']);
});

test('an existing Vault and Postgres: only the secrets stack', { timeout: 10_000 }, () => {
  assert.deepEqual(names('existing-example', 'deploy'), ['local-files', 'existing-example-secrets', 'grants', 'outputs']);
  assert.deepEqual(names('existing-example', 'destroy', ['existing-example-secrets']), ['existing-example-secrets', 'local-files']);
});
