// When a mounted daemon gives memory back (src/cli/mount.ts, idleCollector): called every 2 s with the
// request count, it collects once no request came since the last call and the resident memory grew
// by 16 MiB since the last collection.
import test from 'ava';
import { idleCollector } from '../src/cli/mount.js';

const MiB = 1 << 20;

test('collects when idle after growth, not while requests come, and not again without new growth', (t) => {
  let rss = 50 * MiB;
  let collections = 0;
  const tick = idleCollector(() => {
    collections++;
    rss -= 12 * MiB; // what the collection gave back
  }, () => rss);
  tick(10);
  rss += 30 * MiB; // a burst of requests
  tick(5000);
  t.is(collections, 0, 'requests came since the last tick');
  tick(9000);
  t.is(collections, 0, 'still busy');
  tick(9000);
  t.is(collections, 1, 'idle after 30 MiB of growth');
  tick(9000);
  tick(9000);
  t.is(collections, 1, 'nothing grew since');
  rss += 10 * MiB;
  tick(9500);
  tick(9500);
  t.is(collections, 1, '10 MiB of growth since the collection is not enough');
  rss += 10 * MiB;
  tick(9600);
  tick(9600);
  t.is(collections, 2, '20 MiB is');
});

test('an idle daemon whose memory shrank by itself measures growth from there', (t) => {
  let rss = 80 * MiB;
  let collections = 0;
  const tick = idleCollector(() => collections++, () => rss);
  rss = 60 * MiB; // V8 gave memory back by itself
  tick(1);
  tick(1);
  rss = 70 * MiB;
  tick(2);
  tick(2);
  t.is(collections, 0, '10 MiB above the lower mark');
  rss = 77 * MiB;
  tick(3);
  tick(3);
  t.is(collections, 1);
});
