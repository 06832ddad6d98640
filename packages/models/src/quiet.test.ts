import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

const BANNER = /install our node backend/;
const index = new URL('./index.js', import.meta.url).href;

/** stderr of a fresh Node process running `body` (an ES module with tfjs and this package imported). */
function stderrOf(body: string): string {
  const src = `import * as tf from '@tensorflow/tfjs'; import * as models from '${index}'; ${body}`;
  const res = spawnSync(process.execPath, ['--input-type=module', '-e', src], { encoding: 'utf8', cwd: new URL('.', import.meta.url).pathname });
  assert.equal(res.status, 0, res.stderr);
  return res.stderr;
}

test('the install-tfjs-node banner: printed by plain cpu use, not by a built-in definition or after silenceTfjsNodeAdvice', () => {
  // The control: tfjs still prints it, so the two cases below show the silencing, not a tfjs that stopped printing.
  assert.match(stderrOf(`tf.tensor([1, 2]).dispose();`), BANNER);
  assert.doesNotMatch(stderrOf(`models.builtInDefinition('mlp', { inputShape: [784], numClasses: 10, seed: 1 }); tf.tensor([1]).dispose();`), BANNER);
  // Other tfjs warnings are not silenced.
  const after = stderrOf(`models.silenceTfjsNodeAdvice(); tf.tensor([1]).dispose(); tf.backend_util.warn('another warning');`);
  assert.doesNotMatch(after, BANNER);
  assert.match(after, /another warning/);
});
