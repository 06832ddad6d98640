import { hostname, networkInterfaces } from 'node:os';
import { isIP } from 'node:net';

/**
 * What a browser can make the operator API do from another origin, and what DNS rebinding can read, is decided here:
 *
 * - the Host header must name the coordinator as the operator serves it (loopback names by default, the address it
 *   listens on, and `allowedHosts`), so a page whose DNS name was rebound to this address is refused;
 * - a request that changes something and carries an Origin header must come from the coordinator's own origin, and a
 *   POST must be application/json: a browser sends neither cross-site without a CORS preflight (which this server
 *   never answers), so a no-cors form or fetch from another tab cannot rotate a secret even when the operator API is
 *   open (`--insecure-no-auth`).
 */

/** Loopback names: a browser reaches them only from this machine, and no DNS answer can point them elsewhere. */
const LOOPBACK_NAMES = ['localhost', '127.0.0.1', '::1'];

/** Whether `host` (a name or an address, no port) is loopback. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '');
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || h.startsWith('::ffff:127.');
  return false;
}

/** Whether binding to `host` listens on every interface. */
export function isWildcardHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  return h === '0.0.0.0' || h === '::' || h === '';
}

/** The host name of a Host header (port and IPv6 brackets removed, lower case); null when it is malformed. */
export function hostOfHeader(header: string | undefined): string | null {
  if (!header) return null;
  const h = header.trim().toLowerCase();
  const m = /^\[([0-9a-f:.]+)\](?::\d{1,5})?$/.exec(h) ?? /^([^:\s/@]+)(?::\d{1,5})?$/.exec(h);
  return m ? m[1]! : null;
}

/** The Host names the operator API answers to. */
export class HostPolicy {
  private readonly names = new Set<string>(LOOPBACK_NAMES);
  private readonly any: boolean;

  /** `allowed`: names or addresses besides the loopback ones; '*' turns the check off (a proxy in front checks it). */
  constructor(allowed: readonly string[] = []) {
    this.any = allowed.includes('*');
    for (const a of allowed) this.names.add(a.toLowerCase().replace(/^\[|\]$/g, ''));
  }

  /** Adds the address the server listens on; on a wildcard address, this machine's addresses and host name. */
  addListenHost(host: string): void {
    if (!isWildcardHost(host)) {
      this.names.add(host.toLowerCase().replace(/^\[|\]$/g, ''));
      return;
    }
    this.names.add(hostname().toLowerCase());
    for (const addrs of Object.values(networkInterfaces())) for (const a of addrs ?? []) this.names.add(a.address.toLowerCase().split('%')[0]!);
  }

  allows(hostHeader: string | undefined): boolean {
    if (this.any) return true;
    const h = hostOfHeader(hostHeader);
    return h !== null && (this.names.has(h) || isLoopbackHost(h));
  }

  /** For error messages and the start-up log. */
  list(): string[] {
    return this.any ? ['*'] : [...this.names];
  }
}

export type GuardRefusal = { status: number; code: string; message: string };

const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const WITH_BODY = new Set(['POST', 'PUT', 'PATCH']);

/**
 * Checks one request; null when it may proceed. `secure`: the server speaks TLS (the origin's scheme). The Host
 * check applies to every route given; the Origin and content-type checks to methods that change state.
 */
export function checkRequest(
  req: { method: string; headers: Record<string, string | string[] | undefined> },
  policy: HostPolicy,
  secure: boolean,
): GuardRefusal | null {
  const host = single(req.headers.host);
  if (!policy.allows(host)) {
    return { status: 403, code: 'HOST_NOT_ALLOWED', message: `Host ${JSON.stringify(host ?? '')} is not a name this coordinator serves under (add it to allowedHosts)` };
  }
  if (!MUTATING.has(req.method)) return null;
  const origin = single(req.headers.origin);
  if (origin !== undefined && origin !== `${secure ? 'https' : 'http'}://${host}`) {
    return { status: 403, code: 'CROSS_ORIGIN', message: `requests that change state are not accepted from origin ${origin}` };
  }
  if (WITH_BODY.has(req.method)) {
    const type = single(req.headers['content-type'])?.split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') {
      return { status: 415, code: 'UNSUPPORTED_MEDIA_TYPE', message: `${req.method} requests need content-type application/json, got ${type ?? 'none'}` };
    }
  }
  return null;
}

function single(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** The Content-Security-Policy of the dashboard: its own scripts, styles and API only, and never inside a frame. */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');
