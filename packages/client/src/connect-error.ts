/**
 * Why a connection to the coordinator could not be opened, in words, from what socket.io-client reports
 * (`connect_error`). In Node the websocket transport carries the system error (`description.error.code`); a browser
 * tells a page nothing about a failed WebSocket (by design), so there the message says where to look instead.
 */
export function describeConnectError(url: string, err: unknown): string {
  return `cannot connect to ${url}: ${connectCause(url, err)}`;
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

function connectCause(url: string, err: unknown): string {
  const { code, message } = innermost(err);
  let host = url;
  try {
    host = new URL(url).host;
  } catch {
    // An unparsable URL is reported as given.
  }
  switch (code) {
    case 'ECONNREFUSED':
      return `connection refused (nothing listens at ${host}: is the coordinator running, and on this port?)`;
    case 'ENOTFOUND':
      return `DNS: no address found for ${host.replace(/:\d+$/, '')}`;
    case 'EAI_AGAIN':
      return `DNS: the lookup of ${host.replace(/:\d+$/, '')} failed (no DNS server answered)`;
    case 'ECONNRESET':
      return `the connection was reset (${message})`;
    case 'ETIMEDOUT':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return `${host} is unreachable (${code})`;
  }
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|ERR_SSL|EPROTO/.test(code) || /certificate|self[- ]signed|SSL|TLS/i.test(message)) {
    return `TLS: ${code ? `${code} ` : ''}${message} (a coordinator with a self-signed certificate needs its CA as the \`ca\` option)`;
  }
  const status = /Unexpected server response: (\d+)/.exec(message);
  if (status) return `the server answered HTTP ${status[1]} instead of opening a WebSocket (is ${url} a fedunlearn coordinator?)`;
  if (message === 'websocket error' && code === '') {
    // A browser: the WebSocket error event has no detail.
    return 'the WebSocket could not be opened, and the browser does not say why (check the address, that the coordinator runs, its TLS certificate, and that the page may reach it: mixed content, Content-Security-Policy connect-src)';
  }
  return code ? `${code} ${message}` : message;
}
