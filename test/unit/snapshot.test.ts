/**
 * One snapshot per stack: the whole synthesized cdk.tf.json, with machine-specific paths
 * replaced by placeholders. A change shows as a diff; accept it with UPDATE_SNAPSHOTS=1.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Testing } from 'cdktf';
import { InfraStack } from '../../stacks/infra-stack';
import { SecretsStack } from '../../stacks/secrets-stack';
import { loadEnvironment, REPO_ROOT } from '../../stacks/config';

const DIR = path.join(REPO_ROOT, 'test', 'unit', 'snapshots');

function normalize(json: string): unknown {
  const text = json.split(REPO_ROOT).join('<repo>').split(JSON.stringify(REPO_ROOT).slice(1, -1)).join('<repo>');
  return JSON.parse(text);
}

function check(name: string, synthesized: string): void {
  const file = path.join(DIR, `${name}.json`);
  const actual = normalize(synthesized);
  if (process.env.UPDATE_SNAPSHOTS === '1' || !fs.existsSync(file)) {
    fs.mkdirSync(DIR, { recursive: true });
    fs.writeFileSync(file, JSON.stringify(actual, null, 2) + '\n');
    if (process.env.CI === 'true' && process.env.UPDATE_SNAPSHOTS !== '1') assert.fail(`snapshot ${file} was missing; commit it`);
    return;
  }
  assert.deepEqual(actual, JSON.parse(fs.readFileSync(file, 'utf8')), `${name} changed; if intended, run UPDATE_SNAPSHOTS=1 npm run test:unit and commit the snapshot`);
}

test('snapshots of the local and existing-example stacks', () => {
  const saved = { POSTGRES_IMAGE: process.env.POSTGRES_IMAGE, VAULT_IMAGE: process.env.VAULT_IMAGE };
  delete process.env.POSTGRES_IMAGE;
  delete process.env.VAULT_IMAGE;
  try {
    const app = Testing.app();
    const local = loadEnvironment('local');
    const infra = new InfraStack(app, 'local-infra', local);
    const secrets = new SecretsStack(app, 'local-secrets', { env: local, infra });
    const existing = new SecretsStack(app, 'existing-example-secrets', { env: loadEnvironment('existing-example') });
    check('local-infra', Testing.synth(infra));
    check('local-secrets', Testing.synth(secrets));
    check('existing-example-secrets', Testing.synth(existing));
  } finally {
    Object.assign(process.env, saved);
  }
});
