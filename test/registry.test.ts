// `strata pull` and `strata push` against a real registry (Docker's distribution, started on
// 127.0.0.1 by each test): round trips that keep image IDs, manifest digests and every file;
// skopeo and podman reading what strata pushed and writing what strata pulls; multi-platform
// indexes; layers the store holds not downloaded again; Basic and Bearer-token authentication
// with redirected blob downloads; and bad input refused in one line without touching the store.

import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { compareTrees } from './helpers/compare.js';
import { run, runWithPipes, type RunResult } from './helpers/exec.js';
import {
  dockerArchive, imageOk, makeTar, PODMAN_RUN, podmanImport, sha256Hex, storeState, testPodman, twoLayerImage,
} from './helpers/image-store.js';
import { strataBin } from './helpers/paths.js';
import { makeCerts } from './helpers/certs.js';
import { startProxy, startSocksProxy } from './helpers/proxy.js';
import { startRegistry, startTokenFront } from './helpers/registry.js';
import { type NodeInfo, snapshot } from './helpers/snapshot.js';
import { tempDir } from './helpers/tmp.js';

const ROOTFS_L0 = '/var/cache/strata/rootfs/l0';
const HOST_ARCH = ({ x64: 'amd64', arm64: 'arm64' } as Record<string, string>)[process.arch] ?? process.arch;

function strata(args: readonly string[], env?: NodeJS.ProcessEnv): RunResult {
  return run(strataBin, args, { timeoutMs: 300_000, ...(env ? { env: { ...process.env, ...env } } : {}) });
}

function strataOk(t: ExecutionContext, args: readonly string[], env?: NodeJS.ProcessEnv): string {
  const r = strata(args, env);
  if (r.status !== 0) t.fail(`strata ${args.join(' ')}: exit ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** A failed command: exit status, and its error as one line starting "strata: ". */
function refused(t: ExecutionContext, r: RunResult, status: number, pattern: RegExp): void {
  t.is(r.status, status, `${r.command}: ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  t.is(lines.length, 1, `one line: ${r.stderr}`);
  t.regex(lines[0]!, /^strata: /);
  t.regex(lines[0]!, pattern);
}

interface PullJson { id: string; reference: string; digest: string; downloaded: number; reused: number }
interface PushJson { reference: string; digest: string; size: number; uploaded: number; skipped: number; mounted: number }

function pull(t: ExecutionContext, store: string, ref: string, more: readonly string[] = []): PullJson {
  return JSON.parse(strataOk(t, ['pull', ref, '--store', store, '--json', ...more])) as PullJson;
}

function push(t: ExecutionContext, store: string, image: string, dest: string, more: readonly string[] = []): PushJson {
  return JSON.parse(strataOk(t, ['push', image, dest, '--store', store, '--json', ...more])) as PushJson;
}

function inspect(t: ExecutionContext, store: string, ref: string): { Id: string; RepoTags: string[]; RepoDigests: string[]; Metadata: { ManifestDigest: string } } {
  return (JSON.parse(imageOk(t, store, ['inspect', ref])) as ReturnType<typeof inspect>[])[0]!;
}

function skopeo(t: ExecutionContext, args: readonly string[]): string {
  const r = run('skopeo', args, { timeoutMs: 300_000 });
  if (r.status !== 0) t.fail(`skopeo ${args.join(' ')}: exit ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** ctime cannot be carried; directory sizes depend on how entries were written. */
function ignoreUnportable(p: string, f: keyof NodeInfo, info: NodeInfo): boolean {
  return f === 'ctimeNs' || f === 'blocks' || (info.type === 'dir' && f === 'size') || (p === '.' && f === 'mtimeNs');
}

/** Every layer directory of an image in one store against the other's (the kernel-format trees, whiteouts included). */
function sameLayers(t: ExecutionContext, storeA: string, refA: string, storeB: string, refB: string): void {
  const a = imageOk(t, storeA, ['lowerdir', refA, '--json']);
  const b = imageOk(t, storeB, ['lowerdir', refB, '--json']);
  const la = (JSON.parse(a) as { lowerdir: string[] }).lowerdir;
  const lb = (JSON.parse(b) as { lowerdir: string[] }).lowerdir;
  t.is(la.length, lb.length);
  la.forEach((d, i) => t.is(compareTrees(t, snapshot(lb[i]!), snapshot(d), { ignore: (p, f) => f === 'ctimeNs' || (p === '.' && f === 'mtimeNs'), label: `layer ${i}` }), 0));
}

test.before(() => {
  for (const cmd of ['docker-registry', 'htpasswd', 'skopeo', 'podman']) {
    if (run('sh', ['-c', `command -v ${cmd}`]).status !== 0) throw new Error(`${cmd} is not installed (make system-deps installs it)`);
  }
});

test.serial('push, then pull into an empty store: same image ID, manifest digest and layers; skopeo reads the push; a second pull downloads nothing', async (t) => {
  const reg = await startRegistry(t);
  const built = await twoLayerImage(t);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  const src = inspect(t, built.store, 'test/two:1');
  const ref = `${reg.host}/t/two:1`;
  const pushed = push(t, built.store, 'test/two:1', ref);
  t.is(pushed.digest, src.Metadata.ManifestDigest, 'the registry holds the stored manifest');
  t.is(pushed.uploaded, 3);
  t.deepEqual(inspect(t, built.store, 'test/two:1').RepoDigests, [`${reg.host}/t/two@${pushed.digest}`]);
  // skopeo: the raw manifest hashes to that digest, and the image it describes has the same layers
  const raw = skopeo(t, ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`]);
  t.is(`sha256:${sha256Hex(raw)}`, pushed.digest);
  const sk = JSON.parse(skopeo(t, ['inspect', '--config', '--tls-verify=false', `docker://${ref}`])) as { rootfs: { diff_ids: string[] } };
  t.is(sk.rootfs.diff_ids.length, 2);
  // A second push sends nothing again; a push to another repository of the registry mounts the blobs from the first.
  const again = push(t, built.store, 'test/two:1', ref);
  t.deepEqual([again.uploaded, again.skipped, again.mounted, again.digest], [0, 3, 0, pushed.digest]);
  const copy = push(t, built.store, 'test/two:1', `${reg.host}/t/copy:1`);
  t.deepEqual([copy.uploaded, copy.skipped, copy.mounted, copy.digest], [0, 0, 3, pushed.digest]);
  t.is(`sha256:${sha256Hex(skopeo(t, ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/t/copy:1`]))}`, pushed.digest);

  const other = path.join(tempDir(t, 'st'), 'store');
  const pulled = pull(t, other, ref);
  t.deepEqual([pulled.id, pulled.digest, pulled.downloaded, pulled.reused], [src.Id, pushed.digest, 2, 0]);
  const got = inspect(t, other, ref);
  t.is(got.Metadata.ManifestDigest, pushed.digest);
  t.deepEqual(got.RepoTags, [ref]);
  t.deepEqual(got.RepoDigests, [`${reg.host}/t/two@${pushed.digest}`]);
  sameLayers(t, built.store, 'test/two:1', other, ref);
  // Pulled again: nothing downloaded; by digest: the same image, no new tag.
  const second = pull(t, other, ref);
  t.deepEqual([second.id, second.downloaded, second.reused], [src.Id, 0, 2]);
  const byDigest = pull(t, other, `${reg.host}/t/two@${pushed.digest}`);
  t.is(byDigest.id, src.Id);
  t.deepEqual(inspect(t, other, src.Id).RepoTags, [ref]);
  // A Docker schema 2 manifest (skopeo --format v2s2): pulled as it is; saved as an OCI layout with
  // OCI media types (as skopeo and podman write them), which umoci reads.
  skopeo(t, ['copy', '-q', '--format', 'v2s2', '--src-tls-verify=false', '--dest-tls-verify=false', `docker://${ref}`, `docker://${reg.host}/t/v2s2:1`]);
  const v2 = pull(t, other, `${reg.host}/t/v2s2:1`);
  t.is(v2.id, src.Id);
  t.is(v2.digest, `sha256:${sha256Hex(skopeo(t, ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/t/v2s2:1`]))}`);
  const layout = path.join(tempDir(t, 'ol'), 'layout');
  imageOk(t, other, ['save', `${reg.host}/t/v2s2:1`, '--format', 'oci-dir', '-o', layout]);
  const bundle = path.join(path.dirname(layout), 'bundle');
  const um = run('umoci', ['unpack', '--image', `${layout}:${reg.host}/t/v2s2:1`, bundle], { timeoutMs: 120_000 });
  t.is(um.status, 0, um.stderr);
  t.true(fs.existsSync(path.join(bundle, 'rootfs', 'd', 'new')), 'umoci unpacked the image');

  // The plain output: the image ID on stdout; steps only on a terminal.
  const plain = strata(['pull', ref, '--store', other]);
  t.is(plain.status, 0);
  t.is(plain.stdout, `${src.Id}\n`);
  t.is(plain.stderr, '');
  const shown = run('script', ['-qec', `${strataBin} pull ${ref} --store ${other}`, '/dev/null'], { timeoutMs: 60_000 });
  t.regex(shown.stdout, /Trying to pull [^\n]*\n[\s\S]*Layer already stored [0-9a-f]{12}/);
});

test.serial('zstd-compressed layers (skopeo --dest-compress-format zstd): pulled and loaded as the gzip image, saved for docker as plain tars, pushed as they came', async (t) => {
  const reg = await startRegistry(t);
  const built = await twoLayerImage(t);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  const src = inspect(t, built.store, 'test/two:1');
  push(t, built.store, 'test/two:1', `${reg.host}/t/two:1`);
  const zref = `${reg.host}/t/zst:1`;
  skopeo(t, ['copy', '-q', '--dest-compress', '--dest-compress-format', 'zstd', '--src-tls-verify=false', '--dest-tls-verify=false', `docker://${reg.host}/t/two:1`, `docker://${zref}`]);
  const raw = skopeo(t, ['inspect', '--raw', '--tls-verify=false', `docker://${zref}`]);
  t.true((JSON.parse(raw) as { layers: { mediaType: string }[] }).layers.every((l) => l.mediaType.endsWith('+zstd')), 'skopeo wrote zstd layers');
  // pulled: the same image (its config names the same diff IDs) and the same layer trees
  const other = path.join(tempDir(t, 'st'), 'store');
  const pulled = pull(t, other, zref);
  t.deepEqual([pulled.id, pulled.digest, pulled.downloaded], [src.Id, `sha256:${sha256Hex(raw)}`, 2]);
  sameLayers(t, built.store, 'test/two:1', other, zref);
  // pushed again: the blobs and the manifest as they came
  const back = push(t, other, zref, `${reg.host}/t/zst-back:1`);
  t.is(back.digest, pulled.digest);
  // a docker archive holds plain tars: a fresh store loads it as the same image
  const dir = tempDir(t, 'za');
  imageOk(t, other, ['save', zref, '-o', path.join(dir, 'docker.tar')]);
  imageOk(t, path.join(dir, 's1'), ['load', '-i', path.join(dir, 'docker.tar')]);
  t.is(inspect(t, path.join(dir, 's1'), zref).Id, src.Id);
  // an OCI layout skopeo wrote with zstd layers loads too
  skopeo(t, ['copy', '-q', '--src-tls-verify=false', `docker://${zref}`, `oci:${path.join(dir, 'layout')}:t/zst:1`]);
  imageOk(t, path.join(dir, 's2'), ['load', '-i', path.join(dir, 'layout')]);
  sameLayers(t, built.store, 'test/two:1', path.join(dir, 's2'), 't/zst:1');
  // a blob that is not zstd after its magic number: one line, nothing stored
  const bad = path.join(dir, 'bad');
  fs.cpSync(path.join(dir, 'layout'), bad, { recursive: true });
  const idx = JSON.parse(fs.readFileSync(path.join(bad, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const man = JSON.parse(fs.readFileSync(path.join(bad, 'blobs/sha256', idx.manifests[0]!.digest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
  const blob = path.join(bad, 'blobs/sha256', man.layers[0]!.digest.slice(7));
  const bytes = fs.readFileSync(blob);
  bytes.fill(0x55, 8, Math.min(bytes.length, 200));
  fs.writeFileSync(blob, bytes);
  const s3 = path.join(dir, 's3');
  refused(t, strata(['load', '-i', bad, '--store', s3]), 1, /zstd/);
  t.deepEqual(JSON.parse(imageOk(t, s3, ['ls', '--json'])), [], 'nothing stored');
});

test.serial('through an HTTP proxy from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY, the proxy\'s Basic credentials), as podman takes it; loopback registries directly', async (t) => {
  const reg = await startRegistry(t);
  const built = await twoLayerImage(t);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  // a name that resolves nowhere: only the proxy reaches the registry under it
  const name = `registry.invalid:${reg.host.split(':')[1]}`;
  const proxy = await startProxy(t, { [name]: reg.host }, 'pu:p w');
  const withCreds = (pw: string): string => proxy.url.replace('//', `//pu:${encodeURIComponent(pw)}@`);
  const env = (more: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({ ...process.env, HTTPS_PROXY: withCreds('p w'), http_proxy: withCreds('p w'), NO_PROXY: '', ...more });
  // (the proxy serves from this process: the commands run without blocking it)
  const strataAsync = (args: string[], e: NodeJS.ProcessEnv) => runWithPipes(strataBin, args, { env: e, timeoutMs: 180_000 });
  const pushed = await strataAsync(['push', 'test/two:1', `${name}/t/p:1`, '--store', built.store, '--tls-verify=false', '--json'], env());
  t.is(pushed.status, 0, pushed.stderr);
  t.true(proxy.seen.some((l) => l === `CONNECT ${name}`), 'https tried first, through a tunnel');
  t.true(proxy.seen.some((l) => l === `PUT http://${name}/v2/t/p/manifests/1`), 'then http: the manifest went through the proxy');
  const other = path.join(tempDir(t, 'st'), 'store');
  const pulled = await strataAsync(['pull', `${name}/t/p:1`, '--store', other, '--tls-verify=false', '--json'], env());
  t.is(pulled.status, 0, pulled.stderr);
  t.is((JSON.parse(pulled.stdout) as PullJson).downloaded, 2);
  sameLayers(t, built.store, 'test/two:1', other, `${name}/t/p:1`);
  // NO_PROXY names it (a domain's subdomains): reached directly, where it resolves nowhere
  const direct = await strataAsync(['pull', `${name}/t/p:1`, '--store', other, '--tls-verify=false'], env({ NO_PROXY: 'example.com, .invalid' }));
  t.is(direct.status, 1);
  t.regex(direct.stderr, /^strata: cannot reach the registry registry\.invalid:\d+: no such host\n$/);
  // the proxy's credentials refused: one line that says so
  const wrong = await strataAsync(['pull', `${name}/t/p:1`, '--store', other, '--tls-verify=false'], env({ HTTPS_PROXY: withCreds('bad'), http_proxy: withCreds('bad') }));
  t.is(wrong.status, 1);
  t.regex(wrong.stderr, /^strata: [^\n]*proxy authentication required[^\n]*\n$/);
  // a loopback registry is reached directly
  const seen = proxy.seen.length;
  const loop = await strataAsync(['pull', `${reg.host}/t/p:1`, '--store', other, '--json'], env());
  t.is(loop.status, 0, loop.stderr);
  t.is(proxy.seen.length, seen, 'the proxy saw nothing of it');
});

test.serial('through an https:// proxy (its authority from NODE_EXTRA_CA_CERTS) and a SOCKS5 proxy (socks5h://, a user and password); one line when either refuses', async (t) => {
  const certs = makeCerts(t);
  const reg = await startRegistry(t);
  const built = await twoLayerImage(t);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  const name = `registry.invalid:${reg.host.split(':')[1]}`;
  const hp = await startProxy(t, { [name]: reg.host }, 'pu:pw', { cert: certs.serverCert, key: certs.serverKey });
  const sp = await startSocksProxy(t, { [name]: reg.host }, { user: 'su', password: 's p' });
  const strataAsync = (args: string[], e: NodeJS.ProcessEnv) => runWithPipes(strataBin, args, { env: { ...process.env, NO_PROXY: '', ...e }, timeoutMs: 180_000 });
  const viaHttps = (more: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => {
    const url = hp.url.replace('//', '//pu:pw@');
    return { HTTPS_PROXY: url, HTTP_PROXY: url, NODE_EXTRA_CA_CERTS: certs.ca, ...more };
  };
  const pushed = await strataAsync(['push', 'test/two:1', `${name}/t/p:1`, '--store', built.store, '--tls-verify=false', '--json'], viaHttps());
  t.is(pushed.status, 0, pushed.stderr);
  t.true(hp.seen.includes(`CONNECT ${name}`), 'https tried first, through a tunnel inside TLS to the proxy');
  t.true(hp.seen.includes(`PUT http://${name}/v2/t/p/manifests/1`), 'then http, in absolute form inside TLS to the proxy');
  // without the proxy's authority: its certificate is refused, in one line
  const untrusted = await strataAsync(['pull', `${name}/t/p:1`, '--store', path.join(tempDir(t, 'st'), 'store'), '--tls-verify=false'],
    viaHttps({ NODE_EXTRA_CA_CERTS: '' }));
  t.is(untrusted.status, 1);
  t.regex(untrusted.stderr, /^strata: cannot reach the registry registry\.invalid:\d+: cannot reach the proxy https:\/\/127\.0\.0\.1:\d+: [^\n]*certificate[^\n]*\n$/);
  // SOCKS5, the name resolved by the proxy
  const socks = (password: string): NodeJS.ProcessEnv => {
    const url = sp.url.replace('socks5://', `socks5h://su:${encodeURIComponent(password)}@`);
    return { https_proxy: url, http_proxy: url };
  };
  const other = path.join(tempDir(t, 'st'), 'store');
  const pulled = await strataAsync(['pull', `${name}/t/p:1`, '--store', other, '--tls-verify=false', '--json'], socks('s p'));
  t.is(pulled.status, 0, pulled.stderr);
  t.is((JSON.parse(pulled.stdout) as PullJson).downloaded, 2);
  sameLayers(t, built.store, 'test/two:1', other, `${name}/t/p:1`);
  t.true(sp.seen.includes('AUTH ok') && sp.seen.includes(`CONNECT ${name}`), sp.seen.join(', '));
  const wrong = await strataAsync(['pull', `${name}/t/p:1`, '--store', other, '--tls-verify=false'], socks('bad'));
  t.is(wrong.status, 1);
  t.regex(wrong.stderr, /^strata: [^\n]*the proxy socks5h:\/\/127\.0\.0\.1:\d+ refused the connection to registry\.invalid:\d+: wrong user name or password\n$/);
  const nowhere = await strataAsync(['pull', 'elsewhere.invalid/t/p:1', '--store', other], socks('s p'));
  t.is(nowhere.status, 1);
  t.regex(nowhere.stderr, /^strata: [^\n]*refused the connection to elsewhere\.invalid:443: host unreachable\n$/);
});

test.serial('a registry with TLS: its authority from --cert-dir, certs.d, NODE_EXTRA_CA_CERTS or SSL_CERT_FILE, as podman and skopeo take it; one line when none has it', async (t) => {
  const certs = makeCerts(t);
  const reg = await startRegistry(t, { tls: { cert: certs.serverCert, key: certs.serverKey } });
  const built = await twoLayerImage(t);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  const ref = `${reg.host}/t/tls:1`;
  // (a loopback registry: --tls-verify asks for the check that strata, as podman, skips there by default)
  refused(t, strata(['push', 'test/two:1', ref, '--store', built.store, '--tls-verify']), 1,
    /cannot reach the registry 127\.0\.0\.1:\d+: its certificate is not trusted \([^)]*\): put its authority in \/etc\/containers\/certs\.d\/127\.0\.0\.1:\d+\/ca\.crt/);
  const dir = tempDir(t, 'certdir');
  fs.copyFileSync(certs.ca, path.join(dir, 'ca.crt'));
  const pushed = push(t, built.store, 'test/two:1', ref, ['--tls-verify', '--cert-dir', dir]);
  // skopeo, given the same directory, reads what strata pushed
  t.is(`sha256:${sha256Hex(skopeo(t, ['inspect', '--raw', '--cert-dir', dir, `docker://${ref}`]))}`, pushed.digest);
  // podman's place for it, /etc/containers/certs.d/HOST:PORT (this registry's port: nothing else uses it)
  const certsD = `/etc/containers/certs.d/${reg.host}`;
  fs.mkdirSync(certsD, { recursive: true });
  t.teardown(() => fs.rmSync(certsD, { recursive: true, force: true }));
  fs.copyFileSync(certs.ca, path.join(certsD, 'test-ca.crt'));
  const s1 = path.join(tempDir(t, 'st'), 'store');
  t.is(pull(t, s1, ref, ['--tls-verify']).downloaded, 2);
  sameLayers(t, built.store, 'test/two:1', s1, ref);
  fs.rmSync(certsD, { recursive: true, force: true });
  // the authority from the environment, as Go (SSL_CERT_FILE) and node (NODE_EXTRA_CA_CERTS) take it
  for (const v of ['NODE_EXTRA_CA_CERTS', 'SSL_CERT_FILE']) {
    const s = path.join(tempDir(t, 'st'), 'store');
    t.is((JSON.parse(strataOk(t, ['pull', ref, '--store', s, '--tls-verify', '--json'], { [v]: certs.ca })) as PullJson).downloaded, 2, v);
  }
  refused(t, strata(['pull', ref, '--store', s1, '--cert-dir', path.join(dir, 'nope')]), 2, /--cert-dir .*nope: not a directory/);
});

test.serial('a registry that wants a client certificate: NAME.cert and NAME.key from the certificate directory; one line without them', async (t) => {
  const certs = makeCerts(t);
  const reg = await startRegistry(t, { tls: { cert: certs.serverCert, key: certs.serverKey, clientCa: certs.ca } });
  const built = await twoLayerImage(t);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  const ref = `${reg.host}/t/mtls:1`;
  const dir = tempDir(t, 'certdir');
  fs.copyFileSync(certs.ca, path.join(dir, 'ca.crt'));
  refused(t, strata(['push', 'test/two:1', ref, '--store', built.store, '--tls-verify', '--cert-dir', dir]), 1,
    /it refused the TLS connection \([^)]*\): it wants a client certificate it trusts/);
  fs.copyFileSync(certs.clientCert, path.join(dir, 'client.cert'));
  fs.copyFileSync(certs.clientKey, path.join(dir, 'client.key'));
  push(t, built.store, 'test/two:1', ref, ['--tls-verify', '--cert-dir', dir]);
  // (also where strata skips the server's check: the client certificate is still shown)
  const s1 = path.join(tempDir(t, 'st'), 'store');
  t.is(pull(t, s1, ref, ['--cert-dir', dir]).downloaded, 2);
  sameLayers(t, built.store, 'test/two:1', s1, ref);
  t.is(JSON.parse(skopeo(t, ['inspect', '--cert-dir', dir, `docker://${ref}`])).Name, `${reg.host}/t/mtls`);
  // a key without its certificate, as containers/image refuses it
  const half = tempDir(t, 'half');
  fs.copyFileSync(certs.clientKey, path.join(half, 'client.key'));
  refused(t, strata(['pull', ref, '--store', s1, '--cert-dir', half]), 1, /missing client certificate client\.cert for the key .*client\.key/);
});

test.serial('podman pushes what strata pulls (same ID and tree as the rootfs); strata pushes what podman pulls and runs', async (t) => {
  if (!fs.existsSync(ROOTFS_L0)) throw new Error(`${ROOTFS_L0} is missing (make rootfs builds it)`);
  const reg = await startRegistry(t);
  const base = tempDir(t, 'pp');
  const { podman, ok } = testPodman(t, base);
  const podmanId = podmanImport(ok, base, ROOTFS_L0, 'localhost/deb:l0');
  ok(['push', '--tls-verify=false', 'localhost/deb:l0', `${reg.host}/pd/deb:1`]);

  const store = path.join(base, 'store');
  const pulled = pull(t, store, `${reg.host}/pd/deb:1`);
  t.is(pulled.id, `sha256:${podmanId}`, 'the image ID podman has');
  const lower = imageOk(t, store, ['lowerdir', pulled.id]).trim();
  t.is(compareTrees(t, snapshot(lower), snapshot(ROOTFS_L0), { ignore: ignoreUnportable, label: 'the pulled layer vs the rootfs podman imported' }), 0);

  // strata run pulls an image the store lacks (--pull missing), or refuses (--pull never).
  const runStore = path.join(base, 'run-store');
  refused(t, strata(['run', '--rm', '--pull', 'never', '--store', runStore, `${reg.host}/pd/deb:1`, 'true']), 125, /no such image/);
  t.is(strataOk(t, ['run', '--rm', '--store', runStore, `${reg.host}/pd/deb:1`, 'cat', '/etc/debian_version']),
    fs.readFileSync(path.join(ROOTFS_L0, 'etc/debian_version'), 'utf8'));
  t.is((JSON.parse(imageOk(t, runStore, ['ls', '--json'])) as { id: string }[])[0]!.id, pulled.id);
  refused(t, strata(['run', '--rm', '--store', runStore, `${reg.host}/pd/none:1`, 'true']), 125,
    /no such image: .*pd\/none:1 \(not in the store, and pulling it failed: .*not found in the registry/);

  // strata's push of what it pulled (podman's gzip blob and manifest, as they were) under a new name
  const pushed = push(t, store, pulled.id, `${reg.host}/st/deb:2`);
  t.is(pushed.digest, pulled.digest, 'the same manifest');
  // and an image strata made itself (a commit: an uncompressed layer, an OCI manifest)
  const ctr = strataOk(t, ['run', '--name', 'mk', '--store', store, pulled.id, 'sh', '-c', 'echo from-strata > /etc/strata-mark; cat /etc/debian_version']);
  t.regex(ctr, /^\d+/);
  strataOk(t, ['commit', 'mk', 'local/committed:1', '--store', store]);
  push(t, store, 'local/committed:1', `${reg.host}/st/committed:1`);
  for (const [name, expect] of [[`${reg.host}/st/deb:2`, /^cat: .*No such file/], [`${reg.host}/st/committed:1`, /^from-strata$/]] as const) {
    ok(['pull', '--tls-verify=false', name]);
    const r = podman(['run', '--rm', ...PODMAN_RUN, name, 'sh', '-c', 'cat /etc/strata-mark 2>&1; true']);
    t.is(r.status, 0, r.stderr);
    t.regex(r.stdout.trim(), expect, name);
  }
});

/** PUT of a manifest or index document straight to the registry. */
function putDocument(host: string, repo: string, tag: string, mediaType: string, body: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(`http://${host}/v2/${repo}/manifests/${tag}`, { method: 'PUT', headers: { 'content-type': mediaType, 'content-length': body.length } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end(body);
  });
}

test.serial('an index: the host\'s platform by default, --platform picks another, a platform it lacks is refused naming those it has', async (t) => {
  const reg = await startRegistry(t);
  const base = tempDir(t, 'ix');
  const store = path.join(base, 'store');
  const ids: Record<string, string> = {};
  const descs = [];
  for (const arch of ['amd64', 'arm64']) {
    const layer = path.join(base, `${arch}.tar`);
    fs.writeFileSync(layer, await makeTar([{ name: 'arch', data: `${arch}\n` }]));
    const archive = path.join(base, `${arch}-img.tar`);
    [ids[arch]] = dockerArchive(base, [{ tags: [`multi/${arch}:1`], layers: [layer], architecture: arch }], archive);
    imageOk(t, store, ['load', '-i', archive]);
    const pushed = push(t, store, `multi/${arch}:1`, `${reg.host}/multi:${arch}`);
    descs.push({
      mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: pushed.digest, size: pushed.size,
      platform: { os: 'linux', architecture: arch, ...(arch === 'arm64' ? { variant: 'v8' } : {}) },
    });
  }
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: descs }));
  t.is(await putDocument(reg.host, 'multi', '1', 'application/vnd.oci.image.index.v1+json', index), 201);
  const indexDigest = `sha256:${sha256Hex(index)}`;

  const fresh = (): string => path.join(tempDir(t, 'st'), 'store');
  const host = pull(t, fresh(), `${reg.host}/multi:1`);
  if (HOST_ARCH === 'amd64' || HOST_ARCH === 'arm64') t.is(host.id, ids[HOST_ARCH]);
  t.is(host.digest, indexDigest, 'the reference names the index');
  const s2 = fresh();
  const arm = pull(t, s2, `${reg.host}/multi:1`, ['--platform', 'linux/arm64']);
  t.is(arm.id, ids.arm64);
  t.deepEqual(inspect(t, s2, arm.id).RepoDigests, [`${reg.host}/multi@${indexDigest}`]);
  t.is(pull(t, fresh(), `${reg.host}/multi@${indexDigest}`, ['--platform', 'linux/amd64']).id, ids.amd64);
  t.is(pull(t, fresh(), `${reg.host}/multi:1`, ['--platform', 'linux/arm64/v8']).id, ids.arm64);
  const s3 = fresh();
  const before = storeState(s3);
  refused(t, strata(['pull', `${reg.host}/multi:1`, '--store', s3, '--platform', 'linux/s390x']), 1, /no image for linux\/s390x in the index \(it has: linux\/amd64, linux\/arm64\/v8\)/);
  refused(t, strata(['pull', `${reg.host}/multi:1`, '--store', s3, '--platform', 'linux']), 2, /--platform takes OS\/ARCH/);
  t.is(storeState(s3), before);
});

test.serial('layers the store holds are not downloaded: a pull of an image on a stored base fetches only its top layer', async (t) => {
  const reg = await startRegistry(t);
  const built = await twoLayerImage(t);
  const baseArchive = path.join(built.base, 'base.tar');
  dockerArchive(built.base, [{ tags: ['test/base:1'], layers: [path.join(built.base, 'l0.tar')] }], baseArchive);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  imageOk(t, built.store, ['load', '-i', baseArchive]);
  push(t, built.store, 'test/base:1', `${reg.host}/t/base:1`);
  // The second image's base layer is in another repository of the registry: mounted from there.
  const two = push(t, built.store, 'test/two:1', `${reg.host}/t/two:1`);
  t.deepEqual([two.uploaded, two.mounted], [2, 1]);

  const store = path.join(tempDir(t, 'st'), 'store');
  pull(t, store, `${reg.host}/t/base:1`);
  // Gone from the registry: a pull that asked for it would fail.
  const baseBlob = JSON.parse(skopeo(t, ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/t/base:1`])) as { layers: { digest: string }[] };
  fs.rmSync(reg.blobFile(baseBlob.layers[0]!.digest));
  const r = pull(t, store, `${reg.host}/t/two:1`);
  t.deepEqual([r.downloaded, r.reused], [1, 1]);
  sameLayers(t, built.store, 'test/two:1', store, `${reg.host}/t/two:1`);
  const fresh = path.join(tempDir(t, 'st'), 'store');
  const before = storeState(fresh);
  refused(t, strata(['pull', `${reg.host}/t/two:1`, '--store', fresh]), 1, /blob sha256:[0-9a-f]{64} is missing from the registry/);
  t.is(storeState(fresh), before, 'a failed pull leaves the store as it was');
  // An image with the same layer blob twice (as images with several empty layers have it).
  const emptyTar = path.join(built.base, 'empty.tar');
  fs.writeFileSync(emptyTar, await makeTar([]));
  const twiceArchive = path.join(built.base, 'twice.tar');
  dockerArchive(built.base, [{ tags: ['test/twice:1'], layers: [emptyTar, path.join(built.base, 'l1.tar'), emptyTar] }], twiceArchive);
  imageOk(t, built.store, ['load', '-i', twiceArchive]);
  push(t, built.store, 'test/twice:1', `${reg.host}/t/twice:1`);
  const twiceStore = path.join(tempDir(t, 'st'), 'store');
  const tw = pull(t, twiceStore, `${reg.host}/t/twice:1`);
  t.deepEqual([tw.downloaded, tw.reused], [3, 0]);
  sameLayers(t, built.store, 'test/twice:1', twiceStore, `${reg.host}/t/twice:1`);
  // Two pulls of the same image into one store at once: both succeed, one copy of each layer.
  const both = await Promise.all([0, 1].map(() => runWithPipes(strataBin, ['pull', `${reg.host}/t/two:1`, '--store', store, '-q'], { timeoutMs: 120_000 })));
  for (const b of both) t.is(b.status, 0, b.stderr);
  t.is(fs.readdirSync(path.join(store, 'layers')).length, 2);
});

test.serial('bad input is one line and leaves the store as it was: a tampered blob, a missing tag or digest, no registry, bad references', async (t) => {
  const reg = await startRegistry(t);
  const built = await twoLayerImage(t);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  const pushed = push(t, built.store, 'test/two:1', `${reg.host}/t/two:1`);
  const store = path.join(tempDir(t, 'st'), 'store');
  const before = storeState(store);
  const tries: [string[], number, RegExp][] = [
    [['pull', `${reg.host}/t/two:nope`], 1, /t\/two:nope: not found in the registry \(MANIFEST_UNKNOWN/],
    [['pull', `${reg.host}/t/none:1`], 1, /not found in the registry/],
    [['pull', `${reg.host}/t/two@sha256:${'0'.repeat(64)}`], 1, /not found in the registry/],
    [['pull', `${reg.host}/t/two@sha256:abc`], 2, /invalid reference .*sha256: and 64 lowercase hex/],
    [['pull', `${reg.host}/T/Two:1`], 2, /invalid reference/],
    [['pull', 'bad ref'], 2, /invalid reference/],
    [['pull', '127.0.0.1:1/x:1'], 1, /cannot reach the registry 127\.0\.0\.1:1: connection refused/],
    [['pull', `${reg.host}/t/two:1`, '--creds', 'nocolon'], 2, /--creds takes USER:PASSWORD/],
    [['pull', `${reg.host}/t/two:1`, '--authfile', '/nonexistent/auth.json'], 2, /cannot read the auth file/],
    [['pull', `${reg.host}/t/two:1`, '--bogus'], 2, /unknown option --bogus/],
    [['push', 'no/such:image', `${reg.host}/x:1`], 1, /no such image: no\/such:image/],
    [['push', 'test/two:1', `${reg.host}/x@${pushed.digest}`], 2, /push to a tag, not a digest/],
  ];
  for (const [args, status, pattern] of tries) refused(t, strata([...args, '--store', args[0] === 'push' ? built.store : store]), status, pattern);
  t.is(storeState(store), before);

  // A layer blob changed in the registry's storage (same length): the pull stops at the digest.
  const manifest = JSON.parse(skopeo(t, ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/t/two:1`])) as { layers: { digest: string }[] };
  const file = reg.blobFile(manifest.layers[1]!.digest);
  const bytes = fs.readFileSync(file);
  bytes[bytes.length - 2000] = bytes[bytes.length - 2000]! ^ 0xff;
  fs.writeFileSync(file, bytes);
  refused(t, strata(['pull', `${reg.host}/t/two:1`, '--store', store]), 1, /layer (digest|diff ID) mismatch/);
  t.is(storeState(store), before, 'no layer, no image, no temp file');
  // The config changed: refused before any layer is fetched.
  const cfg = reg.blobFile(inspect(t, built.store, 'test/two:1').Id);
  const c = fs.readFileSync(cfg);
  fs.writeFileSync(cfg, Buffer.from(c.toString('latin1').replace('"linux"', '"Linux"'), 'latin1'));
  refused(t, strata(['pull', `${reg.host}/t/two:1`, '--store', store]), 1, /config digest mismatch/);
  t.is(storeState(store), before);
});

test.serial('Basic authentication: refused without credentials and with wrong ones; --creds, an --authfile and $REGISTRY_AUTH_FILE work; login and logout, read and written by podman too', async (t) => {
  const password = 'pa:ss word';
  const reg = await startRegistry(t, { users: { alice: password } });
  const built = await twoLayerImage(t);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  const ref = `${reg.host}/a/two:1`;
  refused(t, strata(['push', 'test/two:1', ref, '--store', built.store]), 1, /authentication required/);
  refused(t, strata(['push', 'test/two:1', ref, '--store', built.store, '--creds', 'alice:wrong']), 1, /the credentials were refused/);
  push(t, built.store, 'test/two:1', ref, ['--creds', `alice:${password}`]);
  const dir = tempDir(t, 'au');
  const docker = path.join(dir, 'config.json');
  fs.writeFileSync(docker, JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from(`alice:${password}`).toString('base64') } } }));
  const podmanStyle = path.join(dir, 'auth.json');
  fs.writeFileSync(podmanStyle, JSON.stringify({ auths: { [`${reg.host}/a`]: { auth: Buffer.from(`alice:${password}`).toString('base64') } } }));
  const s1 = path.join(dir, 's1');
  refused(t, strata(['pull', ref, '--store', s1, '--json']), 1, /authentication required/);
  t.is(pull(t, s1, ref, ['--authfile', docker]).downloaded, 2);
  const s2 = path.join(dir, 's2');
  t.is((JSON.parse(strataOk(t, ['pull', ref, '--store', s2, '--json'], { REGISTRY_AUTH_FILE: podmanStyle })) as PullJson).downloaded, 2);
  sameLayers(t, built.store, 'test/two:1', s2, ref);

  // strata login writes what podman reads; podman login writes what strata reads; logout removes it.
  const mine = path.join(dir, 'strata-auth.json');
  const login = (pw: string, file: string): RunResult => run(strataBin, ['login', reg.host, '-u', 'alice', '--password-stdin', '--authfile', file], { input: `${pw}\n` });
  refused(t, login('wrong', mine), 1, /the credentials were refused/);
  t.false(fs.existsSync(mine), 'nothing written for refused credentials');
  const good = login(password, mine);
  t.is(good.status, 0, good.stderr);
  t.is(fs.statSync(mine).mode & 0o777, 0o600);
  t.is(run('podman', ['login', '--get-login', '--authfile', mine, reg.host]).stdout.trim(), 'alice');
  const theirs = path.join(dir, 'podman-auth.json');
  const pl = run('podman', ['login', '--tls-verify=false', '--authfile', theirs, '-u', 'alice', '--password-stdin', reg.host], { input: password });
  t.is(pl.status, 0, pl.stderr);
  t.is(pull(t, path.join(dir, 's3'), ref, ['--authfile', theirs]).downloaded, 2);
  t.is(strataOk(t, ['logout', reg.host, '--authfile', mine]), `Removed login credentials for ${reg.host}\n`);
  refused(t, strata(['logout', reg.host, '--authfile', mine]), 1, /not logged into/);
  refused(t, strata(['pull', ref, '--store', path.join(dir, 's4'), '--authfile', mine]), 1, /authentication required/);
});

test.serial('credential helpers named in auth files (credHelpers, credsStore): docker-credential-NAME get, as Docker and podman run them; failures are one line', async (t) => {
  const password = 'h:elp er';
  const reg = await startRegistry(t, { users: { carol: password } });
  const built = await twoLayerImage(t);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  const ref = `${reg.host}/h/two:1`;
  const dir = tempDir(t, 'helpers');
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  const asked = path.join(dir, 'asked');
  // a helper that knows this registry (and logs what it was asked), one that knows nothing, one that breaks
  const helper = (name: string, body: string): void => {
    fs.writeFileSync(path.join(bin, `docker-credential-${name}`), `#!/bin/sh\n[ "$1" = get ] || exit 2\nread -r server\necho "${name} $server" >> ${asked}\n${body}\n`, { mode: 0o755 });
  };
  helper('good', `[ "$server" = "${reg.host}" ] || { echo "credentials not found in native keychain"; exit 1; }\nprintf '{"ServerURL":"%s","Username":"carol","Secret":"${password}"}' "$server"`);
  helper('none', 'echo "credentials not found in native keychain"; exit 1');
  helper('broken', 'echo "the keyring is locked" >&2; exit 3');
  const env = { PATH: `${bin}:${process.env.PATH}` };
  const file = (content: object): string => {
    const f = path.join(dir, `auth-${Math.random().toString(36).slice(2)}.json`);
    fs.writeFileSync(f, JSON.stringify(content));
    return f;
  };
  push(t, built.store, 'test/two:1', ref, ['--creds', `carol:${password}`]);
  // credHelpers: the registry's helper
  const s1 = path.join(dir, 's1');
  t.is((JSON.parse(strataOk(t, ['pull', ref, '--store', s1, '--json', '--authfile', file({ credHelpers: { [reg.host]: 'good' } })], env)) as PullJson).downloaded, 2);
  t.regex(fs.readFileSync(asked, 'utf8'), new RegExp(`^good ${reg.host.replace(/\./g, '\\.')}$`, 'm'));
  sameLayers(t, built.store, 'test/two:1', s1, ref);
  // credsStore (Docker's, for every registry), with an empty auths entry as Docker leaves it
  const s2 = path.join(dir, 's2');
  t.is((JSON.parse(strataOk(t, ['pull', ref, '--store', s2, '--json', '--authfile', file({ auths: { [reg.host]: {} }, credsStore: 'good' })], env)) as PullJson).downloaded, 2, 'credsStore');
  // a helper without credentials for it: as none (the registry then asks for them)
  refused(t, strata(['pull', ref, '--store', path.join(dir, 's3'), '--authfile', file({ credHelpers: { [reg.host]: 'none' } })], env), 1, /authentication required/);
  // a broken or missing helper: one line that names it
  refused(t, strata(['pull', ref, '--store', path.join(dir, 's3'), '--authfile', file({ credHelpers: { [reg.host]: 'broken' } })], env), 1,
    /the credential helper docker-credential-broken failed for 127\.0\.0\.1:\d+: the keyring is locked/);
  refused(t, strata(['pull', ref, '--store', path.join(dir, 's3'), '--authfile', file({ credHelpers: { [reg.host]: 'gone' } })], env), 1,
    /the credential helper docker-credential-gone \(named in .*\) cannot run: not found on PATH/);
  // a store that is not installed is passed over (podman reads no credsStore): the auths entry serves
  const s4 = path.join(dir, 's4');
  t.is(pull(t, s4, ref, ['--authfile', file({ auths: { [reg.host]: { auth: Buffer.from(`carol:${password}`).toString('base64') } }, credsStore: 'gone' })]).downloaded, 2);
});

test.serial('Bearer tokens from the registry\'s token service, blob downloads redirected to a storage host that gets no credentials', async (t) => {
  const reg = await startRegistry(t);
  const creds = { user: 'bob', password: 'hunter2' };
  const front = await startTokenFront(t, reg.host, creds);
  const built = await twoLayerImage(t);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  const ref = `${front.host}/b/two:1`;
  const async = (args: readonly string[]): Promise<RunResult> => runWithPipes(strataBin, args, { timeoutMs: 120_000 });
  const noCreds = await async(['push', 'test/two:1', ref, '--store', built.store]);
  refused(t, noCreds, 1, /authentication required/);
  const wrong = await async(['push', 'test/two:1', ref, '--store', built.store, '--creds', 'bob:nope']);
  refused(t, wrong, 1, /the credentials were refused/);
  const ok = await async(['push', 'test/two:1', ref, '--store', built.store, '--creds', 'bob:hunter2', '--json']);
  t.is(ok.status, 0, ok.stderr);
  front.seen.length = 0;
  const store = path.join(tempDir(t, 'st'), 'store');
  const pulled = await async(['pull', ref, '--store', store, '--creds', 'bob:hunter2', '--json']);
  t.is(pulled.status, 0, pulled.stderr);
  t.is((JSON.parse(pulled.stdout) as PullJson).downloaded, 2);
  t.true(front.seen.includes('GET /token basic'), front.seen.join('\n'));
  t.is(front.seen.filter((s) => s.startsWith('storage GET /v2/b/two/blobs/') && s.endsWith(' none')).length, 3, 'config and two layers from the storage host');
  t.false(front.seen.some((s) => s.includes('with credentials')));
  sameLayers(t, built.store, 'test/two:1', store, ref);
});

test.serial('identity tokens (an auth file\'s identitytoken, a credential helper\'s "<token>") are exchanged at the token service by OAuth2\'s refresh_token grant, as Docker and podman do', async (t) => {
  const reg = await startRegistry(t);
  const refresh = `refresh-${process.pid}`;
  const front = await startTokenFront(t, reg.host, { user: 'bob', password: 'hunter2' }, refresh);
  const built = await twoLayerImage(t);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  const ref = `${front.host}/i/two:1`;
  const dir = tempDir(t, 'idtoken');
  const run = (args: readonly string[], env?: NodeJS.ProcessEnv): Promise<RunResult> => runWithPipes(strataBin, args, { timeoutMs: 120_000, env: { ...process.env, ...env } });
  const file = (content: object): string => {
    const f = path.join(dir, `auth-${Math.random().toString(36).slice(2)}.json`);
    fs.writeFileSync(f, JSON.stringify(content));
    return f;
  };
  // Docker's entry for an identity token: the (nil) username in "auth" with no password, the token beside it
  const entry = (tok: string): object => ({ auths: { [front.host]: { auth: Buffer.from('00000000-0000-0000-0000-000000000000:').toString('base64'), identitytoken: tok } } });
  const pushed = await run(['push', 'test/two:1', ref, '--store', built.store, '--authfile', file(entry(refresh))]);
  t.is(pushed.status, 0, pushed.stderr);
  t.true(front.seen.includes('token form: refresh_token strata-test repository:i/two:pull,push'), front.seen.join('\n'));
  t.false(front.seen.some((x) => x.startsWith('GET /token')), 'no password asked for');
  front.seen.length = 0;
  const s1 = path.join(dir, 's1');
  const pulled = await run(['pull', ref, '--store', s1, '--json', '--authfile', file(entry(refresh))]);
  t.is(pulled.status, 0, pulled.stderr);
  t.is((JSON.parse(pulled.stdout) as PullJson).downloaded, 2);
  t.true(front.seen.includes('token form: refresh_token strata-test repository:i/two:pull'), front.seen.join('\n'));
  sameLayers(t, built.store, 'test/two:1', s1, ref);
  // from a credential helper, which says "<token>" for the username
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'docker-credential-tok'), `#!/bin/sh\nread -r server\nprintf '{"ServerURL":"%s","Username":"<token>","Secret":"${refresh}"}' "$server"\n`, { mode: 0o755 });
  const s2 = path.join(dir, 's2');
  const helped = await run(['pull', ref, '--store', s2, '--json', '--authfile', file({ credHelpers: { [front.host]: 'tok' } })], { PATH: `${bin}:${process.env.PATH}` });
  t.is(helped.status, 0, helped.stderr);
  t.is((JSON.parse(helped.stdout) as PullJson).downloaded, 2);
  // a token the service does not take (OAuth2's invalid_grant), and one offered to a registry that wants a password
  refused(t, await run(['pull', ref, '--store', path.join(dir, 's3'), '--authfile', file(entry('stale'))]), 1, /the identity token was refused/);
  const basic = await startRegistry(t, { users: { carol: 'pw' } });
  const basicEntry = { auths: { [basic.host]: { identitytoken: refresh } } };
  refused(t, await run(['pull', `${basic.host}/i/two:1`, '--store', path.join(dir, 's4'), '--authfile', file(basicEntry)]), 1,
    /the credentials are an identity token, which needs a token service, and the registry asks for a password \(Basic\)/);
});

/**
 * A front of the registry on 127.0.0.1 that holds the first request `hold` matches until `release()`
 * (the Host header kept: the registry's upload locations then name the front);
 * `held` resolves when it came. Requests are passed on to the registry as they are.
 */
async function holdingFront(t: ExecutionContext, backend: string, hold: (req: http.IncomingMessage) => boolean): Promise<{ host: string; held: Promise<void>; release: () => void }> {
  let release: () => void = () => {};
  const released = new Promise<void>((r) => (release = r));
  let seen: () => void = () => {};
  const held = new Promise<void>((r) => (seen = r));
  let holding = true;
  const front = http.createServer((req, res) => {
    const forward = (): void => {
      const up = http.request({ host: '127.0.0.1', port: Number(backend.split(':')[1]), method: req.method, path: req.url, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    };
    if (holding && hold(req)) {
      holding = false;
      seen();
      void released.then(forward);
      return;
    }
    forward();
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    release();
    front.close();
  });
  return { host: `127.0.0.1:${(front.address() as { port: number }).port}`, held, release };
}

test.serial('pull and push hold the store only for moments: other commands run while blobs download or upload', async (t) => {
  const reg = await startRegistry(t);
  const built = await twoLayerImage(t);
  imageOk(t, built.store, ['load', '-i', built.archive]);
  push(t, built.store, 'test/two:1', `${reg.host}/t/two:1`);
  const configDigest = inspect(t, built.store, 'test/two:1').Id;
  // pull: a layer's download (not the config's, whose digest is the image ID) is held
  const pullFront = await holdingFront(t, reg.host, (req) => req.method === 'GET' && /\/blobs\/sha256:/.test(req.url ?? '') && !(req.url ?? '').includes(configDigest));
  const store = path.join(tempDir(t, 'pl'), 'store');
  const pulling = runWithPipes(strataBin, ['pull', '--json', '--store', store, `${pullFront.host}/t/two:1`], { timeoutMs: 120_000 });
  let done = false;
  void pulling.then(() => (done = true));
  await pullFront.held;
  // (before, a pull held the store's lock until it ended: this waited for it; bounded here)
  const during = run(strataBin, ['images', '--store', store], { timeoutMs: 30_000 });
  t.is(during.status, 0, `images while the pull downloads: ${during.stderr}`);
  t.regex(during.stdout, /^REPOSITORY +TAG/);
  t.notRegex(during.stdout, /two/);
  t.false(done, 'the pull was still downloading');
  pullFront.release();
  const r = await pulling;
  t.is(r.status, 0, r.stderr);
  t.is((JSON.parse(r.stdout) as PullJson).id, configDigest);
  t.regex(strataOk(t, ['images', '--store', store]), /two +1 /);
  t.deepEqual(fs.readdirSync(path.join(store, 'downloads')), [], 'no download left behind');

  // pull onto a stored base layer: its download of the top layer is held; meanwhile the only image on
  // that base goes and a prune runs: the base the pull took from the store is leased, not deleted
  const baseArchive = path.join(built.base, 'base.tar');
  dockerArchive(built.base, [{ tags: ['test/base:1'], layers: [path.join(built.base, 'l0.tar')] }], baseArchive);
  const onBase = path.join(tempDir(t, 'pb'), 'store');
  imageOk(t, onBase, ['load', '-i', baseArchive]);
  const baseFront = await holdingFront(t, reg.host, (req) => req.method === 'GET' && /\/blobs\/sha256:/.test(req.url ?? '') && !(req.url ?? '').includes(configDigest));
  const pullingOnBase = runWithPipes(strataBin, ['pull', '--json', '--store', onBase, `${baseFront.host}/t/two:1`], { timeoutMs: 120_000 });
  await baseFront.held;
  t.is(run(strataBin, ['image', 'rm', '--store', onBase, 'test/base:1'], { timeoutMs: 30_000 }).status, 0, 'rmi while the pull downloads');
  t.is(run(strataBin, ['image', 'prune', '-a', '--store', onBase], { timeoutMs: 30_000 }).status, 0);
  baseFront.release();
  const rb = await pullingOnBase;
  t.is(rb.status, 0, rb.stderr);
  t.deepEqual([(JSON.parse(rb.stdout) as PullJson).downloaded, (JSON.parse(rb.stdout) as PullJson).reused], [1, 1]);
  const onBaseDirs = (JSON.parse(strataOk(t, ['image', 'lowerdir', '--json', '--store', onBase, `${baseFront.host}/t/two:1`])) as { lowerdir: string[] }).lowerdir;
  t.is(onBaseDirs.length, 2);
  t.true(onBaseDirs.every((d) => fs.existsSync(d)), 'both layers of the pulled image are in the store');
  t.is(fs.readFileSync(path.join(onBaseDirs[1]!, 'd/f'), 'utf8'), 'data\n');
  t.is(run(strataBin, ['image', 'prune', '-a', '--store', onBase], { timeoutMs: 30_000 }).status, 0);
  t.deepEqual(fs.readdirSync(path.join(onBase, 'layers')), [], 'the lease ended with the pull: a later prune takes the layers');

  // push: an upload is held; meanwhile rmi and prune cannot take the layers it sends (leased)
  const pushFront = await holdingFront(t, reg.host, (req) => req.method === 'PUT' && /\/blobs\/uploads\//.test(req.url ?? ''));
  const pushing = runWithPipes(strataBin, ['push', '--json', '--store', built.store, 'test/two:1', `${pushFront.host}/other/two:2`], { timeoutMs: 120_000 });
  let pushed = false;
  void pushing.then(() => (pushed = true));
  await pushFront.held;
  t.is(run(strataBin, ['image', 'rm', '--store', built.store, 'test/two:1'], { timeoutMs: 30_000 }).status, 0, 'rmi while the push uploads');
  t.is(run(strataBin, ['image', 'prune', '--store', built.store], { timeoutMs: 30_000 }).status, 0);
  t.false(pushed, 'the push was still uploading');
  pushFront.release();
  const p = await pushing;
  t.is(p.status, 0, p.stderr);
  // what it sent is whole: a pull of it elsewhere gives the image
  const again = path.join(tempDir(t, 'pa'), 'store');
  t.is(pull(t, again, `${reg.host}/other/two:2`).id, configDigest);
});
