// A client of one repository of an OCI distribution registry (the OCI distribution spec; Docker's
// registry API v2): manifests and blobs, read and written, with Basic or Bearer-token
// authentication.
//
// Transport: HTTPS with verified certificates. A registry on a loopback address, or any registry
// with --tls-verify=false, is also tried over HTTPS without verification and then plain HTTP, as
// Docker does for its insecure registries. Blob downloads follow redirects (registries hand blobs
// to a storage service); credentials are sent only to the registry's own host. Proxies (http://,
// https://, socks5://) come from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY: proxy.ts).

import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import type { Readable } from 'node:stream';
import { ImageError } from '../image/types.js';
import { basicHeader, type Challenge, type Credentials, findCredentials, parseChallenge } from './auth.js';
import { proxyFor, proxyRequest, tunnel, unreachable } from './proxy.js';
import { secureContextFor, untrustedCertificate } from './trust.js';
import { apiHost, isLoopback, type Reference } from './reference.js';

export interface ClientOptions {
  /** false: HTTPS without verification, then HTTP; undefined: that only for loopback registries. */
  tlsVerify?: boolean;
  creds?: Credentials;
  authfile?: string;
  /** --cert-dir: the registry's certificates (authorities, a client certificate) instead of certs.d's (trust.ts). */
  certDir?: string;
}

export interface Response {
  status: number;
  headers: IncomingHttpHeaders;
  /** The body, read whole (requests without `stream`). */
  body: Buffer;
}

interface RequestSpec {
  method: 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';
  /** A path on the registry ("/v2/...") or an absolute URL (an upload location). */
  path: string;
  headers?: Record<string, string>;
  /** A body: bytes, or a function giving a fresh stream of `length` bytes (a retry needs another). */
  body?: Buffer | { length: number; open: () => Readable };
  /** The largest body read into memory. */
  limit?: number;
}

const USER_AGENT = 'strata';
const MAX_REDIRECTS = 5;
const CONNECT_TIMEOUT_MS = 30_000;
const IDLE_TIMEOUT_MS = 120_000;
const SMALL_BODY = 1 << 16;

/** One line from a registry's error body ({"errors":[{"code","message"}]}), if it has one. */
function registryMessage(body: Buffer): string | undefined {
  try {
    const errors = (JSON.parse(body.toString('utf8')) as { errors?: { code?: string; message?: string }[] }).errors;
    if (Array.isArray(errors) && errors.length > 0) {
      return errors.map((e) => [e.code, e.message].filter(Boolean).join(': ')).join('; ').replace(/\s+/g, ' ').slice(0, 300);
    }
  } catch {
    // not JSON
  }
  return undefined;
}

/** TLS alerts of a server that wants a client certificate it trusts. */
const CLIENT_CERT_REFUSED = new Set(['ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE', 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
  'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN']);

function networkError(host: string, e: unknown): ImageError {
  const err = e as NodeJS.ErrnoException;
  const code = err.code ?? '';
  const what = code === 'ECONNREFUSED' ? 'connection refused' : code === 'ENOTFOUND' || code === 'EAI_AGAIN' ? 'no such host'
    : code === 'ETIMEDOUT' ? 'timed out'
    : untrustedCertificate(err) ? `its certificate is not trusted (${err.message}): put its authority in /etc/containers/certs.d/${host}/ca.crt, ` +
      'give --cert-dir, or --tls-verify=false'
    : CLIENT_CERT_REFUSED.has(code) ? `it refused the TLS connection (${code.replace(/^ERR_SSL_/, '').toLowerCase()}): it wants a client ` +
      `certificate it trusts (NAME.cert and NAME.key in /etc/containers/certs.d/${host}/, or --cert-dir)`
    : (err.message ?? String(e)).split('\n')[0];
  return new ImageError(`cannot reach the registry ${host}: ${what}`);
}

export class RegistryClient {
  /** "https://host" or "http://host" once a ping settled it. */
  private origin: string | null = null;
  private verify = true;
  private authorization: string | undefined;
  private challenge: Challenge | undefined;
  private readonly creds: Credentials | undefined;
  private readonly host: string;

  /** `actions` null: no repository scope (a login's check of the credentials). */
  constructor(readonly ref: Reference, private readonly actions: 'pull' | 'pull,push' | null, private readonly opts: ClientOptions = {}) {
    this.host = apiHost(ref.registry);
    this.creds = opts.creds ?? findCredentials(ref.registry, ref.repository, opts.authfile);
  }

  /** The registry and repository, as messages name them. */
  get name(): string {
    return `${this.ref.registry}/${this.ref.repository}`;
  }

  /** Settles the scheme with GET /v2/ and authenticates if the registry asks to. */
  async connect(): Promise<void> {
    if (this.origin !== null) return;
    const insecure = this.opts.tlsVerify === false || (this.opts.tlsVerify === undefined && isLoopback(this.ref.registry));
    const attempts: [string, boolean][] = insecure ? [[`https://${this.host}`, false], [`http://${this.host}`, false]] : [[`https://${this.host}`, true]];
    // (a certificate directory that cannot be used is said at once, not taken for a registry without TLS)
    secureContextFor(this.ref.registry, this.opts.certDir);
    let lastError: unknown;
    for (const [origin, verify] of attempts) {
      let r: Response;
      try {
        r = await readWhole(await this.send(new URL('/v2/', origin), verify, { method: 'GET', path: '/v2/' }, undefined), SMALL_BODY);
      } catch (e) {
        lastError = e;
        continue;
      }
      this.origin = origin;
      this.verify = verify;
      if (r.status === 401) {
        this.challenge = parseChallenge(r.headers['www-authenticate'] as string | undefined);
        await this.authenticate();
        if (this.challenge?.scheme === 'basic') {
          // The credentials are checked here, where a refusal can only mean them.
          const again = await readWhole(await this.send(new URL('/v2/', origin), verify, { method: 'GET', path: '/v2/' }, this.authorization), SMALL_BODY);
          if (again.status === 401) throw new ImageError(`${this.ref.registry}: the credentials were refused`);
        }
      } else if (r.status !== 200) {
        throw new ImageError(`${this.ref.registry} does not answer as a registry (GET /v2/: HTTP ${r.status})`);
      }
      return;
    }
    throw networkError(this.ref.registry, lastError);
  }

  /** Gets an Authorization value for the last challenge. */
  private async authenticate(scopeHint?: string): Promise<void> {
    const c = this.challenge;
    if (!c) throw new ImageError(`${this.ref.registry} refused the request (HTTP 401) without saying how to authenticate`);
    if (c.scheme === 'basic') {
      if (!this.creds) throw new ImageError(`${this.ref.registry}: authentication required (give --creds USER:PASSWORD or log in with podman/docker)`);
      if (this.creds.identityToken !== undefined) throw new ImageError(`${this.ref.registry}: the credentials are an identity token, which needs a token service, and the registry asks for a password (Basic)`);
      this.authorization = basicHeader(this.creds);
      return;
    }
    if (c.scheme !== 'bearer' || !c.params.realm) throw new ImageError(`${this.ref.registry}: unsupported authentication scheme "${c.scheme}"`);
    let realm: URL;
    try {
      realm = new URL(c.params.realm);
    } catch {
      throw new ImageError(`${this.ref.registry}: the token service's address is not a URL: ${c.params.realm.slice(0, 100)}`);
    }
    const scopes = new Set<string>(this.actions === null ? [] : [`repository:${this.ref.repository}:${this.actions}`]);
    if (scopeHint) scopes.add(scopeHint);
    const identityToken = this.creds?.identityToken;
    let spec: RequestSpec;
    if (identityToken !== undefined) {
      // An identity token is a refresh token: POSTed as a form for an access token (OAuth2's
      // refresh_token grant; distribution's docs/spec/auth/oauth.md), the scopes in one list.
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: identityToken, client_id: USER_AGENT });
      if (c.params.service) form.set('service', c.params.service);
      if (scopes.size > 0) form.set('scope', [...scopes].join(' '));
      spec = { method: 'POST', path: realm.href, headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: Buffer.from(form.toString()) };
    } else {
      if (c.params.service) realm.searchParams.set('service', c.params.service);
      for (const s of scopes) realm.searchParams.append('scope', s);
      spec = { method: 'GET', path: realm.href, headers: this.creds ? { authorization: basicHeader(this.creds) } : {} };
    }
    let r: Response;
    try {
      // (a token service on the registry's host is trusted as the registry is)
      const verify = realm.host === this.host ? this.verify : true;
      r = await readWhole(await this.send(realm, verify, spec, undefined), SMALL_BODY);
    } catch (e) {
      throw e instanceof ImageError ? e : networkError(realm.host, e);
    }
    if (r.status === 401 || r.status === 403 || (identityToken !== undefined && r.status === 400)) {
      // (OAuth2 answers a refresh token it does not take with 400 invalid_grant)
      const why = identityToken !== undefined ? 'the identity token was refused' : this.creds ? 'the credentials were refused' : 'authentication required (give --creds USER:PASSWORD or log in with podman/docker)';
      throw new ImageError(`${this.ref.registry}: ${why}`);
    }
    if (r.status !== 200) throw new ImageError(`${this.ref.registry}: the token service answered HTTP ${r.status}`);
    let token: string | undefined;
    try {
      const j = JSON.parse(r.body.toString('utf8')) as { token?: string; access_token?: string };
      token = j.token ?? j.access_token;
    } catch {
      // below
    }
    if (!token) throw new ImageError(`${this.ref.registry}: the token service gave no token`);
    this.authorization = `Bearer ${token}`;
  }

  /**
   * Sends a request to the registry, authenticating again once if it answers 401 (an expired token,
   * or one for too narrow a scope). With `stream`, returns the response unread (the caller reads or
   * destroys it). GET and HEAD follow redirects.
   */
  async request(spec: RequestSpec & { stream: true }): Promise<IncomingMessage>;
  async request(spec: RequestSpec & { stream?: false }): Promise<Response>;
  async request(spec: RequestSpec & { stream?: boolean }): Promise<Response | IncomingMessage> {
    await this.connect();
    for (let attempt = 0; ; attempt++) {
      let res: IncomingMessage;
      try {
        res = await this.sendFollowing(new URL(spec.path, this.origin!), spec);
      } catch (e) {
        throw e instanceof ImageError ? e : networkError(this.ref.registry, e);
      }
      if (res.statusCode === 401 && attempt === 0) {
        res.resume();
        this.challenge = parseChallenge(res.headers['www-authenticate'] as string | undefined) ?? this.challenge;
        await this.authenticate(this.challenge?.params.scope);
        continue;
      }
      if (spec.stream) return res;
      try {
        return await readWhole(res, spec.limit ?? SMALL_BODY);
      } catch (e) {
        throw e instanceof ImageError ? e : networkError(this.ref.registry, e);
      }
    }
  }

  /** One request, following redirects for GET and HEAD (credentials only to the registry's own host). */
  private async sendFollowing(url: URL, spec: RequestSpec): Promise<IncomingMessage> {
    const ownHost = new URL(this.origin!).host;
    let current = url;
    for (let hops = 0; ; hops++) {
      const own = current.host === ownHost;
      const res = await this.send(current, own ? this.verify : true, spec, own ? this.authorization : undefined);
      const location = res.headers.location;
      if ((spec.method === 'GET' || spec.method === 'HEAD') && [301, 302, 303, 307, 308].includes(res.statusCode ?? 0) && location) {
        res.resume();
        if (hops >= MAX_REDIRECTS) throw new ImageError(`${this.ref.registry}: too many redirects`);
        current = new URL(location, current);
        continue;
      }
      return res;
    }
  }

  /** One HTTP exchange; the response is returned unread. */
  private send(url: URL, verify: boolean, spec: RequestSpec, authorization: string | undefined): Promise<IncomingMessage> {
    const headers: Record<string, string> = { 'user-agent': USER_AGENT, ...(spec.headers ?? {}) };
    if (authorization) headers.authorization = authorization;
    const body = spec.body;
    if (body !== undefined) headers['content-length'] = String(body.length);
    else if (spec.method === 'PUT' || spec.method === 'POST' || spec.method === 'PATCH') headers['content-length'] = '0';
    const secure = url.protocol === 'https:';
    // (every connection of this client, to the registry, its token service or where it redirects,
    // with the registry's authorities and client certificate, as podman's one transport per registry)
    const secureContext = secure ? secureContextFor(this.ref.registry, this.opts.certDir) : undefined;
    const proxy = proxyFor(url);
    const host = url.hostname.replace(/^\[|\]$/g, '');
    // Through a proxy: https in a tunnel (CONNECT, or SOCKS), http in absolute form to an HTTP proxy
    // or over a SOCKS connection.
    const tunneled = proxy && (secure || proxy.kind === 'socks5') ? tunnel(proxy, host, Number(url.port || (secure ? 443 : 80)), CONNECT_TIMEOUT_MS) : Promise.resolve(null);
    return tunneled.then((socket) => new Promise((resolve, reject) => {
      const common = { method: spec.method, timeout: CONNECT_TIMEOUT_MS };
      const onResponse = (res: IncomingMessage): void => {
        if (res.statusCode === 407 && proxy && !socket) {
          res.resume();
          reject(new ImageError(`the proxy ${proxy.name} refused the request: HTTP 407 (proxy authentication required)`));
          return;
        }
        res.setTimeout(IDLE_TIMEOUT_MS, () => res.destroy(new Error('the registry stopped sending (timed out)')));
        resolve(res);
      };
      const req = socket && secure ? https.request(url, {
        ...common, headers,
        createConnection: () => tls.connect({ socket, servername: net.isIP(host) ? undefined : host, rejectUnauthorized: verify, secureContext }),
      }, onResponse)
        : socket ? http.request(url, { ...common, headers, createConnection: () => socket }, onResponse)
        : proxy ? proxyRequest(proxy, {
          ...common, path: url.href,
          headers: { ...headers, host: url.host, ...(proxy.authorization ? { 'proxy-authorization': proxy.authorization } : {}) },
        }, onResponse)
        : (secure ? https : http).request(url, { ...common, headers, ...(secure ? { rejectUnauthorized: verify, secureContext } : {}) }, onResponse);
      req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
      // (a request in absolute form fails at the proxy's connection)
      req.on('error', (e) => reject(proxy && !socket ? unreachable(proxy, e) : e));
      if (body === undefined) req.end();
      else if (Buffer.isBuffer(body)) req.end(body);
      else {
        const src = body.open();
        src.on('error', (e) => req.destroy(e));
        src.pipe(req);
      }
    }));
  }

  // --- the API ------------------------------------------------------------------------------

  private repoPath(kind: 'manifests' | 'blobs', ref: string): string {
    return `/v2/${this.ref.repository}/${kind}/${ref}`;
  }

  /** A manifest or index by tag or digest: its bytes and media type. */
  async getManifest(reference: string, accept: readonly string[]): Promise<{ bytes: Buffer; mediaType: string; digest?: string }> {
    const r = await this.request({ method: 'GET', path: this.repoPath('manifests', reference), headers: { accept: accept.join(', ') }, limit: 4 << 20 });
    if (r.status === 404) throw new ImageError(`${this.name}:${reference}: not found in the registry${suffix(registryMessage(r.body))}`);
    this.check(r, 200, `GET manifest ${reference}`);
    const mediaType = String(r.headers['content-type'] ?? '').split(';')[0]!.trim();
    const digest = r.headers['docker-content-digest'] as string | undefined;
    return { bytes: r.body, mediaType, ...(digest ? { digest } : {}) };
  }

  /** A blob's bytes as a stream (the caller verifies them). */
  async getBlob(digest: string): Promise<IncomingMessage> {
    const res = await this.request({ method: 'GET', path: this.repoPath('blobs', digest), stream: true });
    if (res.statusCode !== 200) {
      const body = await readWhole(res, SMALL_BODY).then((x) => x.body, () => Buffer.alloc(0));
      if (res.statusCode === 404) throw new ImageError(`${this.name}: blob ${digest} is missing from the registry`);
      throw new ImageError(`${this.name}: GET blob ${digest.slice(0, 19)}: HTTP ${res.statusCode}${suffix(registryMessage(body))}`);
    }
    return res;
  }

  async hasBlob(digest: string): Promise<boolean> {
    const r = await this.request({ method: 'HEAD', path: this.repoPath('blobs', digest) });
    if (r.status === 200) return true;
    if (r.status === 404) return false;
    this.check(r, 200, `HEAD blob ${digest.slice(0, 19)}`);
    return false;
  }

  /**
   * Asks the registry to link a blob that repository `from` (of the same registry) holds into this
   * one, without sending it (a cross-repository mount); false if it did not (the caller uploads).
   */
  async mountBlob(digest: string, from: string): Promise<boolean> {
    const path = `/v2/${this.ref.repository}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`;
    const r = await this.request({ method: 'POST', path });
    if (r.status === 201) return true;
    // 202: an upload session instead (left to expire); anything else: the plain upload will say
    return false;
  }

  /** Uploads a blob in one PUT (POST for a session, then PUT ?digest=). */
  async putBlob(digest: string, body: Buffer | { length: number; open: () => Readable }): Promise<void> {
    const start = await this.request({ method: 'POST', path: `/v2/${this.ref.repository}/blobs/uploads/` });
    this.check(start, 202, 'start an upload');
    const location = start.headers.location;
    if (!location) throw new ImageError(`${this.name}: the registry gave no upload location`);
    const url = new URL(location, this.origin!);
    url.searchParams.set('digest', digest);
    const r = await this.request({ method: 'PUT', path: url.href, headers: { 'content-type': 'application/octet-stream' }, body });
    this.check(r, 201, `upload blob ${digest.slice(0, 19)}`);
  }

  /** Puts a manifest under a tag or its digest; returns the digest the registry gives it. */
  async putManifest(reference: string, bytes: Buffer, mediaType: string): Promise<string | undefined> {
    const r = await this.request({ method: 'PUT', path: this.repoPath('manifests', reference), headers: { 'content-type': mediaType }, body: bytes });
    this.check(r, 201, `put manifest ${reference}`);
    return r.headers['docker-content-digest'] as string | undefined;
  }

  private check(r: Response, expected: number, what: string): void {
    if (r.status === expected) return;
    const msg = registryMessage(r.body);
    if (r.status === 401 || r.status === 403) {
      const why = r.status === 403 ? 'access denied' : this.creds ? 'the credentials were refused' : 'authentication required';
      throw new ImageError(`${this.name}: ${what}: ${why}${suffix(msg)}`);
    }
    throw new ImageError(`${this.name}: ${what}: HTTP ${r.status}${suffix(msg)}`);
  }
}

function suffix(msg: string | undefined): string {
  return msg ? ` (${msg})` : '';
}

/** Reads a response whole, refusing one longer than `limit`. */
function readWhole(res: IncomingMessage, limit: number): Promise<Response> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    res.on('data', (c: Buffer) => {
      n += c.length;
      if (n > limit) {
        res.destroy();
        reject(new ImageError(`the registry sent more than ${limit} bytes where a small document was expected`));
        return;
      }
      chunks.push(c);
    });
    res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    res.on('error', reject);
  });
}
