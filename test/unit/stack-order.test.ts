import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { inDependencyOrder, SynthesizedStack } from '../../ops/terraform/runner';

const stack = (name: string, ...dependencies: string[]): SynthesizedStack => ({ name, dir: `/nowhere/${name}`, dependencies });
const env = [stack('e-infra'), stack('e-secrets', 'e-infra')];

/** Records when each stack starts and ends; each "run" takes a few milliseconds. */
function recorder(fail?: string) {
  const events: string[] = [];
  const runOne = async (s: SynthesizedStack) => {
    events.push(`start ${s.name}`);
    await new Promise((r) => setTimeout(r, 5));
    events.push(`end ${s.name}`);
    if (s.name === fail) throw new Error(`${s.name} failed`);
  };
  return { events, runOne };
}

test('deploy runs a stack only after its dependencies, whatever order they are given in', async () => {
  const r = recorder();
  await inDependencyOrder(env, ['e-secrets', 'e-infra'], 'deploy', r.runOne);
  assert.deepEqual(r.events, ['start e-infra', 'end e-infra', 'start e-secrets', 'end e-secrets']);
});

test('destroy runs in the reverse order: the dependant first', async () => {
  const r = recorder();
  await inDependencyOrder(env, ['e-infra', 'e-secrets'], 'destroy', r.runOne);
  assert.deepEqual(r.events, ['start e-secrets', 'end e-secrets', 'start e-infra', 'end e-infra']);
});

test('stacks that do not depend on each other run at the same time', async () => {
  const r = recorder();
  const all = [...env, stack('f-secrets'), stack('g-infra')];
  await inDependencyOrder(all, ['e-infra', 'e-secrets', 'f-secrets', 'g-infra'], 'deploy', r.runOne);
  assert.deepEqual(r.events.slice(0, 3), ['start e-infra', 'start f-secrets', 'start g-infra']);
  assert.ok(r.events.indexOf('start e-secrets') > r.events.indexOf('end e-infra'));
});

test('a dependency that was not chosen counts as satisfied (a partial environment)', async () => {
  const r = recorder();
  await inDependencyOrder(env, ['e-secrets'], 'deploy', r.runOne);
  assert.deepEqual(r.events, ['start e-secrets', 'end e-secrets']);
});

test('fails when a stack fails: its dependants never start, and the first failure is thrown', async () => {
  const r = recorder('e-infra');
  await assert.rejects(inDependencyOrder(env, ['e-infra', 'e-secrets'], 'deploy', r.runOne), /e-infra failed/);
  assert.deepEqual(r.events, ['start e-infra', 'end e-infra']);
});

test('fails when a stack was not synthesized, naming it and the stacks there are', async () => {
  await assert.rejects(inDependencyOrder(env, ['other-secrets'], 'deploy', recorder().runOne), /stack other-secrets was not synthesized \(found: e-infra, e-secrets\)/);
});

test('fails when stacks depend on each other in a cycle, running none of them', async () => {
  const r = recorder();
  await assert.rejects(inDependencyOrder([stack('a', 'b'), stack('b', 'a')], ['a', 'b'], 'deploy', r.runOne), /a, b depend on each other/);
  assert.deepEqual(r.events, []);
});
