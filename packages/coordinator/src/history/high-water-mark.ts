import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileDurableSync } from './blob-files.js';
import { HistoryError } from './store.js';

/**
 * The high-water mark of what the history committed, kept outside the database: a small JSON file rewritten
 * atomically (temporary file, fsync, rename, directory fsync) after every commit. A database that lost committed
 * transactions (a cut or deleted WAL, a restored older copy, a missing history.db) is behind it, which open() refuses
 * to accept silently. It is written after the commit, so a crash in between leaves the mark behind the database,
 * which is harmless; it can never be ahead of a healthy database.
 */

export const HIGH_WATER_MARK_FILE = 'history.hwm.json';

export interface HighWaterMark {
  /** Model versions recorded (every commit adds at least one; none is ever deleted, erased ones keep their row). */
  models: number;
  /** The head after the commit, its round and lineage (for the message when the database is behind). */
  head: string;
  round: number;
  lineage: string;
  /** Unix ms of the commit. */
  at: number;
}

/** The database is behind the high-water mark: committed history was lost. */
export class HistoryLossError extends HistoryError {
  override name = 'HistoryLossError';
}

export function markFile(dataDir: string): string {
  return path.join(dataDir, HIGH_WATER_MARK_FILE);
}

/** The recorded mark, or null when there is none yet (a new data directory, or one from before the mark existed). */
export function readHighWaterMark(dataDir: string): HighWaterMark | null {
  const file = markFile(dataDir);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new HistoryError(`cannot read the history's high-water mark ${file}: ${(e as Error).message}`);
  }
  let m: Partial<HighWaterMark>;
  try {
    m = JSON.parse(text) as Partial<HighWaterMark>;
  } catch {
    throw new HistoryError(`the history's high-water mark ${file} is not valid JSON; if the database is known to be intact, delete the file`);
  }
  if (!Number.isInteger(m.models) || typeof m.head !== 'string' || !Number.isInteger(m.round) || typeof m.lineage !== 'string') {
    throw new HistoryError(`the history's high-water mark ${file} is malformed; if the database is known to be intact, delete the file`);
  }
  return m as HighWaterMark;
}

export function writeHighWaterMark(dataDir: string, mark: HighWaterMark): void {
  writeFileDurableSync(markFile(dataDir), new TextEncoder().encode(JSON.stringify(mark) + '\n'));
}

/**
 * Why the database (`models` rows, `hasHead`: whether the mark's head version is among them) is behind `mark`, or
 * null when it is not.
 */
export function behindMark(mark: HighWaterMark, db: { models: number; hasHead: boolean; head: { version: string; round: number } | null }): string | null {
  if (db.models >= mark.models && db.hasHead) return null;
  const held = db.head ? `${db.models} model versions, head ${db.head.version} at round ${db.head.round}` : 'no federation at all';
  return (
    `the history database is behind its high-water mark: the last commit recorded ${mark.models} model versions with head ${mark.head} at round ` +
    `${mark.round} (lineage ${mark.lineage}, ${new Date(mark.at).toISOString()}), the database holds ${held}. Committed history was lost ` +
    `(a truncated or deleted history.db-wal, or an older copy of history.db). Restore the data directory from a backup, or start with ` +
    `--accept-history-loss to continue from what the database holds (blobs of the lost commits are moved to quarantine/, not deleted)`
  );
}
