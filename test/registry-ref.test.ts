// References as Docker normalizes them, WWW-Authenticate challenges, auth files: the parsing
// the registry client rests on, checked alone.

import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { findCredentials, parseChallenge, removeCredentials, storeCredentials } from '../src/registry/auth.js';
import { formatReference, isLoopback, parseReference } from '../src/registry/reference.js';
import { tempDir } from './helpers/tmp.js';

const D = `sha256:${'ab'.repeat(32)}`;

test('references normalize as Docker\'s: Docker Hub and library/, hosts with ports, tags, digests', (t) => {
  const cases: [string, string][] = [
    ['debian', 'docker.io/library/debian:latest'],
    ['debian:12', 'docker.io/library/debian:12'],
    ['team/app', 'docker.io/team/app:latest'],
    ['docker.io/debian', 'docker.io/library/debian:latest'],
    ['index.docker.io/team/app:1', 'docker.io/team/app:1'],
    ['localhost/app', 'localhost/app:latest'],
    ['localhost:5000/a/b/c:v1.2-rc_3', 'localhost:5000/a/b/c:v1.2-rc_3'],
    ['127.0.0.1:5000/x', '127.0.0.1:5000/x:latest'],
    ['quay.io/org/img@' + D, 'quay.io/org/img@' + D],
    ['quay.io/org/img:1@' + D, 'quay.io/org/img:1@' + D],
    ['[::1]:5000/x:y', '[::1]:5000/x:y'],
    ['a-b__c/e.f', 'docker.io/a-b__c/e.f:latest'],
    ['registry.example.com/a', 'registry.example.com/a:latest'],
  ];
  for (const [input, want] of cases) t.is(formatReference(parseReference(input)), want, input);
});

test('malformed references are refused with exit status 2, naming the reference', (t) => {
  for (const bad of ['', 'Debian', 'a//b', 'a/', '/a', 'a:', 'a:-x', `a:${'x'.repeat(129)}`, 'a@sha256:12', `a@md5:${'0'.repeat(32)}`,
    'a b', 'a.b__c/d', 'quay.io/A/b', 'a/-b', 'a/b_', `x/${'y'.repeat(256)}`]) {
    const e = t.throws(() => parseReference(bad), undefined, JSON.stringify(bad)) as Error & { exitCode?: number };
    t.is(e.exitCode, 2);
    t.true(e.message.startsWith(`invalid reference "${bad}"`), e.message);
  }
});

test('loopback registries: 127/8, ::1 and localhost, with or without a port', (t) => {
  for (const h of ['localhost', 'localhost:5000', '127.0.0.1:5000', '127.1.2.3', '[::1]:5000']) t.true(isLoopback(h), h);
  for (const h of ['docker.io', '10.0.0.1:5000', '127.0.0.1.example.com', 'localhost.localdomain']) t.false(isLoopback(h), h);
});

test('WWW-Authenticate: scheme and parameters, quoted (with escapes and commas) or not', (t) => {
  t.deepEqual(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull"'), {
    scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/debian:pull' },
  });
  t.deepEqual(parseChallenge('Basic realm="a \\"b\\", c"'), { scheme: 'basic', params: { realm: 'a "b", c' } });
  t.deepEqual(parseChallenge('bearer realm=http://x/t, service=s'), { scheme: 'bearer', params: { realm: 'http://x/t', service: 's' } });
  t.is(parseChallenge(undefined), undefined);
  t.is(parseChallenge(''), undefined);
});

test('auth files: Docker\'s and podman\'s keys, most specific first; storing and removing keep the rest', (t) => {
  const dir = tempDir(t, 'af');
  const file = path.join(dir, 'auth.json');
  const b64 = (s: string): string => Buffer.from(s).toString('base64');
  fs.writeFileSync(file, JSON.stringify({
    auths: {
      'https://index.docker.io/v1/': { auth: b64('hub:pw') },
      'quay.io': { auth: b64('q:pw:with:colons') },
      'quay.io/team': { auth: b64('team:x') },
      'https://reg.example:5000': { username: 'u', password: 'p' },
    },
    // (a helper that no machine has: registry.test runs real ones)
    credHelpers: { 'gcr.io': 'strata-test-missing' },
  }));
  t.deepEqual(findCredentials('docker.io', 'library/debian', file), { username: 'hub', password: 'pw' });
  t.deepEqual(findCredentials('quay.io', 'other/x', file), { username: 'q', password: 'pw:with:colons' });
  t.deepEqual(findCredentials('quay.io', 'team/app', file), { username: 'team', password: 'x' });
  t.deepEqual(findCredentials('reg.example:5000', 'a', file), { username: 'u', password: 'p' });
  t.throws(() => findCredentials('gcr.io', 'a', file), { message: /docker-credential-strata-test-missing \(named in .*\) cannot run: not found on PATH/ });
  storeCredentials(file, '127.0.0.1:5000', { username: 'me', password: 'secret' });
  t.deepEqual(findCredentials('127.0.0.1:5000', 'a/b', file), { username: 'me', password: 'secret' });
  t.is(fs.statSync(file).mode & 0o777, 0o600);
  t.true(removeCredentials(file, 'quay.io'));
  t.is(findCredentials('quay.io', 'team/app', file), undefined);
  t.false(removeCredentials(file, 'quay.io'));
  const left = JSON.parse(fs.readFileSync(file, 'utf8')) as { auths: Record<string, unknown>; credHelpers: unknown };
  t.deepEqual(Object.keys(left.auths).sort(), ['127.0.0.1:5000', 'https://index.docker.io/v1/', 'https://reg.example:5000']);
  t.deepEqual(left.credHelpers, { 'gcr.io': 'strata-test-missing' });
  t.throws(() => findCredentials('x', 'y', path.join(dir, 'missing.json')), { message: /cannot read the auth file/ });
  fs.writeFileSync(file, '{not json');
  t.throws(() => findCredentials('x', 'y', file), { message: /is not valid JSON/ });
});
