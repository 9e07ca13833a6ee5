/**
 * End to end on `trust` (a copy of `local` on its own ports): the deploy trusts nothing it reads
 * back from Terraform state. A hook input edited into a shell payload, or a triggers_replace
 * edited to replace a teardown hook, is refused before anything runs; a truncated state, or a
 * state that lists nothing while Docker still holds the environment, stops the destroy before
 * it deletes anything. Then the restored state destroys cleanly.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { EnvironmentConfig, REPO_ROOT, localDir } from '../../stacks/config';
import { outputsFile, readSecretFile } from '../../ops';
import * as h from '../harness';

const ENV = 'trust';
const INFRA = `${ENV}-infra`;
const SECRETS = `${ENV}-secrets`;
/** The file the injected command would create if any value from state reached a shell. */
const MARKER = path.join(os.tmpdir(), `pgvault-trust-pwned-${process.pid}`);
const PAYLOAD = `x"; touch ${MARKER}; echo "`;

const stateFile = (stack: string) => path.join(localDir(ENV), 'state', `${stack}.tfstate`);
const stackDir = (stack: string) => path.join(REPO_ROOT, 'cdktf.out', 'stacks', stack);

/** Edits a local state file as someone with write access to it would (and bumps its serial, as Terraform expects). */
function editState(stack: string, edit: (state: any) => void): void {
  const state = JSON.parse(fs.readFileSync(stateFile(stack), 'utf8'));
  edit(state);
  state.serial += 1;
  fs.writeFileSync(stateFile(stack), JSON.stringify(state, null, 2));
}

/** The terraform_data resource of a hook (its construct id, e.g. "teardown") in a state. */
function hookOf(state: any, id: string): any {
  const r = state.resources.find((x: any) => x.type === 'terraform_data' && x.name.startsWith(`${id}_`));
  assert.ok(r, `the state holds the ${id} hook`);
  return r;
}

/** Terraform itself in a stack's working directory, as a plain `cdktf`/`terraform` user runs it. */
function terraform(stack: string, args: string[]): { status: number | null; output: string } {
  const r = spawnSync(process.env.TERRAFORM_BINARY_NAME || 'terraform', [...args, '-input=false', '-no-color'], {
    cwd: stackDir(stack),
    encoding: 'utf8',
    timeout: 180_000,
    env: { ...process.env, TF_IN_AUTOMATION: '1', TF_VAR_vault_db_setup_password: readSecretFile(h.loadEnvironment(ENV).secretsEngine.setupPasswordFile, 'setup password') },
  });
  return { status: r.status, output: `${r.stdout}\n${r.stderr}` };
}

/** `npm run destroy -- trust` without the build step: the CLI as the npm script runs it. */
function cliDestroy(): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [path.join(REPO_ROOT, 'dist', 'scripts', 'cli.js'), 'destroy', ENV], { cwd: REPO_ROOT, env: process.env, encoding: 'utf8', timeout: 300_000 });
  return { status: r.status, stderr: r.stderr };
}

function dockerNames(kind: 'ps' | 'volume' | 'network'): string[] {
  const args = kind === 'ps' ? ['ps', '-a', '--format', '{{.Names}}'] : [kind, 'ls', '--format', '{{.Name}}'];
  return h.docker(...args, '--filter', `name=pgvault-${ENV}`).split('\n').filter(Boolean).sort();
}

describe('the deploy trusts nothing it reads from state', () => {
  let env: EnvironmentConfig;
  /** Copies of the clean states, put back by `restore`. */
  const clean = new Map<string, string>();

  function restore(): void {
    for (const [stack, text] of clean) fs.writeFileSync(stateFile(stack), text, { mode: 0o600 });
  }

  /** The environment is untouched: its containers, volume, network, local files and states are there. */
  function assertIntact(): void {
    assert.deepEqual(dockerNames('ps'), [`pgvault-${ENV}-postgres`, `pgvault-${ENV}-vault`], 'the containers are still there');
    assert.ok(dockerNames('volume').includes(`pgvault-${ENV}-postgres-data`), 'the data volume is still there');
    assert.deepEqual(dockerNames('network'), [`pgvault-${ENV}`]);
    for (const f of [outputsFile(ENV), env.vault.tokenFile, env.postgres.adminPasswordFile, stateFile(INFRA), stateFile(SECRETS)]) {
      assert.ok(fs.existsSync(f), `${f} is still there`);
    }
    assert.equal(fs.existsSync(MARKER), false, 'no injected command ran');
  }

  before(
    async () => {
      h.requireToolchain();
      h.scratchEnvironment(
        'local',
        (doc) => {
          doc.docker.postgresHostPort = 15530;
          doc.docker.vaultHostPort = 18330;
        },
        ENV,
      );
      env = h.loadEnvironment(ENV);
      fs.rmSync(MARKER, { force: true });
      await h.destroy(ENV); // whatever an earlier run left
      const { seconds } = await h.timed(() => h.deploy(ENV));
      console.log(`# figure: deploy of ${ENV}: ${seconds.toFixed(1)}s`);
      for (const stack of [INFRA, SECRETS]) clean.set(stack, fs.readFileSync(stateFile(stack), 'utf8'));
    },
    { timeout: 600_000 },
  );

  after(
    async () => {
      if (fs.existsSync(localDir(ENV))) {
        restore();
        await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
      }
      fs.rmSync(MARKER, { force: true });
    },
    { timeout: 600_000 },
  );

  test('fails when a hook input in state holds a shell payload: destroy and deploy refuse, a plain terraform destroy runs nothing', { timeout: 600_000 }, async () => {
    editState(SECRETS, (state) => {
      for (const id of ['teardown', 'revoke-leases', 'outputs-file', 'bootstrap', 'outputs-writer']) hookOf(state, id).instances[0].attributes.input.value.environment = PAYLOAD;
    });
    const tamperedWith = (command: string) => (e: any) => {
      assert.equal(e.code, 'STATE_HOOK_TAMPERED', e.message);
      assert.match(e.message, new RegExp(`^the state of ${SECRETS} \\(${stateFile(SECRETS).replace(/[.]/g, '\\.')}\\) was changed outside Terraform: the hook terraform_data\\.\\S+ has input\\.environment `));
      assert.ok(e.message.includes(JSON.stringify(PAYLOAD)), 'it shows the value found, quoted');
      assert.match(e.message, new RegExp(`The ${command} of ${ENV} refused to start; nothing ran and nothing was changed`));
      assert.match(e.message, /state rm terraform_data\./);
      return true;
    };
    await assert.rejects(h.destroy(ENV), tamperedWith('destroy'));
    assertIntact();
    await assert.rejects(h.deploy(ENV), tamperedWith('deploy'));
    assertIntact();

    // Terraform on its own (cdktf destroy, terraform destroy): the literal command runs, and the script refuses the state's input.
    const hook = hookOf(JSON.parse(fs.readFileSync(stateFile(SECRETS), 'utf8')), 'outputs-file');
    const direct = terraform(SECRETS, ['destroy', '-auto-approve', '-refresh=false', `-target=terraform_data.${hook.name}`]);
    assert.notEqual(direct.status, 0, `terraform destroy of the hook succeeded:\n${direct.output}`);
    assert.match(direct.output, /Executing: \["node" "--" "\.\.\/\.\.\/\.\.\/dist\/ops\/hooks\.js" "remove-outputs" "trust"\]/, 'the argument vector is the configuration\'s literals');
    assert.match(direct.output, /remove-outputs failed: hook remove-outputs for "trust" refused: the state's input names the environment "x\\"; touch /);
    assertIntact();

    // Put back, the state deploys again (the failed terraform destroy above wrote a new serial).
    restore();
    await h.deploy(ENV);
    assertIntact();
    for (const stack of [INFRA, SECRETS]) clean.set(stack, fs.readFileSync(stateFile(stack), 'utf8'));
  });

  test('fails when triggers_replace of a hook with a destroy action is edited in state: deploy refuses, Terraform replaces nothing', { timeout: 600_000 }, async () => {
    editState(SECRETS, (state) => {
      hookOf(state, 'teardown').instances[0].attributes.triggers_replace = { value: 'replace me', type: 'string' };
    });
    await assert.rejects(h.deploy(ENV), (e: any) => e.code === 'STATE_HOOK_TAMPERED' && /has triggers_replace "replace me" there, but the configuration says null/.test(e.message));
    const plan = terraform(SECRETS, ['plan', '-refresh=false', '-detailed-exitcode']);
    assert.equal(plan.status, 0, `Terraform plans no change (ignore_changes on triggers_replace), so no teardown on a live system:\n${plan.output}`);
    assert.match(plan.output, /No changes/);
    restore();
    assertIntact();
  });

  test(`fails closed when ${INFRA}.tfstate is truncated: destroy exits non-zero, names the file, and deletes nothing`, { timeout: 600_000 }, async () => {
    const text = clean.get(INFRA)!;
    fs.writeFileSync(stateFile(INFRA), text.slice(0, Math.floor(text.length / 2)));
    const secretsBefore = fs.readFileSync(stateFile(SECRETS), 'utf8');
    const cli = cliDestroy();
    assert.equal(cli.status, 1, `the destroy exits 1:\n${cli.stderr}`);
    assert.match(cli.stderr, new RegExp(`error: STATE_UNREADABLE: the state of ${INFRA} \\(${stateFile(INFRA).replace(/[.]/g, '\\.')}\\) cannot be read: not valid JSON`));
    assert.match(cli.stderr, /Nothing was run or deleted/);
    assert.match(cli.stderr, new RegExp(`Terraform's previous copy is ${stateFile(INFRA).replace(/[.]/g, '\\.')}\\.backup|restore the state from your backup`));
    assert.doesNotMatch(cli.stderr, /nothing deployed/);
    await assert.rejects(h.destroy(ENV), (e: any) => e.code === 'STATE_UNREADABLE');
    assertIntact();
    assert.equal(fs.readFileSync(stateFile(SECRETS), 'utf8'), secretsBefore, `the ${SECRETS} state is untouched`);
    restore();
  });

  test('fails closed when the state lists nothing while Docker holds the environment: .local/trust and its keys are kept', { timeout: 600_000 }, async () => {
    const aside = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-trust-state-'));
    try {
      for (const stack of [INFRA, SECRETS]) fs.renameSync(stateFile(stack), path.join(aside, `${stack}.tfstate`));
      await assert.rejects(h.destroy(ENV), (e: any) => {
        assert.equal(e.code, 'DESTROY_DOCKER_LEFT', e.message);
        assert.match(e.message, new RegExp(`^the state of ${ENV} lists nothing deployed, but Docker still has containers pgvault-${ENV}-postgres, pgvault-${ENV}-vault; volumes [^;]*pgvault-${ENV}-postgres-data[^;]*; networks pgvault-${ENV} of ${ENV}\\. `));
        assert.ok(e.message.includes(`${localDir(ENV)} was kept`));
        return true;
      });
      for (const f of [outputsFile(ENV), env.vault.tokenFile, env.postgres.adminPasswordFile, env.secretsEngine.setupPasswordFile]) assert.ok(fs.existsSync(f), `${f} is kept`);
    } finally {
      for (const stack of [INFRA, SECRETS]) fs.renameSync(path.join(aside, `${stack}.tfstate`), stateFile(stack));
      fs.rmSync(aside, { recursive: true, force: true });
    }
    assertIntact();
  });

  test('with its state intact, the destroy removes the environment, then its local directory', { timeout: 600_000 }, async () => {
    const { seconds } = await h.timed(() => h.destroy(ENV));
    console.log(`# figure: destroy of ${ENV}: ${seconds.toFixed(1)}s`);
    assert.deepEqual(dockerNames('ps'), []);
    assert.deepEqual(dockerNames('volume'), []);
    assert.deepEqual(dockerNames('network'), []);
    assert.equal(fs.existsSync(localDir(ENV)), false, `${localDir(ENV)} is gone`);
    assert.equal(fs.existsSync(MARKER), false);
  });
});
