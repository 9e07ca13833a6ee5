/**
 * Every Vault call keeps to its caller's time (issue 21, item 3): close({timeoutMillis}) of a
 * runtime on a 3-node cluster whose nodes are all down (one refuses connections, two accept
 * and never answer) finishes within its budget. Vault is FakeVaultServer on 127.0.0.1.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as net from 'node:net';
import { CredentialRuntime } from '@pgvault/runtime';
import { FakeVaultServer, fakeConfig } from './fakes';

/** A port nothing listens on: connections are refused. */
async function refusedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}


test('close({timeoutMillis}) on a 3-node cluster with every node down finishes within its budget', { timeout: 90_000 }, async () => {
  const first = await new FakeVaultServer().listen();
  const silent = await new FakeVaultServer().listen();
  silent.override = () => 'hang';
  const refused = await refusedPort();
  const rt = await CredentialRuntime.start(fakeConfig([first.address, silent.address, `http://127.0.0.1:${refused}`], ['readonly', 'readwrite']), { startTimeoutMillis: 5000 });
  // Every node goes down: the one that served now accepts and never answers.
  first.override = () => 'hang';
  const budgetMillis = 2000;
  const t0 = Date.now();
  const r = await rt.close({ timeoutMillis: budgetMillis });
  const took = Date.now() - t0;
  console.log(`# figure: close({timeoutMillis: ${budgetMillis}}) with 3 Vault nodes down (2 silent, 1 refusing): ${took} ms`);
  assert.ok(took <= budgetMillis + 500, `close() took ${took} ms against a budget of ${budgetMillis} ms`);
  assert.equal(r.unrevokedLeases, 2);
  assert.equal(r.tokenRevoked, false);
  await first.close();
  await silent.close();
});
