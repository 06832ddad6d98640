import { createRequire } from 'node:module';
import path from 'node:path';
const require = createRequire(import.meta.url);
const tf = await import('@tensorflow/tfjs');
const wasm = await import('@tensorflow/tfjs-backend-wasm');
const dir = path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json'));
wasm.setWasmPaths(path.join(dir, 'dist') + path.sep);
await tf.setBackend('wasm');
const missing = new Set();
const m = tf.sequential({layers:[
 tf.layers.conv2d({inputShape:[28,28,1],filters:4,kernelSize:5,activation:'relu',padding:'same'}),
 tf.layers.maxPooling2d({poolSize:2}),
 tf.layers.conv2d({filters:8,kernelSize:5,activation:'relu',padding:'same'}),
 tf.layers.maxPooling2d({poolSize:2}),
 tf.layers.flatten(), tf.layers.dense({units:16,activation:'relu'}), tf.layers.dense({units:10,activation:'softmax'})]});
const orig = tf.getKernel;
const x = tf.randomNormal([4,28,28,1]); const y = tf.oneHot(tf.tensor1d([1,2,3,4],'int32'),10);
for (let i=0;i<10;i++){
 try {
  const g = tf.variableGrads(()=>tf.losses.softmaxCrossEntropy(y, m.apply(x)));
  console.log('ok', Object.keys(g.grads)); break;
 } catch(e){ console.log('ERR', e.message.slice(0,200)); break; }
}
