/**
 * Online mode's one difference: the pinned provider versions come from the Terraform
 * registry's download API instead of a Go build. No registry answers on this machine, so the
 * toolchain's fetch_provider runs here against a small stand-in for that API (a local HTTP
 * server, named as the fake it is): the zip is used only when its sha256 is the one the API gave.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { AddressInfo } from 'node:net';
import { REPO_ROOT } from '../../stacks/config';

/** A zip holding one file, made with python3's zipfile (as the toolchain reads it). */
function zipWith(dir: string, name: string, content: string): Buffer {
  const zip = path.join(dir, 'p.zip');
  const r = spawnSync('python3', ['-c', 'import sys,zipfile; z=zipfile.ZipFile(sys.argv[1],"w"); z.writestr(sys.argv[2], sys.argv[3]); z.close()', zip, name, content], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  return fs.readFileSync(zip);
}

/** fetch_provider from toolchain.sh against `registry`; resolves with its exit code and stderr. */
function fetchProvider(cache: string, registry: string, dest: string): Promise<{ code: number | null; stderr: string }> {
  const script = `. '${path.join(REPO_ROOT, 'toolchain', 'toolchain.sh')}'; CACHE='${cache}'; STEP=provider; fetch_provider hashicorp/vault 5.9.0 '${dest}'`;
  return new Promise((resolve) => {
    const child = spawn('bash', ['-c', script], { env: { ...process.env, PGVAULT_TOOLCHAIN_SOURCE_ONLY: '1', PGVAULT_TF_REGISTRY: registry }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

test('online, a provider is the pinned version from the registry API, and a zip whose sha256 differs is refused', { timeout: 120_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-online-'));
  const zip = zipWith(dir, 'terraform-provider-vault_v5.9.0_x5', 'the provider binary');
  let shasum = crypto.createHash('sha256').update(zip).digest('hex');
  const asked: string[] = [];
  // Fake of the registry's download API: one version, one zip.
  const registry = http.createServer((req, res) => {
    asked.push(req.url!);
    if (req.url === '/v1/providers/hashicorp/vault/5.9.0/download/linux/amd64') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ download_url: `http://127.0.0.1:${(registry.address() as AddressInfo).port}/p.zip`, shasum }));
    } else if (req.url === '/p.zip') res.end(zip);
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => registry.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(registry.address() as AddressInfo).port}`;
  try {
    const dest = path.join(dir, 'mirror', 'terraform-provider-vault_v5.9.0');
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    const ok = await fetchProvider(path.join(dir, 'cache'), url, dest);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(fs.readFileSync(dest, 'utf8'), 'the provider binary');
    assert.ok(fs.statSync(dest).mode & 0o100, 'executable');
    assert.deepEqual(asked, ['/v1/providers/hashicorp/vault/5.9.0/download/linux/amd64', '/p.zip'], 'exactly the pinned version was asked for');

    fs.rmSync(dest);
    shasum = '0'.repeat(64);
    const bad = await fetchProvider(path.join(dir, 'cache'), url, dest);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /does not match the registry's sha256 0{64}; do not use it/);
    assert.equal(fs.existsSync(dest), false, 'nothing was installed');
  } finally {
    await new Promise((r) => registry.close(r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
