// A real OCI registry for the tests (Docker's distribution, Debian's docker-registry), on
// 127.0.0.1 and a free port, storing into a temp dir; stopped (and its files removed) by the
// test's teardown. The registry process dies with the thread that started it (PR_SET_PDEATHSIG),
// so a crashed test run leaves none behind.
//
// Also a front for it that speaks what docker-registry here does not: Bearer-token authentication
// (its token service at /token) and blob downloads redirected to another host.

import type { ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { runOk } from './exec.js';
import { tempDir } from './tmp.js';

export interface TestRegistry {
  /** "127.0.0.1:PORT" */
  host: string;
  /** The registry's storage (docker/registry/v2/...). */
  storage: string;
  /** The file that holds a blob's bytes in the storage. */
  blobFile(digest: string): string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

async function answers(url: string): Promise<number | null> {
  return new Promise((resolve) => {
    const req = http.get(url, (res) => {
      res.resume();
      resolve(res.statusCode ?? null);
    });
    req.on('error', () => resolve(null));
    req.setTimeout(1000, () => req.destroy());
  });
}

/**
 * Starts docker-registry; with `users`, it asks for Basic authentication (htpasswd, bcrypt); with `tls`,
 * it speaks HTTPS only, with that certificate, and with `clientCa` it wants a client certificate
 * signed by that authority.
 */
export async function startRegistry(t: ExecutionContext, opts: { users?: Record<string, string>; tls?: { cert: string; key: string; clientCa?: string } } = {}): Promise<TestRegistry> {
  const dir = tempDir(t, 'reg');
  const storage = path.join(dir, 'data');
  fs.mkdirSync(storage);
  let auth = '';
  if (opts.users) {
    const file = path.join(dir, 'htpasswd');
    fs.writeFileSync(file, Object.entries(opts.users).map(([u, p]) => runOk('htpasswd', ['-Bbn', u, p]).trim()).join('\n') + '\n');
    auth = `auth:\n  htpasswd:\n    realm: strata-test\n    path: ${file}\n`;
  }
  const tls = !opts.tls ? '' : `  tls:\n    certificate: ${opts.tls.cert}\n    key: ${opts.tls.key}\n` +
    (opts.tls.clientCa ? `    clientcas:\n      - ${opts.tls.clientCa}\n` : '');
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const config = path.join(dir, 'config.yml');
    fs.writeFileSync(config, `version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: ${storage}\n` +
      `  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:${port}\n${tls}${auth}`);
    const log = fs.openSync(path.join(dir, 'registry.log'), 'a');
    // python sets the parent-death signal, then becomes the registry.
    const child: ChildProcess = spawn('python3', ['-c',
      'import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 15); os.execvp(sys.argv[1], sys.argv[1:])', 'docker-registry', 'serve', config],
    { stdio: ['ignore', log, log] });
    fs.closeSync(log);
    let exited = false;
    child.once('exit', () => void (exited = true));
    const stop = async (): Promise<void> => {
      if (!exited) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
        if (!exited) child.kill('SIGKILL');
      }
    };
    t.teardown(stop);
    const deadline = Date.now() + 15_000;
    while (!exited && Date.now() < deadline && (await answers(`http://127.0.0.1:${port}/v2/`)) === null) await new Promise((r) => setTimeout(r, 50));
    if (exited) continue; // the port was taken meanwhile: another one
    if ((await answers(`http://127.0.0.1:${port}/v2/`)) === null) {
      await stop();
      throw new Error(`docker-registry did not start: ${fs.readFileSync(path.join(dir, 'registry.log'), 'utf8').slice(-500)}`);
    }
    return {
      host: `127.0.0.1:${port}`, storage, stop,
      blobFile: (digest) => path.join(storage, 'docker/registry/v2/blobs/sha256', digest.slice(7, 9), digest.slice(7), 'data'),
    };
  }
  throw new Error('docker-registry did not start (no free port)');
}

export interface TokenFront {
  host: string;
  /** Requests seen: "METHOD path auth" (auth: none, basic, bearer), and those the blob host served. */
  seen: string[];
}

/**
 * A registry front on another port: /v2/ asks for a Bearer token from its /token service (which
 * wants Basic `user:password` when given one, on a GET; and, with `identityToken`, takes that refresh
 * token on a POST of OAuth2's refresh_token grant, recording "grant service scope" in `seen`), checks the
 * token on every request, forwards to `backend`, and answers blob GETs with a 307 to a second server
 * (a "storage host") that must get no credentials.
 */
export async function startTokenFront(t: ExecutionContext, backend: string, creds?: { user: string; password: string },
  identityToken?: string): Promise<TokenFront> {
  const seen: string[] = [];
  const token = `tok-${process.pid}-${Date.now()}`;
  const storage = http.createServer((req, res) => {
    seen.push(`storage ${req.method} ${req.url} ${req.headers.authorization ? 'with credentials' : 'none'}`);
    if (req.headers.authorization) {
      res.writeHead(400).end('credentials sent to the storage host');
      return;
    }
    const fwd = http.request(`http://${backend}${req.url}`, { method: req.method }, (b) => {
      res.writeHead(b.statusCode ?? 502, b.headers);
      b.pipe(res);
    });
    fwd.on('error', () => res.writeHead(502).end());
    fwd.end();
  });
  await new Promise<void>((r) => storage.listen(0, '127.0.0.1', r));
  const storageHost = `127.0.0.1:${(storage.address() as net.AddressInfo).port}`;
  const front = http.createServer((req, res) => {
    const a = req.headers.authorization ?? '';
    seen.push(`${req.method} ${req.url?.split('?')[0]} ${a.startsWith('Bearer') ? 'bearer' : a.startsWith('Basic') ? 'basic' : 'none'}`);
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/token' && req.method === 'POST') {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
        seen.push(`token form: ${form.get('grant_type')} ${form.get('service')} ${form.get('scope')}`);
        if (identityToken === undefined || form.get('grant_type') !== 'refresh_token' || form.get('refresh_token') !== identityToken) {
          res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"invalid_grant"}');
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: token, expires_in: 300 }));
      });
      return;
    }
    if (url.pathname === '/token') {
      const want = creds ? `Basic ${Buffer.from(`${creds.user}:${creds.password}`).toString('base64')}` : null;
      if (want !== null && a !== want) {
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, scope: url.searchParams.getAll('scope') }));
      return;
    }
    if (a !== `Bearer ${token}`) {
      const scope = /^\/v2\/(.+)\/(?:manifests|blobs)\//.exec(url.pathname)?.[1];
      res.writeHead(401, {
        'content-type': 'application/json',
        'www-authenticate': `Bearer realm="http://${req.headers.host}/token",service="strata-test"${scope ? `,scope="repository:${scope}:pull"` : ''}`,
      }).end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
      req.resume();
      return;
    }
    if (req.method === 'GET' && /^\/v2\/.+\/blobs\/sha256:/.test(url.pathname)) {
      req.resume();
      res.writeHead(307, { location: `http://${storageHost}${req.url}` }).end();
      return;
    }
    const fwd = http.request(`http://${backend}${req.url}`, { method: req.method, headers: { ...req.headers, host: backend } }, (b) => {
      const headers = { ...b.headers };
      // upload locations name the backend: point them at the front
      if (typeof headers.location === 'string') headers.location = headers.location.replace(`http://${backend}`, `http://${req.headers.host}`);
      res.writeHead(b.statusCode ?? 502, headers);
      b.pipe(res);
    });
    fwd.on('error', () => res.writeHead(502).end());
    req.pipe(fwd);
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    front.closeAllConnections();
    storage.closeAllConnections();
    front.close(() => storage.close(() => r()));
  }));
  return { host: `127.0.0.1:${(front.address() as net.AddressInfo).port}`, seen };
}
