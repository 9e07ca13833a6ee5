import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { mapBounded, median, percentile, perLease, ratesAroundEvents, ratio } from '../../bench/stats';

test('percentile is the nearest rank of a sorted list', { timeout: 5_000 }, () => {
  const s = Array.from({ length: 100 }, (_, i) => i + 1);
  assert.equal(percentile(s, 50), 50);
  assert.equal(percentile(s, 99), 99);
  assert.equal(percentile(s, 100), 100);
  assert.equal(percentile(s, 0), 1);
  assert.equal(percentile([7], 99), 7);
  assert.ok(Number.isNaN(percentile([], 50)));
});

test('median of an odd and an even count, in any order', { timeout: 5_000 }, () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.ok(Number.isNaN(median([])));
});

test('ratio prints a/b, and n/a when b is not positive', { timeout: 5_000 }, () => {
  assert.equal(ratio(3, 2), '1.50x');
  assert.equal(ratio(1, 3, 3), '0.333x');
  assert.equal(ratio(1, 0), 'n/a');
  assert.equal(ratio(NaN, 1), 'n/a');
});

test('mapBounded keeps the order, never exceeds its concurrency, and each worker runs one call at a time', { timeout: 5_000 }, async () => {
  let inFlight = 0;
  let most = 0;
  const busy = new Set<number>();
  const out = await mapBounded(20, 3, async (i, worker) => {
    assert.ok(!busy.has(worker), `worker ${worker} is not already busy`);
    busy.add(worker);
    most = Math.max(most, ++inFlight);
    await new Promise((r) => setTimeout(r, 1 + (i % 3)));
    inFlight--;
    busy.delete(worker);
    return i * 2;
  });
  assert.deepEqual(out, Array.from({ length: 20 }, (_, i) => i * 2));
  assert.equal(most, 3);
});

test('mapBounded stops starting calls after a failure and rejects with it', { timeout: 5_000 }, async () => {
  let started = 0;
  await assert.rejects(
    mapBounded(100, 2, async (i) => {
      started++;
      if (i === 3) throw new Error('boom');
      await new Promise((r) => setTimeout(r, 1));
    }),
    /boom/,
  );
  assert.ok(started < 10, `few calls started after the failure (${started})`);
});

test('rates around events: the window centred on each event, and the median of the windows away from all events', { timeout: 5_000 }, () => {
  // 100 completions per second from 0 to 10 s, but only 20 in the second around t = 5 s.
  const completions: number[] = [];
  for (let t = 0; t < 10_000; t += 10) if (t < 4_500 || t >= 5_500 || t % 50 === 0) completions.push(t);
  const { around, steady } = ratesAroundEvents(completions, [5_000], 0, 10_000);
  assert.deepEqual(around, [20]);
  assert.equal(steady, 100, 'the windows 4-5 s and 5-6 s overlap the event and are left out');
  assert.deepEqual(ratesAroundEvents([], [], 0, 500), { around: [], steady: NaN }, 'no whole window: no steady rate');
});

test('perLease: revocations per second and milliseconds per lease', { timeout: 5_000 }, () => {
  assert.deepEqual(perLease(4000, 8), { perSecond: 500, msPerLease: 2 });
  assert.ok(Number.isNaN(perLease(0, 1).msPerLease));
});
