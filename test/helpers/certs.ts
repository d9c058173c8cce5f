// Test certificates made with openssl: an authority, a server certificate for 127.0.0.1 signed by it,
// and a client certificate signed by it (files in a temp dir the test removes).
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { runOk } from './exec.js';
import { tempDir } from './tmp.js';

export interface TestCerts {
  dir: string;
  /** The authority's certificate (PEM file). */
  ca: string;
  /** The server's certificate and key, for 127.0.0.1 (and the name `serverName`, when given). */
  serverCert: string;
  serverKey: string;
  /** A client certificate and key signed by the authority. */
  clientCert: string;
  clientKey: string;
}

export function makeCerts(t: ExecutionContext, serverName?: string): TestCerts {
  const dir = tempDir(t, 'certs');
  const f = (n: string): string => path.join(dir, n);
  const ssl = (args: string[]): void => void runOk('openssl', args);
  ssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '2', '-subj', '/CN=strata test authority']);
  const sign = (name: string, subject: string, ext: string): void => {
    ssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', subject]);
    fs.writeFileSync(f(`${name}.ext`), ext);
    ssl(['x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f(`${name}.pem`),
      '-days', '2', '-extfile', f(`${name}.ext`)]);
  };
  sign('server', '/CN=127.0.0.1', `subjectAltName=IP:127.0.0.1${serverName ? `,DNS:${serverName}` : ''}\n`);
  sign('client', '/CN=strata test client', 'extendedKeyUsage=clientAuth\n');
  return { dir, ca: f('ca.crt'), serverCert: f('server.pem'), serverKey: f('server.key'), clientCert: f('client.pem'), clientKey: f('client.key') };
}
