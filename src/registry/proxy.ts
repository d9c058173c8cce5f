// HTTP proxies for registry traffic, taken from the environment as Go's net/http takes them (so as
// podman, skopeo and Docker do): HTTPS_PROXY for https URLs and HTTP_PROXY for http ones (upper case
// first, then lower case); NO_PROXY, a comma list of what is reached directly: host names (with
// their subdomains; ".example.com" the subdomains only), IP addresses, CIDR ranges, each with an
// optional :port, or "*". localhost and loopback addresses are always reached directly. An https
// request goes through a CONNECT tunnel; an http one is sent to the proxy in absolute form. Only
// http:// proxies (a proxy URL without a scheme is one); user:password in the URL is sent as
// Proxy-Authorization (Basic).

import http from 'node:http';
import net from 'node:net';
import { ImageError } from '../image/types.js';

export interface Proxy {
  host: string;
  port: number;
  /** "Basic ..." for the proxy's user and password, when its URL names them. */
  authorization?: string;
  /** The proxy URL, for messages. */
  name: string;
}

function env(e: NodeJS.ProcessEnv, name: string): string | undefined {
  return e[name.toUpperCase()] || e[name.toLowerCase()] || undefined;
}

function parseProxy(value: string): Proxy {
  let u: URL;
  try {
    u = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `http://${value}`);
  } catch {
    throw new ImageError(`the proxy address is not a URL: ${value}`);
  }
  if (u.protocol !== 'http:') throw new ImageError(`unsupported proxy ${u.protocol}// (${u.host}): strata speaks to http:// proxies only`);
  const user = decodeURIComponent(u.username);
  const authorization = user || u.password ? `Basic ${Buffer.from(`${user}:${decodeURIComponent(u.password)}`).toString('base64')}` : undefined;
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 80), authorization, name: `http://${u.host}` };
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

/** A connection to `host`:`port` through the proxy's CONNECT tunnel. */
export function tunnel(proxy: Proxy, host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  const target = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: proxy.host, port: proxy.port, method: 'CONNECT', path: target, timeout: timeoutMs,
      headers: { host: target, ...(proxy.authorization ? { 'proxy-authorization': proxy.authorization } : {}) },
    });
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
    req.on('error', (e) => reject(new ImageError(`cannot reach the proxy ${proxy.name}: ${(e as NodeJS.ErrnoException).code ?? e.message}`)));
    req.end();
  });
}
