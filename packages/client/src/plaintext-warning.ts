/**
 * One warning per coordinator origin when the SDK would talk to another machine without TLS: the hello carries the
 * client's credential and the tasks carry the model. Once per origin per process, so that a simulation's thousand
 * virtual clients print one line, not a thousand.
 */
const warned = new Set<string>();

/** Whether `url` reaches a host other than this machine without TLS (http: or ws:). */
export function isPlaintextRemote(url: string): boolean {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return false;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'ws:') return false;
  const h = u.hostname.toLowerCase().replace(/^\[|\]$/g, '');
  const loopback = h === 'localhost' || h.endsWith('.localhost') || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
  return !loopback;
}

export function warnIfPlaintext(url: string): void {
  if (!isPlaintextRemote(url)) return;
  const origin = new URL(url).origin;
  if (warned.has(origin)) return;
  warned.add(origin);
  const message = `fedunlearn: ${origin} is another machine reached without TLS: this client's credential and the model cross the network in plaintext (use https://)`;
  if (typeof process !== 'undefined' && typeof process.emitWarning === 'function') process.emitWarning(message, { code: 'FEDUNLEARN_PLAINTEXT' });
  else console.warn(message);
}
