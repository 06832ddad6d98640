import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Progress } from './progress.js';

function capture(): { out: { write(s: string): boolean; isTTY: boolean }; lines: () => string[] } {
  let text = '';
  return {
    out: { write: (s: string) => ((text += s), true), isTTY: false },
    lines: () => text.split('\n').filter(Boolean),
  };
}

test('progress lines in a log: one form for every line, nothing before a total is known, no line twice', () => {
  const c = capture();
  const p = new Progress(false, c.out);
  p.start('training', 2, 'round');
  p.tick({ acc: 0.5 });
  p.tick({ acc: 0.75 });
  p.stop();
  // A forget job: total unknown at start, a 'starting' event with total 0, the same step reported twice, then the
  // tuning phase with its own total.
  p.start('federaser +1', 0, 'step');
  p.update(0, 0, {}, 'starting');
  p.update(0, 2, {}, 'calibrating stored round 1 with 3 clients');
  p.update(0, 2, {}, 'calibrating stored round 1 with 3 clients');
  p.update(1, 2, {}, 'calibrating stored round 3 with 3 clients');
  p.update(0, 1, {}, 'tuning round 1 of 1');
  p.stop();
  p.stop();
  const lines = c.lines();
  assert.deepEqual(lines.map((l) => l.replace(/in \d+\.\d s$/, 'in S s')), [
    'training 0/2 rounds',
    'training 1/2 rounds acc 0.5000',
    'training 2/2 rounds acc 0.7500',
    'training done in S s',
    'federaser +1 0/2 steps — calibrating stored round 1 with 3 clients',
    'federaser +1 1/2 steps — calibrating stored round 3 with 3 clients',
    'federaser +1 0/1 steps — tuning round 1 of 1',
    'federaser +1 done in S s',
  ]);
});

test('quiet progress prints nothing', () => {
  const c = capture();
  const p = new Progress(true, c.out);
  p.start('training', 2, 'round');
  p.tick();
  p.log('a line');
  p.stop();
  assert.deepEqual(c.lines(), []);
});
