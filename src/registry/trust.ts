// Whom a registry's TLS is checked against, and what strata shows it, as podman (containers/image,
// Go's crypto/tls) does:
// - root certificates: node's own (Mozilla's), the system's (SSL_CERT_FILE, else the first bundle of
//   Go's list: /etc/ssl/certs/ca-certificates.crt on Debian, where update-ca-certificates puts local
//   authorities), the files of the directories in SSL_CERT_DIR, and the file NODE_EXTRA_CA_CERTS
//   names (bin/strata keeps node from loading it at start, see scripts/load.cjs);
// - the registry's certificate directory: --cert-dir DIR, else the first of
//   $HOME/.config/containers/certs.d/HOST[:PORT], /etc/containers/certs.d/HOST[:PORT] and
//   /etc/docker/certs.d/HOST[:PORT] that exists. There `*.crt` files are more authorities, and a
//   `NAME.cert` with its `NAME.key` a client certificate (for registries that ask for one).
// One TLS context per registry for the process (building one parses a few hundred certificates).

import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import tls from 'node:tls';
import { ImageError } from '../image/types.js';

/** Go's crypto/x509 system bundles on Linux, in its order. */
const SYSTEM_BUNDLES = [
  '/etc/ssl/certs/ca-certificates.crt',
  '/etc/pki/tls/certs/ca-bundle.crt',
  '/etc/ssl/ca-bundle.pem',
  '/etc/pki/tls/cacert.pem',
  '/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem',
  '/etc/ssl/cert.pem',
];

function readIfThere(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;

/** A PEM certificate without its line breaks, to compare PEM texts. */
function body(pem: string): string {
  return pem.replace(/\s+/g, '');
}

let nodeRoots: Set<string> | null = null;

/**
 * The PEM texts of the authorities trusted for every registry beyond node's own roots (which every
 * context starts with): the system's and the environment's, less those node already has.
 */
function moreRoots(env: NodeJS.ProcessEnv): string[] {
  const texts: string[] = [];
  for (const file of env.SSL_CERT_FILE ? [env.SSL_CERT_FILE] : SYSTEM_BUNDLES) {
    const bundle = readIfThere(file);
    if (bundle === null) continue;
    texts.push(bundle);
    break;
  }
  for (const dir of (env.SSL_CERT_DIR ?? '').split(':').filter(Boolean)) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    for (const n of names) {
      const text = readIfThere(join(dir, n));
      if (text !== null) texts.push(text);
    }
  }
  // (bin/strata's loader has put the variable back by now, see scripts/load.cjs)
  const extra = env.NODE_EXTRA_CA_CERTS ? readIfThere(env.NODE_EXTRA_CA_CERTS) : null;
  if (extra !== null) texts.push(extra);
  nodeRoots ??= new Set(tls.rootCertificates.map(body));
  const seen = new Set<string>();
  const out: string[] = [];
  for (const text of texts) {
    for (const pem of text.match(PEM_CERT) ?? []) {
      const b = body(pem);
      if (nodeRoots.has(b) || seen.has(b)) continue;
      seen.add(b);
      out.push(pem);
    }
  }
  return out;
}

/** The certificate directory of registry `hostPort` ("host" or "host:port"), or null. */
function certDirFor(hostPort: string, certDir: string | undefined, env: NodeJS.ProcessEnv = process.env): string | null {
  if (certDir !== undefined) {
    if (!existsSync(certDir) || !statSync(certDir).isDirectory()) throw new ImageError(`--cert-dir ${certDir}: not a directory`, 2);
    return certDir;
  }
  const bases = [...(env.HOME ? [join(env.HOME, '.config/containers/certs.d')] : []), '/etc/containers/certs.d', '/etc/docker/certs.d'];
  for (const base of bases) {
    const dir = join(base, hostPort);
    if (existsSync(dir)) return dir;
  }
  return null;
}

interface HostTrust {
  /** More authorities (PEM texts). */
  ca: string[];
  /** A client certificate and its key (PEM), when the directory holds one. */
  cert?: string;
  key?: string;
}

/** What a certificate directory holds, read as containers/image reads it. */
function readCertDir(dir: string): HostTrust {
  const names = readdirSync(dir).sort();
  const out: HostTrust = { ca: [] };
  const read = (n: string): string => {
    try {
      return readFileSync(join(dir, n), 'utf8');
    } catch (e) {
      throw new ImageError(`cannot read ${join(dir, n)}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
  };
  for (const n of names) {
    if (n.endsWith('.crt')) out.ca.push(read(n));
    else if (n.endsWith('.cert')) {
      const key = `${n.slice(0, -'.cert'.length)}.key`;
      if (!names.includes(key)) throw new ImageError(`missing key ${key} for the client certificate ${join(dir, n)} (authorities' certificates end in .crt)`);
      if (out.cert !== undefined) continue; // (the first pair, as Go's config takes its first certificate)
      out.cert = read(n);
      out.key = read(key);
    } else if (n.endsWith('.key')) {
      const cert = `${n.slice(0, -'.key'.length)}.cert`;
      if (!names.includes(cert)) throw new ImageError(`missing client certificate ${cert} for the key ${join(dir, n)}`);
    }
  }
  return out;
}

/** The verification failures of a peer whose authority is not among those trusted (node's error codes). */
const UNTRUSTED = new Set(['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_UNTRUSTED']);

/** Did a TLS connection fail because the peer's certificate has no authority strata trusts? */
export function untrustedCertificate(e: unknown): boolean {
  return UNTRUSTED.has((e as NodeJS.ErrnoException | undefined)?.code ?? '');
}

const contexts = new Map<string, tls.SecureContext>();

/** The TLS context for connections of a client of registry `hostPort` (cached per process). */
export function secureContextFor(hostPort: string, certDir: string | undefined, env: NodeJS.ProcessEnv = process.env): tls.SecureContext {
  const key = `${hostPort}\0${certDir ?? ''}`;
  let ctx = contexts.get(key);
  if (ctx) return ctx;
  const dir = certDirFor(hostPort, certDir, env);
  const host = dir === null ? { ca: [] } : readCertDir(dir);
  try {
    // node's roots (parsed once per process and shared), then the others added to this context's own
    // copy of them: a context given all of them as `ca` would parse every one (200 ms here)
    ctx = tls.createSecureContext(host.cert !== undefined ? { cert: host.cert, key: host.key } : {});
    const native = (ctx as unknown as { context: { addCACert(pem: string): void } }).context;
    for (const pem of [...moreRoots(env), ...host.ca.flatMap((text) => text.match(PEM_CERT) ?? [])]) native.addCACert(pem);
  } catch (e) {
    throw new ImageError(`the TLS certificates for ${hostPort}${dir ? ` (${dir})` : ''} are not usable: ${(e as Error).message}`);
  }
  contexts.set(key, ctx);
  return ctx;
}
