/**
 * Why a connection to the coordinator could not be opened, in words, from what socket.io-client reports
 * (`connect_error`). In Node the websocket transport carries the system error (`description.error.code`); a browser
 * tells a page nothing about a failed WebSocket (by design), so there the message says where to look instead.
 */
export function describeConnectError(url: string, err: unknown): string {
  return explainConnectError(url, err).message;
}

/**
 * The description, and whether retrying cannot help: nothing listens there, the name does not resolve, TLS fails,
 * or the server is not a coordinator. Other failures (a reset, a timeout, a browser's unexplained error) may pass
 * while the coordinator is busy or restarting, so the SDK keeps trying until connect()'s timeout.
 */
export function explainConnectError(url: string, err: unknown): { message: string; final: boolean } {
  const { cause, final } = connectCause(url, err);
  return { message: `cannot connect to ${url}: ${cause}`, final };
}

interface TransportErrorLike {
  message?: string;
  description?: unknown;
}

/** The system error or message inside a socket.io-client connect_error, however deep the transport put it. */
function innermost(err: unknown): { code: string; message: string } {
  const e = (err ?? {}) as TransportErrorLike;
  const d = e.description as { error?: { code?: unknown; message?: unknown }; message?: unknown; code?: unknown } | undefined;
  const inner = d?.error;
  const code = String(inner?.code ?? d?.code ?? (e as { code?: unknown }).code ?? '');
  const message = String(inner?.message ?? (typeof d?.message === 'string' ? d.message : '') ?? '') || String(e.message ?? err);
  return { code, message };
}

function connectCause(url: string, err: unknown): { cause: string; final: boolean } {
  const final = (cause: string) => ({ cause, final: true });
  const passing = (cause: string) => ({ cause, final: false });
  const { code, message } = innermost(err);
  let host = url;
  try {
    host = new URL(url).host;
  } catch {
    // An unparsable URL is reported as given.
  }
  switch (code) {
    case 'ECONNREFUSED':
      return final(`connection refused (nothing listens at ${host}: is the coordinator running, and on this port?)`);
    case 'ENOTFOUND':
      return final(`DNS: no address found for ${host.replace(/:\d+$/, '')}`);
    case 'EAI_AGAIN':
      return passing(`DNS: the lookup of ${host.replace(/:\d+$/, '')} failed (no DNS server answered)`);
    case 'ECONNRESET':
      return passing(`the connection was reset (${message})`);
    case 'ETIMEDOUT':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return passing(`${host} is unreachable (${code})`);
  }
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|ERR_SSL|EPROTO/.test(code) || /certificate|self[- ]signed|SSL|TLS/i.test(message)) {
    return final(`TLS: ${code ? `${code} ` : ''}${message} (a coordinator with a self-signed certificate needs its CA as the \`ca\` option)`);
  }
  const status = /Unexpected server response: (\d+)/.exec(message);
  if (status) return final(`the server answered HTTP ${status[1]} instead of opening a WebSocket (is ${url} a fedunlearn coordinator?)`);
  if (message === 'websocket error' && code === '') {
    // A browser: the WebSocket error event has no detail.
    return passing('the WebSocket could not be opened, and the browser does not say why (check the address, that the coordinator runs, its TLS certificate, and that the page may reach it: mixed content, Content-Security-Policy connect-src)');
  }
  return passing(code ? `${code} ${message}` : message);
}
