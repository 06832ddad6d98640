import { spawn, type ChildProcess } from 'node:child_process';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The coordinator's CLI (packages/coordinator/dist/cli.js), from this file's place in packages/bench/dist/fleet/. */
export const COORDINATOR_CLI = fileURLToPath(new URL('../../../coordinator/dist/cli.js', import.meta.url));

/** A free loopback TCP port (closed again before it is returned: the caller binds it next). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** One `fedunlearn serve` child process. */
export interface Replica {
  readonly proc: ChildProcess;
  readonly port: number;
  /** What it wrote to stderr so far (the last 20 kB), for error messages. */
  stderr(): string;
  /** SIGKILL, then resolves once the process has exited. */
  kill(): Promise<void>;
}

/**
 * Spawns `fedunlearn serve` with `args` (the caller gives the store, Redis, port and model flags) and resolves once it
 * prints "listening on "; rejects with its stderr if it exits first or does not listen within `timeoutMs`.
 */
export async function spawnReplica(port: number, args: string[], timeoutMs = 60_000): Promise<Replica> {
  const proc = spawn(process.execPath, [COORDINATOR_CLI, 'serve', '--port', String(port), ...args], { env: { ...process.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-20_000)));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const replica: Replica = {
    proc,
    port,
    stderr: () => err,
    kill: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    },
  };
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`replica on port ${port}: no "listening" within ${timeoutMs} ms; stderr:\n${err}`)), timeoutMs);
      createInterface({ input: proc.stdout! }).on('line', (line) => {
        if (line.startsWith('listening on ')) {
          clearTimeout(timer);
          resolve();
        }
      });
      proc.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`replica on port ${port} exited (${code ?? signal}) before listening; stderr:\n${err}`));
      });
    });
  } catch (e) {
    await replica.kill();
    throw e;
  }
  return replica;
}

/**
 * A round-robin TCP balancer on loopback (as nginx in front of the websocket transport, no sticky sessions): each new
 * connection goes to the next of `backends()` that accepts it. The backend set is read per connection, so a caller can
 * change which replicas take new clients between two reconnects.
 */
export class Balancer {
  private next = 0;
  private readonly live = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async listen(backends: () => number[]): Promise<Balancer> {
    let self: Balancer | null = null;
    const server = createServer((down: Socket) => self!.route(down, backends()));
    const port = await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port));
    });
    self = new Balancer(server, port);
    return self;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private route(down: Socket, backends: number[]): void {
    down.pause();
    this.live.add(down);
    down.once('close', () => this.live.delete(down));
    const tryAt = (k: number) => {
      if (k >= backends.length) return down.destroy();
      const up = connect(backends[(this.next + k) % backends.length]!, '127.0.0.1');
      this.live.add(up);
      up.once('close', () => this.live.delete(up));
      let linked = false;
      up.once('connect', () => {
        linked = true;
        this.next = (this.next + k + 1) % backends.length;
        down.pipe(up).pipe(down);
        down.resume();
        down.once('close', () => up.destroy());
        up.once('close', () => down.destroy());
      });
      up.on('error', () => {
        up.destroy();
        // A backend that refuses is skipped; one that fails later drops this connection (the client reconnects).
        if (!linked) tryAt(k + 1);
        else down.destroy();
      });
      down.on('error', () => up.destroy());
    };
    tryAt(0);
  }

  /** Stops listening and drops every proxied connection. */
  async close(): Promise<void> {
    for (const s of this.live) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
