// The README's demo: 20 virtual clients train an MLP on real MNIST; client 0 (which also holds backdoored copies of
// its images) asks through its SDK to be forgotten; every unlearning method runs from the same trained state and the
// run ends with the side-by-side table, report.json and the plots in out/demo. A second exact retrain with other
// seeds (--noise-floor) gives the noise floor the fidelity column divides by. The coordinators' working histories
// (out/demo/data) are deleted at the end; pass --keep-data to keep them. Extra arguments go to the simulation.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('../packages/sim/dist/cli.js', import.meta.url));
const args = [
  '--dataset', 'mnist', '--model', 'mlp', '--clients', '20', '--rounds', '10', '--local-epochs', '1',
  '--partition', 'iid', '--history-interval', '2', '--calibration-ratio', '0.5',
  '--forget', '0', '--backdoor', '--methods', 'federaser,replay,retrain,rollback', '--tune-rounds', '0,1', '--noise-floor',
  '--out', 'out/demo',
  ...process.argv.slice(2),
];
const res = spawnSync(process.execPath, [cli, ...args], { stdio: 'inherit' });
process.exit(res.status ?? 1);
