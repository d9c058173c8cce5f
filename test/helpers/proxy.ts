// An HTTP proxy for the tests, on 127.0.0.1: CONNECT tunnels and absolute-form requests, each to a
// host the test names (`routes`: "name:port" -> "127.0.0.1:port"; any other target is refused with
// 502, so that nothing reaches the outside), optionally asking for Basic credentials (407 without).
// It records what it was asked; it is closed when the test ends.
import type { ExecutionContext } from 'ava';
import http from 'node:http';
import net from 'node:net';

export interface TestProxy {
  url: string;
  /** "CONNECT host:port" and "GET http://..." lines, in order. */
  seen: string[];
}

export async function startProxy(t: ExecutionContext, routes: Record<string, string>, credentials?: string): Promise<TestProxy> {
  const seen: string[] = [];
  const sockets = new Set<net.Socket>();
  const authorized = (h: http.IncomingHttpHeaders): boolean =>
    credentials === undefined || h['proxy-authorization'] === `Basic ${Buffer.from(credentials).toString('base64')}`;
  const server = http.createServer((req, res) => {
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
  });
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
    const [host, port] = to.split(':');
    const up = net.connect(Number(port), host, () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) up.write(head);
      up.pipe(client);
      client.pipe(up);
    });
    sockets.add(up);
    up.on('close', () => sockets.delete(up));
    up.on('error', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy();
    server.close(() => resolve());
  }));
  return { url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, seen };
}
