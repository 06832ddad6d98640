import { statSync } from 'node:fs';

/**
 * A data directory the coordinator cannot use, said as such: the operator sees which directory and why, not a raw
 * `ENOTDIR: not a directory, mkdir '/srv/x/blobs'` or `SQLITE_CANTOPEN`.
 */
const REASONS: Record<string, string> = {
  EACCES: 'permission denied (the coordinator needs to create and write files there)',
  EPERM: 'operation not permitted (the coordinator needs to create and write files there)',
  ENOTDIR: 'a component of the path is a file, not a directory',
  EEXIST: 'a file of that name exists where a directory is needed',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'the disk quota is exhausted',
  EROFS: 'the file system is read-only',
  ENAMETOOLONG: 'the path is too long',
  ELOOP: 'the path has a symbolic link loop',
  SQLITE_READONLY: 'the history database is read-only (file permissions or a read-only file system)',
  SQLITE_CANTOPEN: 'the history database cannot be opened or created (permissions, or a path that is not a directory)',
  SQLITE_FULL: 'no space left on the device',
  SQLITE_IOERR: 'an I/O error on the history database',
  SQLITE_BUSY: 'the history database is locked by another process (one coordinator per data directory)',
  SQLITE_NOTADB: 'history.db is not a SQLite database',
  SQLITE_CORRUPT: 'the history database is corrupted',
};

/** The error message for a failure to open or write the data directory `dir`; null when `e` is not a file-system or
 *  SQLite error (then the original message says more). */
export function describeDataDirError(dir: string, e: unknown): string | null {
  const code = (e as { code?: unknown }).code;
  if (typeof code !== 'string') return null;
  const reason = REASONS[code] ?? (code.startsWith('SQLITE_IOERR') ? REASONS.SQLITE_IOERR : code.startsWith('SQLITE_READONLY') ? REASONS.SQLITE_READONLY : code.startsWith('SQLITE_CANTOPEN') ? REASONS.SQLITE_CANTOPEN : undefined);
  if (!reason) return null;
  if ((code === 'ENOTDIR' || code === 'EEXIST') && isFile(dir)) return `cannot use data directory ${dir}: it is a file, not a directory [${code}]`;
  const path = (e as { path?: unknown }).path;
  const where = typeof path === 'string' && path !== dir ? ` (at ${path})` : '';
  return `cannot use data directory ${dir}: ${reason}${where} [${code}]`;
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}
