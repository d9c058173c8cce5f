// Proxies for registry traffic, taken from the environment as Go's net/http takes them (so as
// podman, skopeo and Docker do): HTTPS_PROXY for https URLs and HTTP_PROXY for http ones (upper case
// first, then lower case); NO_PROXY, a comma list of what is reached directly: host names (with
// their subdomains; ".example.com" the subdomains only), IP addresses, CIDR ranges, each with an
// optional :port, or "*". localhost and loopback addresses are always reached directly.
//
// The proxy's URL names its kind, as Go's: http:// (also a URL without a scheme) and https:// (the same
// protocol inside TLS to the proxy, its certificate checked against the system's and
// NODE_EXTRA_CA_CERTS's authorities): an https request goes through a CONNECT tunnel, an http one is
// sent to the proxy in absolute form; user:password in the URL is sent as Proxy-Authorization
// (Basic). socks5:// and socks5h:// (RFC 1928): a connection to the registry through the proxy, the
// registry's name resolved by the proxy (as Go's dialer sends it), user:password as RFC 1929's
// sub-negotiation; then TLS or plain HTTP over it as without a proxy.

import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type tls from 'node:tls';
import { ImageError } from '../image/types.js';
import { secureContextFor, untrustedCertificate } from './trust.js';

export interface Proxy {
  kind: 'http' | 'https' | 'socks5';
  host: string;
  port: number;
  /** "Basic ..." for an HTTP proxy's user and password, when its URL names them. */
  authorization?: string;
  /** A SOCKS proxy's user and password, when its URL names them. */
  user?: string;
  password?: string;
  /** The proxy URL (without credentials), for messages. */
  name: string;
}

function env(e: NodeJS.ProcessEnv, name: string): string | undefined {
  return e[name.toUpperCase()] || e[name.toLowerCase()] || undefined;
}

const DEFAULT_PORTS = { http: 80, https: 443, socks5: 1080 } as const;

function parseProxy(value: string): Proxy {
  let u: URL;
  try {
    u = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `http://${value}`);
  } catch {
    throw new ImageError(`the proxy address is not a URL: ${value}`);
  }
  const scheme = u.protocol.slice(0, -1);
  const kind = scheme === 'socks5h' ? 'socks5' : scheme;
  if (kind !== 'http' && kind !== 'https' && kind !== 'socks5') {
    throw new ImageError(`unsupported proxy ${u.protocol}// (${u.host}): strata speaks to http://, https://, socks5:// and socks5h:// proxies`);
  }
  const user = decodeURIComponent(u.username);
  const password = decodeURIComponent(u.password);
  const name = `${scheme}://${u.host}`;
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const port = Number(u.port || DEFAULT_PORTS[kind]);
  if (kind === 'socks5') return { kind, host, port, name, ...(user || password ? { user, password } : {}) };
  const authorization = user || password ? `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` : undefined;
  return { kind, host, port, authorization, name };
}

function ipToBigInt(ip: string): { v: bigint; bits: number } | null {
  if (net.isIPv4(ip)) return { v: ip.split('.').reduce((a, o) => (a << 8n) | BigInt(Number(o)), 0n), bits: 32 };
  if (!net.isIPv6(ip)) return null;
  const [head = '', tail = ''] = ip.split('::');
  const parts = (s: string): string[] => (s === '' ? [] : s.split(':'));
  const h = parts(head);
  const t = ip.includes('::') ? parts(tail) : [];
  const groups = [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return { v: groups.reduce((a, g) => (a << 16n) | BigInt(parseInt(g || '0', 16)), 0n), bits: 128 };
}

/** Whether NO_PROXY entry `entry` covers `host` (lower case, no brackets) at `port`. */
function covers(entry: string, host: string, port: string): boolean {
  let e = entry.trim().toLowerCase();
  if (e === '') return false;
  if (e === '*') return true;
  const cidr = /^(.+)\/(\d+)$/.exec(e);
  if (cidr) {
    const net_ = ipToBigInt(cidr[1]!);
    const ip = ipToBigInt(host);
    if (!net_ || !ip || net_.bits !== ip.bits) return false;
    const shift = BigInt(net_.bits - Math.min(Number(cidr[2]), net_.bits));
    return net_.v >> shift === ip.v >> shift;
  }
  let ePort = '';
  const withPort = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(e);
  if (withPort) {
    e = withPort[1]!;
    ePort = withPort[2]!;
  }
  e = e.replace(/^\[|\]$/g, '');
  if (ePort !== '' && ePort !== port) return false;
  if (ipToBigInt(e)) return ipToBigInt(host)?.v === ipToBigInt(e)!.v;
  if (e.startsWith('*.')) e = e.slice(1);
  if (e.startsWith('.')) return host.endsWith(e);
  return host === e || host.endsWith(`.${e}`);
}

/** The proxy a request to `url` goes through, or null: directly. */
export function proxyFor(url: URL, e: NodeJS.ProcessEnv = process.env): Proxy | null {
  const value = env(e, url.protocol === 'https:' ? 'HTTPS_PROXY' : 'HTTP_PROXY');
  if (!value) return null;
  const host = url.hostname.toLowerCase().replace(/^\[|\]$/g, '');
  if (host === 'localhost' || host.endsWith('.localhost') || host === '::1' || /^127\./.test(host)) return null;
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  if ((env(e, 'NO_PROXY') ?? '').split(',').some((entry) => covers(entry, host, port))) return null;
  return parseProxy(value);
}

/** A target for messages: host:port, an IPv6 address in brackets. */
function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** What a failure to reach the proxy itself says. */
export function unreachable(proxy: Proxy, e: Error): ImageError {
  if (untrustedCertificate(e)) {
    return new ImageError(`cannot reach the proxy ${proxy.name}: ${e.message} (its certificate's authority is taken from the system's ` +
      'store, SSL_CERT_FILE, SSL_CERT_DIR and NODE_EXTRA_CA_CERTS)');
  }
  // (an errno's name, else what TLS said: a name the certificate does not hold, ...)
  const code = (e as NodeJS.ErrnoException).code ?? '';
  return new ImageError(`cannot reach the proxy ${proxy.name}: ${/^E[A-Z]+$/.test(code) ? code : e.message.split('\n')[0]}`);
}

/**
 * A connection to `host`:`port` through the proxy: a CONNECT tunnel of an http:// or https:// proxy,
 * or a SOCKS5 connection. The registry's own protocol (TLS, HTTP) goes over it.
 */
export function tunnel(proxy: Proxy, host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return proxy.kind === 'socks5' ? socks5(proxy, host, port, timeoutMs) : connectTunnel(proxy, host, port, timeoutMs);
}

function connectTunnel(proxy: Proxy, host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  const target = hostPort(host, port);
  return new Promise((resolve, reject) => {
    const options = {
      host: proxy.host, port: proxy.port, method: 'CONNECT', path: target, timeout: timeoutMs,
      headers: { host: target, ...(proxy.authorization ? { 'proxy-authorization': proxy.authorization } : {}) },
    };
    const req = proxy.kind === 'https' ? https.request({ ...options, ...proxyTls(proxy) }) : http.request(options);
    req.on('connect', (res, socket) => {
      if (res.statusCode === 200) {
        socket.setTimeout(0);
        resolve(socket);
        return;
      }
      socket.destroy();
      reject(new ImageError(`the proxy ${proxy.name} refused the tunnel to ${target}: HTTP ${res.statusCode}${res.statusCode === 407 ? ' (proxy authentication required)' : ''}`));
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
    req.on('error', (e) => reject(unreachable(proxy, e)));
    req.end();
  });
}

/** The TLS options for an https:// proxy: its certificate checked against the system's authorities. */
function proxyTls(proxy: Proxy): https.RequestOptions & Pick<tls.ConnectionOptions, 'secureContext'> {
  // (the name checked is the proxy's: node would take the Host header's, the registry's; '' for an
  // address, which is then checked against the certificate's IP entries)
  return { servername: net.isIP(proxy.host) ? '' : proxy.host, secureContext: secureContextFor(hostPort(proxy.host, proxy.port), undefined) };
}

/** An http:// request in absolute form to an http:// or https:// proxy (the caller adds the URL as its path). */
export function proxyRequest(proxy: Proxy, options: http.RequestOptions, onResponse: (res: http.IncomingMessage) => void): http.ClientRequest {
  const o = { ...options, host: proxy.host, port: proxy.port };
  return proxy.kind === 'https'
    ? https.request({ ...o, ...proxyTls(proxy) }, onResponse)
    : http.request(o, onResponse);
}

/** RFC 1928's replies to a CONNECT that failed. */
const SOCKS_REPLIES: Record<number, string> = {
  1: 'general failure', 2: 'connection not allowed by its rules', 3: 'network unreachable', 4: 'host unreachable',
  5: 'connection refused', 6: 'TTL expired', 7: 'command not supported', 8: 'address type not supported',
};

/** A connection to `host`:`port` through a SOCKS5 proxy (RFC 1928; RFC 1929's user and password). */
function socks5(proxy: Proxy, host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  const target = hostPort(host, port);
  return new Promise((resolve, reject) => {
    const socket = net.connect(proxy.port, proxy.host);
    let got = Buffer.alloc(0);
    let step: 'method' | 'auth' | 'connect' = 'method';
    const fail = (e: Error): void => {
      socket.destroy();
      reject(e);
    };
    const refused = (why: string): void => fail(new ImageError(`the proxy ${proxy.name} refused the connection to ${target}: ${why}`));
    socket.setTimeout(timeoutMs, () => fail(unreachable(proxy, Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' }))));
    socket.on('error', (e) => fail(unreachable(proxy, e)));
    socket.on('close', () => fail(new ImageError(`the proxy ${proxy.name} closed the connection to ${target} before it was made`)));
    const withAuth = proxy.user !== undefined;
    socket.on('connect', () => socket.write(Buffer.from(withAuth ? [5, 2, 0, 2] : [5, 1, 0])));
    const sendConnect = (): void => {
      step = 'connect';
      let addr: Buffer;
      if (net.isIPv4(host)) addr = Buffer.from([1, ...host.split('.').map(Number)]);
      else if (net.isIPv6(host)) {
        const groups = ipv6Groups(host);
        addr = Buffer.alloc(17);
        addr[0] = 4;
        groups.forEach((g, i) => addr.writeUInt16BE(g, 1 + 2 * i));
      } else {
        const name = Buffer.from(host);
        if (name.length > 255) return refused('the host name is too long for SOCKS');
        addr = Buffer.concat([Buffer.from([3, name.length]), name]);
      }
      const portBytes = Buffer.alloc(2);
      portBytes.writeUInt16BE(port);
      socket.write(Buffer.concat([Buffer.from([5, 1, 0]), addr, portBytes]));
    };
    socket.on('data', (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      if (step === 'method') {
        if (got.length < 2) return;
        if (got[0] !== 5) return fail(new ImageError(`the proxy ${proxy.name} does not speak SOCKS5`));
        const method = got[1]!;
        got = got.subarray(2);
        if (method === 0) return sendConnect();
        if (method === 2 && withAuth) {
          step = 'auth';
          const u = Buffer.from(proxy.user ?? '');
          const p = Buffer.from(proxy.password ?? '');
          if (u.length > 255 || p.length > 255) return refused('the user name or password is too long for SOCKS');
          socket.write(Buffer.concat([Buffer.from([1, u.length]), u, Buffer.from([p.length]), p]));
          return;
        }
        return refused(withAuth ? 'it accepts neither no authentication nor a user and password' : 'it asks for a user and password (give them in the proxy URL)');
      }
      if (step === 'auth') {
        if (got.length < 2) return;
        if (got[1] !== 0) return refused('wrong user name or password');
        got = got.subarray(2);
        return sendConnect();
      }
      // the CONNECT reply: VER REP RSV ATYP BND.ADDR BND.PORT
      if (got.length < 5) return;
      if (got[0] !== 5) return fail(new ImageError(`the proxy ${proxy.name} does not speak SOCKS5`));
      if (got[1] !== 0) return refused(SOCKS_REPLIES[got[1]!] ?? `reply ${got[1]}`);
      const atyp = got[3];
      const len = 4 + (atyp === 1 ? 4 : atyp === 4 ? 16 : 1 + got[4]!) + 2;
      if (got.length < len) return;
      socket.removeAllListeners('data');
      socket.removeAllListeners('close');
      socket.removeAllListeners('error');
      socket.removeAllListeners('timeout');
      socket.on('error', () => undefined); // (what uses the connection listens for its own errors)
      socket.setTimeout(0);
      const rest = got.subarray(len);
      if (rest.length > 0) socket.unshift(rest);
      resolve(socket);
    });
  });
}

/** The eight 16-bit groups of an IPv6 address. */
function ipv6Groups(ip: string): number[] {
  const v = ipToBigInt(ip)!.v;
  return Array.from({ length: 8 }, (_, i) => Number((v >> BigInt(16 * (7 - i))) & 0xffffn));
}
