import type { RoundOutcome } from '@fedunlearn/coordinator';
import type { WeightSpec } from '@fedunlearn/protocol';

/** Bench main process → coordinator child process. */
export type ToCoordinator =
  | {
      type: 'start';
      dir: string;
      topologyJson: string;
      specs: WeightSpec[];
      values: Float32Array;
      clients: number;
      historyInterval: number;
      retention: 'fp32' | 'fp16' | 'int8' | 'norms';
      roundDeadlineMs: number;
    }
  | { type: 'round' }
  | { type: 'stop' };

/** Coordinator child process → bench main process. */
export type FromCoordinator =
  | { type: 'ready'; url: string; rssMb: number }
  | {
      type: 'round';
      outcome: Pick<RoundOutcome, 'round' | 'durationMs' | 'timing' | 'cost' | 'attempts'> & {
        participants: number;
        missing: number;
        /** Missing clients counted by reason, with one example detail each. */
        missingReasons: Record<string, { count: number; example: string }>;
      };
      /** CPU time of the whole coordinator process (all its threads) during the round. */
      cpuMs: number;
      /** How late the coordinator's event loop ran during the round: heartbeats and hellos wait this long. */
      eventLoopDelayMs: { max: number; p99: number };
      rssMb: number;
    }
  | { type: 'roundFailed'; message: string; missingReasons: Record<string, { count: number; example: string }>; durationMs: number; cpuMs: number; eventLoopDelayMs: { max: number; p99: number }; rssMb: number }
  | { type: 'stopped'; peakRssMb: number; maxRssMb: number }
  | { type: 'failed'; message: string };
