// Proxies for the tests, on 127.0.0.1, each reaching only the hosts the test names (`routes`:
// "name:port" -> "127.0.0.1:port"; any other target is refused, so that nothing reaches the
// outside), recording what they were asked, closed when the test ends:
// - an HTTP proxy (startProxy; inside TLS with `tls`, an https:// proxy): CONNECT tunnels and
//   absolute-form requests, optionally asking for Basic credentials (407 without);
// - a SOCKS5 proxy (startSocksProxy, RFC 1928), optionally asking for a user and password (RFC 1929).
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';

export interface TestProxy {
  url: string;
  /** "CONNECT host:port" and "GET http://..." lines, in order. */
  seen: string[];
}

export async function startProxy(t: ExecutionContext, routes: Record<string, string>, credentials?: string,
  tls?: { cert: string; key: string }): Promise<TestProxy> {
  const seen: string[] = [];
  const sockets = new Set<net.Socket>();
  const authorized = (h: http.IncomingHttpHeaders): boolean =>
    credentials === undefined || h['proxy-authorization'] === `Basic ${Buffer.from(credentials).toString('base64')}`;
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    seen.push(`${req.method} ${req.url}`);
    if (!authorized(req.headers)) {
      res.writeHead(407, { 'proxy-authenticate': 'Basic realm="test"' }).end();
      return;
    }
    let target: URL;
    try {
      target = new URL(req.url ?? '');
    } catch {
      res.writeHead(400).end();
      return;
    }
    const to = routes[target.host];
    if (!to) {
      res.writeHead(502).end();
      return;
    }
    const [host, port] = to.split(':');
    const headers = { ...req.headers };
    delete headers['proxy-authorization'];
    const up = http.request({ host, port: Number(port), method: req.method, path: target.pathname + target.search, headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  };
  const server = tls ? https.createServer({ cert: fs.readFileSync(tls.cert), key: fs.readFileSync(tls.key) }, handler) : http.createServer(handler);
  server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    seen.push(`CONNECT ${req.url}`);
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    if (!authorized(req.headers)) {
      client.end('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="test"\r\n\r\n');
      return;
    }
    const to = routes[req.url ?? ''];
    if (!to) {
      client.end('HTTP/1.1 502 Bad Gateway\r\n\r\n');
      return;
    }
    splice(client, to, 'HTTP/1.1 200 Connection Established\r\n\r\n', head, sockets);
  });
  return { url: `${tls ? 'https' : 'http'}://127.0.0.1:${await listen(t, server, sockets)}`, seen };
}

/** Connects to `to` ("host:port"), then answers `client` with `ready` and joins the two (`head` sent on first). */
function splice(client: net.Socket, to: string, ready: string | Buffer, head: Buffer, sockets: Set<net.Socket>): void {
  const [host, port] = to.split(':');
  const up = net.connect(Number(port), host, () => {
    client.write(ready);
    if (head.length) up.write(head);
    up.pipe(client);
    client.pipe(up);
  });
  sockets.add(up);
  up.on('close', () => sockets.delete(up));
  up.on('error', () => client.destroy());
}

/** Listens on 127.0.0.1 (its port); the test's end closes it and the connections it still has. */
async function listen(t: ExecutionContext, server: net.Server, sockets: Set<net.Socket>): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy();
    server.close(() => resolve());
  }));
  return (server.address() as net.AddressInfo).port;
}

/** A SOCKS5 proxy; `seen` gets "CONNECT host:port" per connection asked for (and "AUTH ok|refused"). */
export async function startSocksProxy(t: ExecutionContext, routes: Record<string, string>, credentials?: { user: string; password: string }): Promise<TestProxy> {
  const seen: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    let got = Buffer.alloc(0);
    let step: 'hello' | 'auth' | 'request' = 'hello';
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      if (step === 'hello') {
        if (got.length < 2 || got.length < 2 + got[1]!) return;
        const methods = [...got.subarray(2, 2 + got[1]!)];
        got = got.subarray(2 + got[1]!);
        const want = credentials ? 2 : 0;
        if (!methods.includes(want)) return void client.end(Buffer.from([5, 0xff]));
        client.write(Buffer.from([5, want]));
        step = credentials ? 'auth' : 'request';
      }
      if (step === 'auth') {
        if (got.length < 2) return;
        const ulen = got[1]!;
        if (got.length < 3 + ulen || got.length < 3 + ulen + got[2 + ulen]!) return;
        const user = got.subarray(2, 2 + ulen).toString();
        const password = got.subarray(3 + ulen, 3 + ulen + got[2 + ulen]!).toString();
        got = got.subarray(3 + ulen + got[2 + ulen]!);
        const ok = user === credentials!.user && password === credentials!.password;
        seen.push(`AUTH ${ok ? 'ok' : 'refused'}`);
        if (!ok) return void client.end(Buffer.from([1, 1]));
        client.write(Buffer.from([1, 0]));
        step = 'request';
      }
      if (got.length < 5) return;
      const atyp = got[3];
      const addrLen = atyp === 1 ? 4 : atyp === 4 ? 16 : 1 + got[4]!;
      if (got.length < 4 + addrLen + 2) return;
      const addr = atyp === 1 ? [...got.subarray(4, 8)].join('.') : atyp === 3 ? got.subarray(5, 5 + got[4]!).toString() : 'ipv6';
      const port = got.readUInt16BE(4 + addrLen);
      const rest = got.subarray(4 + addrLen + 2);
      client.off('data', onData);
      seen.push(`CONNECT ${addr}:${port}`);
      const reply = (rep: number): Buffer => Buffer.from([5, rep, 0, 1, 0, 0, 0, 0, 0, 0]);
      const to = routes[`${addr}:${port}`];
      if (!to) return void client.end(reply(4)); // host unreachable
      splice(client, to, reply(0), rest, sockets);
    };
    client.on('data', onData);
  });
  return { url: `socks5://127.0.0.1:${await listen(t, server, sockets)}`, seen };
}
