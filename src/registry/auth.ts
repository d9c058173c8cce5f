// Registry credentials and authentication challenges.
//
// Credentials come from --creds USER:PASSWORD, else the first auth file that names the registry:
// --authfile, $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
// ~/.config/containers/auth.json (podman's), ~/.docker/config.json (Docker's). Their "auths"
// entries hold base64("user:password") under "auth" (or "username" and "password"), keyed by the
// registry host, a URL of it, or "https://index.docker.io/v1/" for Docker Hub. A file's
// "credHelpers" (per registry) and "credsStore" (Docker's, for the others) name credential helpers:
// `docker-credential-NAME get`, given the registry on stdin, prints {"Username","Secret"} (Docker's
// credential-helper protocol). In each file: the registry's helper, then its "auths" entry, then
// the store. An identity token (an entry's "identitytoken", or a helper's Secret under the Username
// "<token>") is an OAuth2 refresh token: it is exchanged at the token service (client.ts).
//
// A registry that answers 401 says how to authenticate in WWW-Authenticate: "Basic realm=..." (send
// the credentials) or "Bearer realm=URL,service=S,scope=S" (ask URL for a token, with the credentials
// if there are any, and send that). (RFC 7235; distribution's docs/spec/auth/token.md.)

import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { ImageError } from '../image/types.js';
import { DOCKER_HUB } from './reference.js';

export interface Credentials {
  username: string;
  password: string;
  /**
   * An identity token (an OAuth2 refresh token: an auth file's "identitytoken", a credential helper's
   * Secret under the Username "<token>"), exchanged at the registry's token service for access tokens
   * instead of sending the username and password.
   */
  identityToken?: string;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses "user:password" (--creds); the password may hold colons. */
export function parseCreds(value: string): Credentials {
  const i = value.indexOf(':');
  if (i <= 0) throw new ImageError('--creds takes USER:PASSWORD', 2);
  return { username: value.slice(0, i), password: value.slice(i + 1) };
}

/** Where `strata login` writes (podman's default): $REGISTRY_AUTH_FILE, else the runtime dir's auth.json. */
export function defaultAuthFile(): string {
  if (process.env.REGISTRY_AUTH_FILE) return process.env.REGISTRY_AUTH_FILE;
  if (process.env.XDG_RUNTIME_DIR) return join(process.env.XDG_RUNTIME_DIR, 'containers', 'auth.json');
  return `/run/containers/${process.getuid?.() ?? 0}/auth.json`;
}

/** The auth files to look in, in order. */
export function authFiles(explicit?: string): string[] {
  if (explicit !== undefined) return [explicit];
  const out: string[] = [defaultAuthFile()];
  const home = process.env.HOME ?? homedir();
  out.push(join(home, '.config', 'containers', 'auth.json'), join(home, '.docker', 'config.json'));
  return out;
}

interface AuthEntry {
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
}

/** The keys an auth file may file the registry under. */
function keysFor(registry: string): string[] {
  const keys = [registry, `https://${registry}`, `http://${registry}`, `https://${registry}/v1/`, `https://${registry}/v2/`];
  if (registry === DOCKER_HUB) keys.push('https://index.docker.io/v1/', 'index.docker.io', 'registry-1.docker.io');
  return keys;
}

/**
 * The credentials for a registry (and repository: podman's auth.json may key "host/namespace"),
 * or undefined. An auth file named with --authfile must exist and parse; the default ones may be
 * missing.
 */
export function findCredentials(registry: string, repository: string, authfile?: string): Credentials | undefined {
  for (const file of authFiles(authfile)) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      if (authfile !== undefined) throw new ImageError(`cannot read the auth file ${file}: ${(e as Error).message}`, 2);
      continue;
    }
    let parsed: { auths?: Record<string, AuthEntry>; credHelpers?: Record<string, string>; credsStore?: string };
    try {
      parsed = JSON.parse(text) as typeof parsed;
    } catch {
      throw new ImageError(`the auth file ${file} is not valid JSON`, 2);
    }
    const auths = parsed.auths ?? {};
    for (const key of keysFor(registry)) {
      const helper = parsed.credHelpers?.[key];
      if (typeof helper === 'string' && helper !== '') {
        const c = fromHelper(helper, helperServer(registry), file);
        if (c) return c;
        break;
      }
    }
    // Most specific first: "host/a/b", "host/a", then the host's own keys.
    const parts = repository.split('/');
    const candidates: string[] = [];
    for (let n = parts.length; n > 0; n--) candidates.push(`${registry}/${parts.slice(0, n).join('/')}`);
    candidates.push(...keysFor(registry));
    for (const key of candidates) {
      const entry = auths[key];
      if (!entry) continue;
      // (Docker writes the username, if any, beside an identity token in "auth", with an empty password)
      if (typeof entry.identitytoken === 'string' && entry.identitytoken !== '') {
        const user = entry.auth ? Buffer.from(entry.auth, 'base64').toString('utf8').split(':')[0]! : entry.username ?? '';
        return { username: user, password: '', identityToken: entry.identitytoken };
      }
      if (entry.username !== undefined && entry.password !== undefined) return { username: entry.username, password: entry.password };
      if (entry.auth) {
        const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
        const i = decoded.indexOf(':');
        if (i > 0) return { username: decoded.slice(0, i), password: decoded.slice(i + 1) };
      }
    }
    if (typeof parsed.credsStore === 'string' && parsed.credsStore !== '') {
      // (a store that is not installed is passed over: podman does not read credsStore at all)
      const c = fromHelper(parsed.credsStore, helperServer(registry), file, true);
      if (c) return c;
    }
  }
  return undefined;
}

/** The server a credential helper is asked about (Docker's name for Docker Hub). */
function helperServer(registry: string): string {
  return registry === DOCKER_HUB ? 'https://index.docker.io/v1/' : registry;
}

/** `docker-credential-NAME get` for `server`: its credentials, or null where it has none (or, `optional`, is not installed). */
function fromHelper(name: string, server: string, file: string, optional = false): Credentials | null {
  const program = `docker-credential-${name}`;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) throw new ImageError(`the auth file ${file} names a credential helper that is not a name: "${name}"`, 2);
  const r = spawnSync(program, ['get'], { input: server, encoding: 'utf8', timeout: 60_000, stdio: ['pipe', 'pipe', 'pipe'] });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    if (optional && code === 'ENOENT') return null;
    throw new ImageError(`the credential helper ${program} (named in ${file}) cannot run: ${code === 'ENOENT' ? 'not found on PATH' : code ?? r.error.message}`);
  }
  const said = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  if (r.status !== 0) {
    // (the protocol's answer for a server it knows nothing of)
    if (/credentials not found/i.test(said)) return null;
    throw new ImageError(`the credential helper ${program} failed for ${server}: ${said.split('\n')[0] || `exit status ${r.status}`}`);
  }
  let j: { Username?: unknown; Secret?: unknown };
  try {
    j = JSON.parse(r.stdout) as typeof j;
  } catch {
    throw new ImageError(`the credential helper ${program} answered for ${server} with something that is not JSON`);
  }
  if (typeof j.Secret !== 'string' || j.Secret === '') return null;
  if (j.Username === '<token>') return { username: '', password: '', identityToken: j.Secret };
  return { username: typeof j.Username === 'string' ? j.Username : '', password: j.Secret };
}

export function basicHeader(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}

/** Parses a WWW-Authenticate header: the first challenge, with its parameters. */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined;
  const m = /^\s*([A-Za-z][A-Za-z0-9_-]*)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?\s*/gy;
  const rest = m[2]!;
  re.lastIndex = 0;
  let p: RegExpExecArray | null;
  while (re.lastIndex < rest.length && (p = re.exec(rest)) !== null) {
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3]!;
  }
  return { scheme: m[1]!.toLowerCase(), params };
}

interface AuthFile {
  auths?: Record<string, AuthEntry>;
  [key: string]: unknown;
}

function readAuthFile(file: string): AuthFile {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new ImageError(`cannot read the auth file ${file}: ${(e as Error).message}`, 2);
  }
  try {
    const j = JSON.parse(text) as AuthFile;
    if (typeof j !== 'object' || j === null || Array.isArray(j)) throw new Error('not an object');
    return j;
  } catch {
    throw new ImageError(`the auth file ${file} is not valid JSON`, 2);
  }
}

/** Writes the file whole: a temp file beside it (mode 0600), renamed over it. */
function writeAuthFile(file: string, content: AuthFile): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(content, null, '\t')}\n`, { mode: 0o600 });
  renameSync(tmp, file);
}

/** Records credentials for a registry in an auth file (keeping everything else in it). */
export function storeCredentials(file: string, registry: string, c: Credentials): void {
  const content = readAuthFile(file);
  content.auths = { ...(content.auths ?? {}), [registry]: { auth: Buffer.from(`${c.username}:${c.password}`).toString('base64') } };
  writeAuthFile(file, content);
}

/** Removes a registry's credentials (every key that names it; all with `registry` null); whether there were any. */
export function removeCredentials(file: string, registry: string | null): boolean {
  const content = readAuthFile(file);
  const auths = content.auths ?? {};
  const keys = registry === null ? Object.keys(auths) : Object.keys(auths).filter((k) => keysFor(registry).includes(k) || k.startsWith(`${registry}/`));
  if (keys.length === 0) return false;
  for (const k of keys) delete auths[k];
  content.auths = auths;
  writeAuthFile(file, content);
  return true;
}
