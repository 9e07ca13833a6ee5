/**
 * Secret zero, end to end on `zero` (a copy of `local` with its own name and ports, token TTLs
 * of seconds, secretIdNumUses 1, secretIdBoundCidrs, and appAccess.jwt with a key pair this test
 * makes): JWT login of the server (four bad tokens refused, a rotated token used at the next
 * re-login), response-wrapped secret_ids (a second unwrap refused as possible theft, an expired
 * one refused), secret_ids that serve one login, the docker path leaving no secret_id behind, a
 * login from outside the bound CIDRs refused, and `bao agent` with jwt auto-auth.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { jwtLogin, VaultSession } from '@pgvault/runtime';
import { REPO_ROOT } from '../../stacks/config';
import { destroySecretIdAccessor, secretIdAccessors } from '../../ops/vault/vault-admin';
import { outputsFile } from '../../ops';
import * as h from '../harness';

const ENV = 'zero';
const PG_PORT = 15580;
const VAULT_PORT = 18380;
const VAULT = `http://127.0.0.1:${VAULT_PORT}`;
const AUDIENCE = 'pgvault';
const SUBJECT = 'system:serviceaccount:shop:api';
const TOKEN_TTL = 4;
const TOKEN_MAX_TTL = 8;
const SERVE = path.join(REPO_ROOT, 'dist', 'api', 'serve.js');
const SECRET_ID = path.join(REPO_ROOT, 'dist', 'ops', 'vault', 'secret-id.js');
const T = (seconds: number) => ({ timeout: seconds * 1000 });

let work: string;
let issuer: crypto.KeyObject;
let other: crypto.KeyObject;

const b64 = (v: object | Buffer) => (Buffer.isBuffer(v) ? v : Buffer.from(JSON.stringify(v))).toString('base64url');

/** An ES256 JWT signed with `key`: what a Kubernetes projected token or a CI job's OIDC token is. */
function mint(claims: Record<string, unknown>, key = issuer): string {
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: 'ES256', typ: 'JWT' })}.${b64({ iss: 'https://issuer.test', aud: AUDIENCE, sub: SUBJECT, iat: now, nbf: now - 5, exp: now + 600, jti: crypto.randomUUID(), ...claims })}`;
  return `${body}.${b64(crypto.sign('sha256', Buffer.from(body), { key, dsaEncoding: 'ieee-p1363' }))}`;
}

function writeSecret(name: string, value: string): string {
  const f = path.join(work, name);
  fs.writeFileSync(f, value + '\n', { mode: 0o600 });
  return f;
}

interface Server {
  readonly port: number;
  readonly log: string;
  output(): string;
  exited: Promise<number | null>;
  stop(): Promise<void>;
}

let nextPort = 18381;
function serve(name: string, env: NodeJS.ProcessEnv): Server {
  const port = nextPort++;
  assert.ok(port <= 18389, 'the test keeps to its own ports');
  const log = path.join(work, `${name}.log`);
  const fd = fs.openSync(log, 'w', 0o600);
  const child = spawn(process.execPath, [SERVE, ENV], {
    env: { ...process.env, PORT: String(port), LOG_LEVEL: 'info', PGVAULT_START_TIMEOUT_SECONDS: '20', PGVAULT_LOGIN_REFUSED_EXIT_SECONDS: '30', ...env },
    stdio: ['ignore', fd, fd],
  });
  fs.closeSync(fd);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    port,
    log,
    output: () => fs.readFileSync(log, 'utf8'),
    exited,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(t);
    },
  };
}

async function items(port: number): Promise<number> {
  const r = await fetch(`http://127.0.0.1:${port}/items?limit=1`, { signal: AbortSignal.timeout(3000) });
  await r.arrayBuffer();
  return r.status;
}

async function serving(s: Server): Promise<void> {
  await h.waitFor(`the server on port ${s.port} to serve /items (log: ${s.log})`, async () => (await items(s.port).catch(() => 0)) === 200, 30_000);
}

/** The server must stop by itself with exit 1: returns its one fatal line. */
async function refusedToStart(s: Server): Promise<string> {
  const code = await Promise.race([s.exited, new Promise((r) => setTimeout(() => r('still running'), 25_000))]);
  if (code === 'still running') await s.stop();
  assert.equal(code, 1, `the server should exit 1; log: ${s.output().slice(-1500)}`);
  const fatal = s.output().split('\n').filter((l) => l.includes('"level":60'));
  assert.equal(fatal.length, 1, `one fatal line; log: ${s.output().slice(-1500)}`);
  return JSON.parse(fatal[0]).msg as string;
}

function secretIdCommand(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [SECRET_ID, ENV, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function noSecretIn(output: string, secrets: string[]): void {
  for (const s of secrets) assert.ok(!output.includes(s), 'a token, JWT or secret_id appears in the output');
}

describe('secret zero: JWT, wrapped secret_ids, secret_id hygiene', () => {
  before(async () => {
    h.requireToolchain();
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-zero-'));
    const pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    issuer = pair.privateKey;
    other = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    // Only the public key is written anywhere; the private key stays in this process.
    const pub = path.join(work, 'issuer.pem');
    fs.writeFileSync(pub, pair.publicKey.export({ type: 'spki', format: 'pem' }));
    h.scratchEnvironment('local', (doc) => {
      doc.description = 'A copy of local for the secret-zero test: own name and ports, token TTLs of seconds, one-use secret_ids, JWT login.';
      doc.docker.postgresHostPort = PG_PORT;
      doc.docker.vaultHostPort = VAULT_PORT;
      doc.appAccess = {
        tokenTtlSeconds: TOKEN_TTL,
        tokenMaxTtlSeconds: TOKEN_MAX_TTL,
        secretIdNumUses: 1,
        // Loopback and Docker's private ranges (where the host's requests reach the container
        // from), plus TEST-NET-1, which no address here has: a secret_id bound to it is refused.
        secretIdBoundCidrs: ['127.0.0.1/32', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '192.0.2.0/24'],
        jwt: { publicKeyFiles: [pub], boundAudiences: [AUDIENCE], boundSubject: SUBJECT, userClaim: 'sub' },
      };
    }, ENV);
    await h.destroy(ENV);
    const d = await h.timed(() => h.deploy(ENV));
    console.log(`# figure: deploy of ${ENV} (jwt mount and role included): ${d.seconds.toFixed(1)}s`);
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
    if (work) fs.rmSync(work, { recursive: true, force: true });
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('JWT: the server starts from a JWT file and serves /items; a token rotated in the file is used at the next re-login', T(90), async () => {
    const first = mint({});
    const file = writeSecret('jwt', first);
    const s = serve('jwt', { PGVAULT_AUTH: 'jwt', PGVAULT_JWT_FILE: file });
    const written: string[] = [first];
    try {
      await serving(s);
      // A token with a bad signature replaces it: the next re-login reads it, and Vault refuses it.
      const bad = mint({}, other);
      written.push(bad);
      fs.writeFileSync(file, bad);
      await h.waitFor('a re-login refused with the bad token', async () => /re-login failed: VAULT_HTTP: Vault auth\/jwt\/login failed \(HTTP 400: [^)]*signature/.test(s.output()), TOKEN_MAX_TTL * 2000);
      // The rotated good token: the next re-login uses it.
      const rotated = mint({});
      written.push(rotated);
      const before = s.output().length;
      fs.writeFileSync(file, rotated);
      await h.waitFor('a re-login with the rotated token', async () => s.output().slice(before).includes('Vault token replaced by a new JWT login'), 30_000);
      assert.equal(await items(s.port), 200);
    } finally {
      await s.stop();
    }
    noSecretIn(s.output(), written);
  });

  test('JWT: a wrong subject, a wrong audience, an expired token and a bad signature are each refused at start, with one clear line', T(90), async () => {
    const now = Math.floor(Date.now() / 1000);
    const bad: Record<string, string> = {
      'wrong subject': mint({ sub: 'system:serviceaccount:shop:intruder' }),
      'wrong audience': mint({ aud: 'someone-else' }),
      // Vault allows 150 s of expiration leeway by default: expired an hour ago.
      expired: mint({ iat: now - 7200, nbf: now - 7200, exp: now - 3600 }),
      'bad signature': mint({}, other),
    };
    const servers = Object.entries(bad).map(([what, jwt]) => ({ what, jwt, s: serve(`jwt-${what.replace(/ /g, '-')}`, { PGVAULT_AUTH: 'jwt', PGVAULT_JWT_FILE: writeSecret(`jwt-${what.replace(/ /g, '-')}`, jwt) }) }));
    for (const { what, jwt, s } of servers) {
      const line = await refusedToStart(s);
      console.log(`# ${what}: ${line}`);
      assert.match(line, /VAULT_LOGIN_REFUSED: .*refused the JWT login \(role [a-z-]+\).*PGVAULT_JWT_FILE/, what);
      noSecretIn(s.output(), [jwt]);
    }
  });

  test('wrapped: the server starts from a wrapped secret_id; a second server given the same file refuses to start as possible theft; an expired one is refused', T(120), async () => {
    const issued = secretIdCommand('--wrap-ttl', '60');
    assert.equal(issued.status, 0, issued.stderr);
    const lines = issued.stdout.split('\n').filter(Boolean);
    assert.equal(lines.length, 1, 'stdout: the wrapping token and nothing else');
    const token = lines[0];
    assert.match(issued.stderr, /wrapping token accessor: \S+/);
    assert.ok(!issued.stderr.includes(token), 'the token is not on stderr');
    const file = writeSecret('wrapped', token);
    const tokens = [token];
    const a = serve('wrapped-a', { PGVAULT_SECRET_ID_WRAPPED_FILE: file });
    try {
      await serving(a);
      const b = serve('wrapped-b', { PGVAULT_SECRET_ID_WRAPPED_FILE: file });
      const line = await refusedToStart(b);
      assert.match(line, /APP_WRAPPED_INVALID: .*used or expired; if not by you, it may have been stolen; check the audit log for its accessor/);
      noSecretIn(b.output(), [token]);
      // At its next re-login the first server finds the token it used itself: waiting, not theft.
      await h.waitFor('the first server waiting for a new wrapped file', async () => a.output().includes('APP_WRAPPED_WAITING'), TOKEN_MAX_TTL * 3000);
      assert.doesNotMatch(a.output(), /stolen/);
      // The orchestrator writes a fresh wrapped secret_id: the next re-login unwraps and uses it.
      const fresh = secretIdCommand('--wrap-ttl', '60');
      assert.equal(fresh.status, 0, fresh.stderr);
      tokens.push(fresh.stdout.trim());
      const before = a.output().length;
      fs.writeFileSync(file, fresh.stdout);
      await h.waitFor('a re-login with the fresh wrapped secret_id', async () => a.output().slice(before).includes('Vault token replaced'), 20_000);
      assert.equal(await items(a.port), 200);
    } finally {
      await a.stop();
    }
    noSecretIn(a.output(), tokens);
    assert.equal(secretIdCommand('--app', 'someone-else').status, 2, '--app names the one app of the environment');

    const short = secretIdCommand('--wrap-ttl', '1');
    assert.equal(short.status, 0, short.stderr);
    await new Promise((r) => setTimeout(r, 3000));
    const late = serve('wrapped-expired', { PGVAULT_SECRET_ID_WRAPPED_FILE: writeSecret('wrapped-expired', short.stdout.trim()) });
    assert.match(await refusedToStart(late), /APP_WRAPPED_INVALID: .*used or expired/);
  });

  test('hygiene: with secretIdNumUses 1, a secret_id cannot log in twice', T(30), async () => {
    const issued = secretIdCommand('--app', JSON.parse(fs.readFileSync(outputsFile(ENV), 'utf8')).approle_role_name);
    assert.equal(issued.status, 0, issued.stderr);
    const secretId = issued.stdout.trim();
    const out = JSON.parse(fs.readFileSync(outputsFile(ENV), 'utf8'));
    const s1 = new VaultSession({ address: VAULT });
    await s1.login(out.approle_mount, out.approle_role_id, secretId);
    const s2 = new VaultSession({ address: VAULT });
    await assert.rejects(s2.login(out.approle_mount, out.approle_role_id, secretId), (e: any) => e.status === 400 && /invalid (role or )?secret id/i.test(e.message));
    await s1.revokeSelf();
  });

  test('hygiene: serve on docker destroys each secret_id it issued once its login used it (none left in the accessor list)', T(60), async () => {
    // Unused secret_ids of the tests before (the expired wrap's) go first: the list then shows serve's alone.
    for (const a of await secretIdAccessors(ENV)) await destroySecretIdAccessor(ENV, a);
    const s = serve('docker-path', {});
    try {
      await serving(s);
      const before = s.output().length;
      await h.waitFor('a re-login (a second issued secret_id)', async () => s.output().slice(before).includes('Vault token replaced'), TOKEN_MAX_TTL * 3000);
      const left = await secretIdAccessors(ENV);
      console.log(`# figure: secret_id accessors left after serve's logins: ${left.length}`);
      assert.deepEqual(left, []);
    } finally {
      await s.stop();
    }
  });

  test('hygiene: a secret_id bound to addresses this machine does not have is refused (source address outside the CIDRs)', T(30), async () => {
    const env = h.loadEnvironment(ENV);
    const out = JSON.parse(fs.readFileSync(outputsFile(ENV), 'utf8'));
    // Narrowed within the role's secretIdBoundCidrs to TEST-NET-1 (RFC 5737), which no interface here has.
    const res = await h.vaultAdmin(env, 'POST', `auth/${out.approle_mount}/role/${out.approle_role_name}/secret-id`, { cidr_list: ['192.0.2.1/32'] });
    try {
      const s = new VaultSession({ address: VAULT });
      await assert.rejects(s.login(out.approle_mount, out.approle_role_id, res.data.secret_id), (e: any) => {
        console.log(`# outside the bound CIDRs: ${e.message}`);
        return e.status !== undefined && e.status >= 400 && e.status < 500;
      });
    } finally {
      await destroySecretIdAccessor(ENV, res.data.secret_id_accessor).catch(() => undefined);
    }
  });

  test('bao agent with jwt auto-auth (remove_jwt_after_reading = false) renders credentials that log in', T(90), async () => {
    const out = JSON.parse(fs.readFileSync(outputsFile(ENV), 'utf8'));
    const env = h.loadEnvironment(ENV);
    const dir = path.join(work, 'agent');
    fs.mkdirSync(dir, { mode: 0o700 });
    const jwtFile = path.join(dir, 'token');
    fs.writeFileSync(jwtFile, mint({}), { mode: 0o600 });
    fs.writeFileSync(path.join(dir, 'readonly.ctmpl'), `{{ with secret "${out.mount_path}/creds/readonly" }}{{ .Data.username }}\n{{ .Data.password }}\n{{ end }}`);
    const hcl = [
      `vault {\n  address = "${VAULT}"\n}`,
      `auto_auth {\n  method "jwt" {\n    mount_path = "auth/${out.jwt_mount}"\n    config = {\n      path                     = "${jwtFile}"\n      role                     = "${out.jwt_role_name}"\n      remove_jwt_after_reading = false\n    }\n  }\n}`,
      `template {\n  source      = "${path.join(dir, 'readonly.ctmpl')}"\n  destination = "${path.join(dir, 'readonly.creds')}"\n  perms       = "0600"\n}`,
    ].join('\n\n');
    fs.writeFileSync(path.join(dir, 'agent.hcl'), hcl + '\n');
    const logFile = path.join(dir, 'agent.log');
    const agent = h.startProcess(process.env.VAULT_SERVER_BIN!, ['agent', `-config=${path.join(dir, 'agent.hcl')}`], { env: { HOME: dir }, logFile });
    try {
      const creds = path.join(dir, 'readonly.creds');
      await h.waitFor(`bao agent to render credentials (log: ${logFile})`, async () => fs.existsSync(creds) && fs.readFileSync(creds, 'utf8').split('\n').filter(Boolean).length === 2, 30_000);
      const [user, password] = fs.readFileSync(creds, 'utf8').split('\n');
      assert.equal(await h.tryLogin(env, user, password), 'ok');
      // Past the token's max TTL the agent logs in again with the same file: it is still there.
      await new Promise((r) => setTimeout(r, (TOKEN_MAX_TTL + 2) * 1000));
      assert.ok(fs.existsSync(jwtFile), 'the JWT file is kept (remove_jwt_after_reading = false)');
      assert.equal(agent.child.exitCode, null, `bao agent exited; see ${logFile}`);
      const logins = fs.readFileSync(logFile, 'utf8').match(/authentication successful/g)?.length ?? 0;
      console.log(`# figure: bao agent jwt logins over ${TOKEN_MAX_TTL + 2}s past the first render: ${logins}`);
      assert.ok(logins >= 2, `the agent logged in again with the kept file (${logins} logins); see ${logFile}`);
    } finally {
      await agent.stop();
    }
  });

  test('hygiene: with the role bound to addresses this machine does not have (secretIdBoundCidrs, tokenBoundCidrs), AppRole and JWT logins are refused', T(240), async () => {
    // Redeploy with the role-level bindings narrowed to TEST-NET-1: the host's requests reach Vault
    // from the Docker network's gateway, outside it.
    const envFile = path.join(process.env.PGVAULT_ENVIRONMENTS_DIR!, `${ENV}.json`);
    const doc = JSON.parse(fs.readFileSync(envFile, 'utf8'));
    doc.appAccess.secretIdBoundCidrs = ['192.0.2.0/24'];
    doc.appAccess.tokenBoundCidrs = ['192.0.2.0/24'];
    // The last test: the environment stays narrowed until the destroy.
    fs.writeFileSync(envFile, JSON.stringify(doc, null, 2));
    const d = await h.timed(() => h.deploy(ENV));
    console.log(`# figure: redeploy of ${ENV} with narrowed CIDRs: ${d.seconds.toFixed(1)}s`);
    const out = JSON.parse(fs.readFileSync(outputsFile(ENV), 'utf8'));
    const issued = secretIdCommand();
    assert.equal(issued.status, 0, issued.stderr);
    await assert.rejects(new VaultSession({ address: VAULT }).login(out.approle_mount, out.approle_role_id, issued.stdout.trim()), (e: any) => {
      console.log(`# AppRole, role bound elsewhere: ${e.message}`);
      return e.status === 400 || e.status === 403;
    });
    const jwtFile = writeSecret('jwt-cidr', mint({}));
    const s = new VaultSession({ address: VAULT });
    const refused = await s.loginWith(jwtLogin({ mount: out.jwt_mount, role: out.jwt_role_name, file: jwtFile })).then(
      // Bound token CIDRs may be checked at the token's use rather than at login.
      () => s.read(`${out.mount_path}/creds/readonly`).then(() => undefined, (e: any) => e),
      (e: any) => e,
    );
    assert.ok(refused && refused.status >= 400 && refused.status < 500, 'a JWT login (or its token) from outside tokenBoundCidrs is refused');
    console.log(`# JWT, tokens bound elsewhere: ${refused.message}`);
  });
});
