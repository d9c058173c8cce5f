// strata build against podman build (buildah) on the same Dockerfile and base image: the image
// config and the files' owners, modes and contents; the build cache (a rebuild takes every step
// from it and gives the same image ID; a changed source or build argument rebuilds from its step);
// multi-stage builds, scratch, ADD of a local archive; and refusals: sources outside the context,
// a failing RUN (no container or mount left), a destination through a symlink of the image that
// points at the host (the write stays in the image), malformed Dockerfiles.

import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run, runWithPipes, type RunResult, waitFor } from './helpers/exec.js';
import { PODMAN_RUN, podmanImport, testPodman } from './helpers/image-store.js';
import { mountsUnder } from './helpers/mounts.js';
import { taggedEnvKilledAtEnd } from './helpers/processes.js';
import { strataBin } from './helpers/paths.js';
import { tempDir } from './helpers/tmp.js';

const ROOTFS_L0 = '/var/cache/strata/rootfs/l0';

interface Ctx {
  base: string;
  store: string;
  strata: (args: readonly string[]) => RunResult;
  ok: (args: readonly string[]) => string;
}

/** A store with the Debian rootfs imported as deb:l0. */
function setup(t: ExecutionContext): Ctx {
  if (!fs.existsSync(ROOTFS_L0)) throw new Error(`${ROOTFS_L0} is missing (make rootfs builds it)`);
  const base = tempDir(t, 'bd');
  const store = path.join(base, 'store');
  const env = { ...process.env, STRATA_STORE: store };
  const strata = (args: readonly string[]): RunResult => run(strataBin, args, { env, timeoutMs: 300_000 });
  const ok = (args: readonly string[]): string => {
    const r = strata(args);
    if (r.status !== 0) t.fail(`strata ${args.join(' ')}: exit ${r.status}: ${r.stderr.trim()}`);
    return r.stdout;
  };
  const tar = path.join(base, 'deb.tar');
  run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', ROOTFS_L0, '-cf', tar, '.']);
  ok(['image', 'import', tar, 'deb:l0']);
  fs.rmSync(tar);
  return { base, store, strata, ok };
}

function writeTree(root: string, files: Record<string, string>): void {
  for (const [rel, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    fs.writeFileSync(path.join(root, rel), content);
  }
}

function lastLine(out: string): string {
  return out.trim().split('\n').at(-1)!;
}

function oneLineError(t: ExecutionContext, r: RunResult, pattern: RegExp): void {
  t.not(r.status, 0);
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.regex(r.stderr, pattern);
}

const DOCKERFILE = `# escape=\\
ARG BASE=deb:l0
FROM \${BASE}
ARG GREETING=hello
ENV APP_HOME=/srv/app \\
    MODE="prod mode" \\
    ESCAPED=\\$HOME
WORKDIR $APP_HOME
COPY file.txt sub/ ./
COPY --chown=1234:5678 --chmod=640 file.txt /etc/owned.txt
COPY ["later.txt", "sub/inner.txt", "/opt/with space/"]
RUN echo "$GREETING from run in $(pwd) as $(id -u)" > run.txt && chmod 604 run.txt
WORKDIR rel/dir
USER 1234:5678
EXPOSE 8080 53/udp
LABEL org.example.a="b c" x=y
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /srv/app/run.txt"]
`;

const PATHS = ['/srv/app', '/srv/app/file.txt', '/srv/app/inner.txt', '/srv/app/run.txt', '/etc/owned.txt', '/opt/with space', '/opt/with space/inner.txt'];
const PROBE = `for p in ${PATHS.map((p) => `'${p}'`).join(' ')}; do stat -c '%n %F %a %u %g %s' "$p"; done; cat /srv/app/run.txt /srv/app/file.txt; ls -A /srv/app; ls /srv/app/secret.txt 2>&1 | wc -l`;

test.serial('a Dockerfile gives the image podman build gives (config, files, owners, modes); a rebuild is all cached, same ID; changes rebuild from their step', (t) => {
  const c = setup(t);
  const ctx = path.join(c.base, 'ctx');
  writeTree(ctx, { Dockerfile: DOCKERFILE, 'file.txt': 'file contents\n', 'sub/inner.txt': 'inner\n', 'later.txt': 'later\n', 'secret.txt': 'no\n', '.dockerignore': '# comment\nsecret.txt\n' });
  const out = c.ok(['build', '-t', 'built:1', ctx]);
  const id = lastLine(out);
  t.regex(id, /^sha256:[0-9a-f]{64}$/);
  t.regex(out, /STEP 1\/15: FROM deb:l0/);

  const { ok: pod } = testPodman(t, c.base);
  podmanImport(pod, c.base, ROOTFS_L0, 'localhost/deb:l0');
  pod(['build', '-q', ...PODMAN_RUN, '--build-arg', 'BASE=localhost/deb:l0', '-t', 'localhost/built:1', ctx]);
  const theirs = JSON.parse(pod(['image', 'inspect', 'localhost/built:1', '--format', '{{json .Config}}'])) as Record<string, unknown>;
  delete (theirs.Labels as Record<string, string>)['io.buildah.version'];
  const mine = (JSON.parse(c.ok(['image', 'inspect', 'built:1'])) as { Config: Record<string, unknown> }[])[0]!.Config;
  for (const k of ['Env', 'WorkingDir', 'User', 'ExposedPorts', 'Labels', 'Entrypoint', 'Cmd', 'StopSignal']) t.deepEqual(mine[k], theirs[k], k);
  const strataView = c.ok(['run', '--rm', '-u', '0', 'built:1', PROBE]);
  const podmanView = pod(['run', '--rm', ...PODMAN_RUN, '-u', '0', 'localhost/built:1', PROBE]);
  t.is(strataView, podmanView);
  t.regex(strataView, /hello from run in \/srv\/app as 0\n/);
  t.is(c.ok(['run', '--rm', 'built:1']), pod(['run', '--rm', ...PODMAN_RUN, 'localhost/built:1']));
  // ENV with an escaped $ keeps it
  t.true((mine.Env as string[]).includes('ESCAPED=$HOME'));

  // Rebuilt: every layer step from the cache, the same image.
  const again = c.ok(['build', '-t', 'built:1', ctx]);
  t.is(lastLine(again), id);
  t.is(again.match(/--> Using cache/g)?.length, 4);
  // A changed build argument: the RUN (and what follows) again.
  const arg = c.ok(['build', '--build-arg', 'GREETING=bye', '-t', 'built:2', ctx]);
  t.is(arg.match(/--> Using cache/g)?.length, 3);
  t.not(lastLine(arg), id);
  t.regex(c.ok(['run', '--rm', 'built:2']), /^bye from run/);
  // A changed source: from its COPY on.
  fs.writeFileSync(path.join(ctx, 'later.txt'), 'later, changed\n');
  const changed = c.ok(['build', '-t', 'built:3', ctx]);
  t.is(changed.match(/--> Using cache/g)?.length, 2, 'the two COPYs before it');
  t.is(c.ok(['run', '--rm', 'built:3', 'cat /opt/with\\ space/later.txt']), 'later, changed\n');
  // A file .dockerignore excludes changes nothing.
  fs.writeFileSync(path.join(ctx, 'secret.txt'), 'still no\n');
  t.is(lastLine(c.ok(['build', '-t', 'built:3', ctx])), lastLine(changed));
  // --no-cache runs everything again.
  const fresh = c.ok(['build', '--no-cache', '-q', ctx]);
  t.is(fresh.match(/Using cache|STEP/g), null);
});

test.serial('multi-stage: COPY --from a stage, --target, FROM scratch; ADD unpacks a local archive; SHELL; build arguments in keys; unused stages skipped; here-documents in RUN, COPY and ADD', (t) => {
  const c = setup(t);
  const ctx = path.join(c.base, 'ctx');
  fs.mkdirSync(path.join(c.base, 'arc/d'), { recursive: true });
  fs.writeFileSync(path.join(c.base, 'arc/d/f'), 'from the archive\n');
  fs.mkdirSync(ctx);
  run('tar', ['-C', path.join(c.base, 'arc'), '-czf', path.join(ctx, 'a.tgz'), 'd']);
  writeTree(ctx, {
    Dockerfile: [
      'ARG WHO=global', 'FROM deb:l0 AS builder', 'ARG WHO', 'SHELL ["/bin/bash", "-c"]', 'RUN echo "built by $BASH_VERSION" | cut -c1-8 > /out.txt',
      'RUN echo "$WHO" > /who.txt', 'ADD a.tgz /opt/',
      'FROM scratch', 'COPY --from=builder /out.txt /opt/d/f /', 'COPY --from=0 /etc/debian_version /etc/', 'CMD ["/nothing"]', '',
    ].join('\n'),
  });
  const id = lastLine(c.ok(['build', '-t', 'small:1', ctx]));
  const layers = (JSON.parse(c.ok(['image', 'lowerdir', '--json', 'small:1'])) as { lowerdir: string[] }).lowerdir;
  t.is(layers.length, 2, 'scratch plus two COPY layers');
  const top = layers[0]!;
  const bottom = layers[1]!;
  t.is(fs.readFileSync(path.join(bottom, 'out.txt'), 'utf8'), 'built by\n');
  t.is(fs.readFileSync(path.join(bottom, 'f'), 'utf8'), 'from the archive\n');
  t.is(fs.readFileSync(path.join(top, 'etc/debian_version'), 'utf8'), fs.readFileSync(path.join(ROOTFS_L0, 'etc/debian_version'), 'utf8'));
  t.deepEqual(fs.readdirSync(bottom).sort(), ['f', 'out.txt']);
  t.regex(id, /^sha256:/);
  const stage = lastLine(c.ok(['build', '--target', 'builder', '-t', 'builder:1', ctx]));
  t.is(c.ok(['run', '--rm', 'builder:1', 'cat', '/opt/d/f']), 'from the archive\n');
  t.is(c.ok(['run', '--rm', 'builder:1', 'cat', '/who.txt']), 'global\n', 'a stage\'s ARG without a default takes the global one');
  t.not(stage, id);
  const cfg = (JSON.parse(c.ok(['image', 'inspect', 'builder:1'])) as { Config: { Shell?: string[] } }[])[0]!.Config;
  t.deepEqual(cfg.Shell, ['/bin/bash', '-c']);

  // A build argument that moves a COPY's destination is not answered from the cache of the other place;
  // an image whose base set SHELL runs its RUNs with that shell.
  const ctx2 = path.join(c.base, 'ctx2');
  writeTree(ctx2, { 'file.txt': 'f\n', Dockerfile: 'FROM builder:1\nARG DIR=/one\nWORKDIR $DIR\nCOPY file.txt ./\nRUN echo "$0 $BASH_VERSION" | cut -c1-12 > shell.txt\n' });
  c.ok(['build', '-t', 'dir:1', ctx2]);
  c.ok(['build', '--build-arg', 'DIR=/two', '-t', 'dir:2', ctx2]);
  t.is(c.ok(['run', '--rm', 'dir:1', 'cat', '/one/file.txt']), 'f\n');
  t.is(c.ok(['run', '--rm', 'dir:2', 'cat', '/two/file.txt']), 'f\n');
  t.not(c.strata(['run', '--rm', 'dir:2', 'test', '-e', '/one/file.txt']).status, 0);
  t.is(c.ok(['run', '--rm', 'dir:2', 'cat', '/two/shell.txt']), '/bin/bash 5.\n');

  // Only the stages the target needs are built (as podman build and BuildKit): a failing stage nothing
  // uses is skipped; stages named by COPY --from (through a build argument), RUN --mount from= and
  // FROM are built, and what they depend on.
  const ctx4 = path.join(c.base, 'ctx4');
  writeTree(ctx4, {
    Dockerfile: ['FROM deb:l0 AS broken', 'RUN exit 9', 'FROM deb:l0 AS dep', 'RUN echo dep > /dep', 'FROM dep AS viaarg', 'RUN echo arg > /arg',
      'FROM deb:l0 AS mounted', 'RUN echo m > /m', 'FROM deb:l0', 'ARG SRC=viaarg', 'COPY --from=${SRC} /arg /dep /', 'RUN --mount=type=bind,from=mounted,target=/mm cp /mm/m /m', ''].join('\n'),
  });
  const staged = c.ok(['build', '-t', 'staged:1', ctx4]);
  t.notRegex(staged, /exit 9/, 'the unused stage is not built');
  t.is((staged.match(/^STEP /gm) ?? []).length, 10, staged);
  t.is(c.ok(['run', '--rm', 'staged:1', 'cat', '/arg', '/dep', '/m']), 'arg\ndep\nm\n');
  t.regex(c.strata(['build', '--target', 'broken', ctx4]).stderr, /RUN exit 9: the command returned a non-zero code: 9/, 'built when it is the target');

  // RUN here-documents: alone, the document is the script; after a command, the shell reads it; <<- strips tabs.
  const ctx3 = path.join(c.base, 'ctx3');
  writeTree(ctx3, {
    Dockerfile: ['FROM deb:l0', 'RUN <<EOT', 'set -e', 'echo "line one" > /h1.txt', 'echo "line two" >> /h1.txt', 'EOT',
      'RUN cat <<EOF > /h2.txt && echo after >> /h2.txt', 'inside $HOME', 'EOF', "RUN <<-'X'", '\techo tabbed > /h3.txt', '\tX', 'ENV AFTER=1', ''].join('\n'),
  });
  c.ok(['build', '-t', 'here:1', ctx3]);
  t.is(c.ok(['run', '--rm', 'here:1', 'sh', '-c', 'cat /h1.txt /h2.txt /h3.txt; echo $AFTER']), 'line one\nline two\ninside /root\nafter\ntabbed\n1\n');
  // COPY and ADD of here-documents (BuildKit's files: mode 0664, variables expanded unless the name
  // is quoted, named after the document in a directory); RUN of a document with #! runs it as a program.
  const copyDocs = (greeting: string): string => ['FROM deb:l0', 'ARG NAME=world', 'COPY <<EOF /etc/greeting', `${greeting} $NAME`, 'EOF',
    "COPY --chmod=600 <<'RAW' /etc/raw.txt", 'keep $NAME', 'RAW', 'COPY <<A <<B /opt/docs/', 'a', 'A', 'b', 'B',
    'ADD <<EOF /add.txt', 'added', 'EOF', 'RUN <<EOT', '#!/bin/bash', 'echo "$0 bash ${BASH_VERSION%%.*}" > /sh.txt', 'EOT', ''].join('\n');
  fs.writeFileSync(path.join(ctx3, 'Dockerfile'), copyDocs('hello'));
  c.ok(['build', '-t', 'here:2', ctx3]);
  const probe = 'stat -c "%n %a %u" /etc/greeting /etc/raw.txt /opt/docs/A /opt/docs/B /add.txt; cat /etc/greeting /etc/raw.txt /opt/docs/A /opt/docs/B /add.txt /sh.txt; ls -A /dev/pipes 2>&1 | wc -l';
  t.is(c.ok(['run', '--rm', 'here:2', 'sh', '-c', probe]), [
    '/etc/greeting 664 0', '/etc/raw.txt 600 0', '/opt/docs/A 664 0', '/opt/docs/B 664 0', '/add.txt 664 0',
    'hello world', 'keep $NAME', 'a', 'b', 'added', '/dev/pipes/EOT bash 5', '1', ''].join('\n'));
  const layerDirs = (JSON.parse(c.ok(['image', 'lowerdir', '--json', 'here:2'])) as { lowerdir: string[] }).lowerdir;
  t.false(layerDirs.slice(0, 5).some((d) => fs.existsSync(path.join(d, 'dev/pipes'))), 'the document\'s mount point is in no layer');
  const rebuilt = c.ok(['build', '-t', 'here:2', ctx3]);
  t.is((rebuilt.match(/Using cache/g) ?? []).length, 5, rebuilt);
  fs.writeFileSync(path.join(ctx3, 'Dockerfile'), copyDocs('hi'));
  c.ok(['build', '-t', 'here:3', ctx3]);
  t.is(c.ok(['run', '--rm', 'here:3', 'cat', '/etc/greeting']), 'hi world\n', 'a changed document is copied again');
  fs.writeFileSync(path.join(ctx3, 'Dockerfile'), 'FROM deb:l0\nCOPY <<EOF file.txt /d/\nx\nEOF\n');
  oneLineError(t, c.strata(['build', ctx3]), /^strata: Dockerfile line 2: COPY of here-documents together with other sources is not supported\n$/);
  // HEALTHCHECK as Docker records it (podman build --format docker writes the same object).
  fs.writeFileSync(path.join(ctx3, 'Dockerfile'), 'FROM deb:l0\nHEALTHCHECK --interval=1m30s --timeout=5s --retries=3 CMD curl -f http://localhost/ || exit 1\n');
  c.ok(['build', '-t', 'hc:1', ctx3]);
  t.deepEqual((JSON.parse(c.ok(['image', 'inspect', 'hc:1'])) as { Config: { Healthcheck: unknown } }[])[0]!.Config.Healthcheck,
    { Test: ['CMD-SHELL', 'curl -f http://localhost/ || exit 1'], Interval: 90_000_000_000, Timeout: 5_000_000_000, Retries: 3 });
  fs.writeFileSync(path.join(ctx3, 'Dockerfile'), 'FROM hc:1\nHEALTHCHECK NONE\n');
  c.ok(['build', '-t', 'hc:2', ctx3]);
  t.deepEqual((JSON.parse(c.ok(['image', 'inspect', 'hc:2'])) as { Config: { Healthcheck: unknown } }[])[0]!.Config.Healthcheck, { Test: ['NONE'] });
  fs.writeFileSync(path.join(ctx3, 'Dockerfile'), 'FROM deb:l0\nRUN <<EOT\necho never ends\n');
  t.regex(c.strata(['build', ctx3]).stderr, /^strata: Dockerfile line 2: here-document EOT has no terminating line\n$/);
});

test.serial('refused: sources outside the context, a failing RUN (nothing left behind), malformed Dockerfiles; a symlink of the image to a host path keeps the copy in the image', (t) => {
  const c = setup(t);
  const ctx = path.join(c.base, 'ctx');
  const hostDir = path.join(c.base, 'host-target');
  fs.mkdirSync(hostDir);
  writeTree(ctx, { 'file.txt': 'payload\n' });
  const build = (dockerfile: string): RunResult => {
    fs.writeFileSync(path.join(ctx, 'Dockerfile'), dockerfile);
    return c.strata(['build', '-q', ctx]);
  };
  // The image's /danger points at a host directory: COPY through it writes inside the image.
  const r = build(`FROM deb:l0\nRUN ln -s ${hostDir} /danger && mkdir -p ${hostDir} && echo noisy && echo noisy >&2\nCOPY file.txt /danger/\nCOPY file.txt /danger/../escape.txt\n`);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /^sha256:[0-9a-f]{64}\n$/, '-q: the image ID alone, as docker build -q');
  t.notRegex(r.stderr, /noisy/);
  t.deepEqual(fs.readdirSync(hostDir), [], 'nothing written on the host');
  const id = lastLine(r.stdout);
  t.is(c.ok(['run', '--rm', id, 'cat', `${hostDir}/file.txt`]), 'payload\n');
  t.is(c.ok(['run', '--rm', id, 'cat', '/escape.txt']), 'payload\n', '/danger/../escape.txt is /escape.txt, as Docker cleans it');
  t.false(fs.existsSync(path.join(c.base, 'escape.txt')));

  oneLineError(t, build('FROM deb:l0\nCOPY ../outside /x\n'), /COPY\/ADD source "\.\.\/outside" is outside the build context/);
  // Symlinks do not lead sources out: not the context's, not those of a stage's image.
  const secretDir = path.join(c.base, 'host-secret');
  fs.mkdirSync(secretDir);
  fs.writeFileSync(path.join(secretDir, 'secret'), 'HOST SECRET\n');
  fs.symlinkSync(secretDir, path.join(ctx, 'hostlink'));
  oneLineError(t, build('FROM deb:l0\nCOPY hostlink/secret /x\n'), /COPY\/ADD source "hostlink\/secret" goes through a symlink of the build context/);
  oneLineError(t, build(`FROM deb:l0 AS s\nRUN ln -s ${secretDir} /leak\nFROM deb:l0\nCOPY --from=s /leak/secret /x\n`), /COPY\/ADD source "leak\/secret" not found/);
  fs.rmSync(path.join(ctx, 'hostlink'));
  oneLineError(t, build('FROM deb:l0\nCOPY missing.txt /x\n'), /not found in the build context/);
  oneLineError(t, build('FROM deb:l0\nFOO bar\n'), /Dockerfile line 2: unknown instruction: FOO/);
  oneLineError(t, build('RUN true\n'), /must begin with FROM/);
  oneLineError(t, build('FROM deb:l0\nCOPY https://example.com/x /x\n'), /COPY takes no URL/);
  oneLineError(t, build('FROM deb:l0\nADD ftp://example.com/x /x\n'), /ADD takes http and https URLs only/);
  oneLineError(t, build('FROM deb:l0\nADD https://example.com/x file.txt /x/\n'), /ADD of URLs and local files in one instruction/);
  oneLineError(t, build('FROM deb:l0\nADD http://127.0.0.1:2/x /x\n'), /cannot download http:\/\/127.0.0.1:2\/x: .*ECONNREFUSED/);
  oneLineError(t, build('FROM nothere:1\n'), /no such image: nothere:1/);
  oneLineError(t, build('FROM scratch\nRUN true\n'), /Dockerfile line 2: RUN in an empty image/);
  oneLineError(t, c.strata(['build', path.join(c.base, 'nope')]), /cannot read the Dockerfile/);
  const failing = build('FROM deb:l0\nRUN echo about to fail; exit 3\n');
  t.not(failing.status, 0);
  t.regex(failing.stderr, /^about to fail\nstrata: .*RUN echo about to fail; exit 3: the command returned a non-zero code: 3\n$/, '-q: what the failed step printed, then the error');
  t.is(failing.stdout, '');
  t.deepEqual(JSON.parse(c.ok(['container', 'ls', '--json'])), [], 'no container left');
  t.deepEqual(mountsUnder(c.store), [], 'nothing mounted');
});

test.serial('image prune while a build runs keeps the layers the build made so far (an earlier stage\'s, used by nothing else)', async (t) => {
  const c = setup(t);
  const ctx = path.join(c.base, 'ctx');
  writeTree(ctx, {
    'file.txt': 'copied before the prune\n',
    // the RUN waits for /tmp/go, which the test makes through the container's mount once it has pruned
    // (stage a's layer is used by nothing but the build while the second stage's RUN runs)
    Dockerfile: 'FROM deb:l0 AS a\nCOPY file.txt /a.txt\nFROM deb:l0\nRUN for i in $(seq 1 1200); do [ -e /tmp/go ] && break; sleep 0.05; done; rm -f /tmp/go\n' +
      'COPY --from=a /a.txt /b.txt\n',
  });
  // (the build and what it starts are tagged: killed at the end, should the test fail half way)
  const { env } = taggedEnvKilledAtEnd(t, { STRATA_STORE: c.store });
  const building = runWithPipes(strataBin, ['build', '-q', '-t', 'pruned:1', ctx], { env, timeoutMs: 120_000 });
  // Wait until the RUN's container runs: the COPY layer exists, referenced by nothing but the build.
  t.true(await waitFor(() => {
    const r = run(strataBin, ['container', 'ls', '--json'], { env });
    return r.status === 0 && (JSON.parse(r.stdout) as { state: string }[]).some((x) => x.state === 'running');
  }, 60_000, 100), 'the RUN started');
  const pruned = c.ok(['image', 'prune']);
  t.notRegex(pruned, /Deleted layer/, 'stage a\'s COPY layer was kept');
  // let the RUN finish: the marker goes into the running container's root
  const rec = (JSON.parse(c.ok(['container', 'ls', '--json'])) as { state: string; merged: string }[]).find((x) => x.state === 'running')!;
  fs.writeFileSync(path.join(rec.merged, 'tmp', 'go'), '');
  const r = await building;
  t.is(r.status, 0, r.stderr);
  t.is(c.ok(['run', '--rm', 'pruned:1', 'cat', '/b.txt']), 'copied before the prune\n');
});

const MOUNTS_DOCKERFILE = `ARG BASE=deb:l0
FROM \${BASE} AS first
RUN mkdir /made && echo staged > /made/f
FROM \${BASE}
USER 1000:1000
WORKDIR /w/x
USER root
RUN --mount=type=cache,target=/cache,id=c1 --mount=type=bind,source=sub,target=/src --mount=type=tmpfs,target=/tmpx --mount=type=secret,id=tok \\
    ls /src > /out.txt; cat /src/a /run/secrets/tok >> /out.txt; stat -c '%a %u' /run/secrets/tok >> /out.txt; stat -f -c %T /tmpx >> /out.txt; \\
    touch /src/x 2>/dev/null || echo ro >> /out.txt; echo run >> /cache/count; pwd >> /out.txt
RUN --mount=type=bind,source=sub,target=/src,rw touch /src/x && ls /src >> /out.txt
RUN --mount=type=bind,from=first,source=/made,target=/m cat /m/f >> /out.txt
`;
const MOUNTS_PROBE = 'cat /out.txt; stat -c "%n %u:%g %a" /w /w/x; for p in /cache /src /tmpx /m /src/x; do [ -e $p ] && echo has $p; done; true';

test.serial('RUN --mount (cache, bind from the context and from a stage, tmpfs, secret) and WORKDIR\'s directories: what podman build gives; none of the mounts in the layers', (t) => {
  const c = setup(t);
  const ctx = path.join(c.base, 'ctx');
  const secret = path.join(c.base, 'secret');
  fs.writeFileSync(secret, 's3cret\n');
  writeTree(ctx, { Dockerfile: MOUNTS_DOCKERFILE, 'sub/a': 'from the context\n' });
  const build = (extra: string[] = []): string => c.ok(['build', '--secret', `id=tok,src=${secret}`, ...extra, '-t', 'mounts:1', ctx]);
  build();
  const { ok: pod } = testPodman(t, c.base);
  podmanImport(pod, c.base, ROOTFS_L0, 'localhost/deb:l0');
  // (a copy: podman 4.3's rw bind mount writes into the context, where BuildKit and strata drop the writes)
  const podCtx = path.join(c.base, 'podctx');
  fs.cpSync(ctx, podCtx, { recursive: true });
  pod(['build', '-q', ...PODMAN_RUN, '--secret', `id=tok,src=${secret}`, '--build-arg', 'BASE=localhost/deb:l0', '-t', 'localhost/mounts:1', podCtx]);
  t.deepEqual(fs.readdirSync(path.join(ctx, 'sub')), ['a'], 'strata\'s rw bind left the context as it was');
  const mine = c.ok(['run', '--rm', 'mounts:1', 'sh', '-c', MOUNTS_PROBE]);
  t.is(mine, pod(['run', '--rm', ...PODMAN_RUN, 'localhost/mounts:1', 'sh', '-c', MOUNTS_PROBE]));
  t.is(mine, 'a\nfrom the context\ns3cret\n400 0\ntmpfs\nro\n/w/x\na\nx\nstaged\n/w 0:0 755\n/w/x 0:0 755\n');
  // (podman run itself makes /run/secrets; strata's image has no trace of the secret's mount point)
  t.is(c.ok(['run', '--rm', 'mounts:1', 'ls', '/run']), 'lock\nmount\n');

  // The cache mount outlives the build; the step's key covers what the bind shows, minus .dockerignore's.
  fs.writeFileSync(path.join(ctx, '.dockerignore'), 'sub/ignored\n');
  fs.writeFileSync(path.join(ctx, 'sub', 'ignored'), 'not seen\n');
  const cached = build();
  t.is(cached.match(/--> Using cache/g)?.length, 4, cached);
  fs.writeFileSync(path.join(ctx, 'sub', 'a'), 'changed\n');
  const rebuilt = build();
  t.is(rebuilt.match(/--> Using cache/g)?.length, 1, 'the first stage\'s RUN only');
  t.is(c.ok(['run', '--rm', 'mounts:1', 'sh', '-c', 'head -2 /out.txt']), 'a\nchanged\n', 'the ignored file is not in the bind');
  writeTree(ctx, { Dockerfile: 'FROM deb:l0\nRUN --mount=type=cache,target=/cache,id=c1 wc -l < /cache/count\n' });
  t.regex(c.ok(['build', '--no-cache', ctx]), /\n2\n/, 'the cache mount kept the first two builds\' lines');

  // RUN --network=none (BuildKit's; podman 4.3 has no RUN flag but --mount): a network namespace of its own.
  writeTree(ctx, { Dockerfile: 'FROM deb:l0\nRUN --network=none ls /sys/class/net\nRUN --network=host ls /sys/class/net | wc -l\n' });
  const nets = c.ok(['build', ctx]).split('\n');
  t.true(nets.includes('lo') && !nets.includes('eth0'), nets.join('\n'));
  t.true(nets.includes(String(fs.readdirSync('/sys/class/net').length)), 'the host\'s interfaces with --network=host');

  // Secrets: a missing one is skipped unless required; refusals are one line.
  writeTree(ctx, { Dockerfile: 'FROM deb:l0\nRUN --mount=type=secret,id=none,target=/s ls /s 2>&1 | wc -l\n' });
  t.regex(c.ok(['build', ctx]), /\n1\n/);
  const refusals: [string, RegExp][] = [
    ['RUN --mount=type=secret,id=none,required=true true', /no --secret id=none was given/],
    ['RUN --mount=type=ssh true', /type ssh is not supported/],
    ['RUN --mount=type=bind,target=/x,bogus=1 true', /"bogus" is not supported with type=bind/],
    ['RUN --mount=type=bind,source=../outside,target=/x true', /outside the build context/],
    ['RUN --mount=type=bind,source=link,target=/x true', /through a symlink/],
    ['RUN --mount=type=cache true', /give target=/],
    ['RUN --security=insecure true', /RUN --security is not supported/],
    ['RUN --network=bridge true', /RUN --network takes default, host or none/],
  ];
  fs.symlinkSync('/etc', path.join(ctx, 'link'));
  for (const [line, pattern] of refusals) {
    writeTree(ctx, { Dockerfile: `FROM deb:l0\n${line.replace('source=link,', 'source=link/hostname,')}\n` });
    oneLineError(t, c.strata(['build', ctx]), pattern);
  }
  oneLineError(t, c.strata(['build', '--secret', 'id=x,src=/nonexistent', ctx]), /--secret id=x,src=\/nonexistent: \/nonexistent: ENOENT/);
  t.deepEqual(JSON.parse(c.ok(['container', 'ls', '--json'])), [], 'no build container left');
  t.deepEqual(mountsUnder(c.store), [], 'nothing mounted');
});

test.serial('ADD of URLs: the files podman build makes (name, mode 0600, Last-Modified time, --chmod), not unpacked; a changed download rebuilds', async (t) => {
  const c = setup(t);
  // The server is a process of its own: the test's commands run synchronously and would hold up one in this process.
  const served = path.join(c.base, 'served');
  fs.mkdirSync(served);
  fs.writeFileSync(path.join(served, 'remote.txt'), 'remote content\n');
  fs.writeFileSync(path.join(served, 'a.tar.gz'), (await import('node:zlib')).gzipSync(Buffer.from('not to be unpacked\n')));
  const script = `const http = require('http'), fs = require('fs'), path = require('path');
    const server = http.createServer((req, res) => {
      if (req.url === '/files/remote.txt') res.writeHead(200, { 'Last-Modified': 'Thu, 02 Jan 2020 03:04:05 GMT' }).end(fs.readFileSync(path.join(process.argv[1], 'remote.txt')));
      else if (req.url === '/moved') res.writeHead(302, { Location: '/files/remote.txt' }).end();
      else if (req.url === '/a.tar.gz') res.writeHead(200).end(fs.readFileSync(path.join(process.argv[1], 'a.tar.gz')));
      else res.writeHead(404).end();
    });
    server.listen(0, '127.0.0.1', () => console.log(server.address().port));`;
  const { spawn } = await import('node:child_process');
  const server = spawn(process.execPath, ['-e', script, served], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => void server.kill('SIGKILL'));
  const port = await new Promise<number>((resolve, reject) => {
    server.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    server.once('exit', () => reject(new Error('the test server ended')));
  });
  const url = (p: string): string => `http://127.0.0.1:${port}${p}`;
  const ctx = path.join(c.base, 'ctx');
  writeTree(ctx, {
    Dockerfile: `ARG BASE=deb:l0\nFROM \${BASE}\nADD ${url('/files/remote.txt')} /dl/\nADD ${url('/moved')} /named.txt\n` +
      `ADD --chmod=644 --chown=12:34 ${url('/files/remote.txt')} ${url('/a.tar.gz')} /multi/\n`,
  });
  const probe = 'cd / && stat -c "%n %a %u:%g %s %Y" dl dl/remote.txt named.txt multi/remote.txt multi/a.tar.gz && cat named.txt && gzip -dc multi/a.tar.gz';
  const out = c.ok(['build', '-t', 'urls:1', ctx]);
  const { ok: pod } = testPodman(t, c.base);
  podmanImport(pod, c.base, ROOTFS_L0, 'localhost/deb:l0');
  pod(['build', '-q', ...PODMAN_RUN, '--build-arg', 'BASE=localhost/deb:l0', '-t', 'localhost/urls:1', ctx]);
  const mine = c.ok(['run', '--rm', 'urls:1', 'sh', '-c', probe]);
  const theirs = pod(['run', '--rm', ...PODMAN_RUN, 'localhost/urls:1', 'sh', '-c', probe]);
  // (a directory made for the destination is modified when it was made: its own line is left out)
  const files = (v: string): string => v.split('\n').filter((l) => !l.startsWith('dl ')).join('\n');
  t.is(files(mine), files(theirs));
  t.regex(mine, /dl\/remote.txt 600 0:0 15 1577934245\nnamed.txt 600 0:0 15 1577934245\nmulti\/remote.txt 644 12:34 15 1577934245\n/);
  t.regex(mine, /remote content\nnot to be unpacked\n$/);
  t.regex(out, /STEP 3\/4: ADD http/);
  // Downloaded again on every build: the same bytes are cached, other bytes rebuild.
  t.is(c.ok(['build', '-t', 'urls:1', ctx]).match(/--> Using cache/g)?.length, 3);
  fs.writeFileSync(path.join(served, 'remote.txt'), 'changed remote\n');
  t.is(c.ok(['build', '-t', 'urls:1', ctx]).match(/--> Using cache/g)?.length ?? 0, 0);
  t.is(c.ok(['run', '--rm', 'urls:1', 'cat', '/named.txt']), 'changed remote\n');
  writeTree(ctx, { Dockerfile: `FROM deb:l0\nADD ${url('/nothere')} /x\n` });
  oneLineError(t, c.strata(['build', ctx]), /cannot download .*\/nothere: HTTP 404/);
  writeTree(ctx, { Dockerfile: `FROM deb:l0\nADD http://127.0.0.1:${port}/ /x/\n` });
  oneLineError(t, c.strata(['build', ctx]), /cannot tell a file name from/);
  t.deepEqual(JSON.parse(c.ok(['container', 'ls', '--json'])), []);
  t.deepEqual(mountsUnder(c.store), []);
});

test.serial('ONBUILD: recorded in the image; a build FROM it runs the triggers first (in its own context), and the new image has none', (t) => {
  const c = setup(t);
  const ctx = path.join(c.base, 'ctx');
  writeTree(ctx, { Dockerfile: 'FROM deb:l0\nONBUILD RUN echo triggered > /t.txt\nONBUILD COPY app.txt /app/\nCMD ["true"]\n', 'app.txt': 'base context\n' });
  c.ok(['build', '-q', '-t', 'onbuild:1', ctx]);
  const cfg = (id: string): Record<string, unknown> => (JSON.parse(c.ok(['image', 'inspect', id])) as { Config: Record<string, unknown> }[])[0]!.Config;
  t.deepEqual(cfg('onbuild:1').OnBuild, ['RUN echo triggered > /t.txt', 'COPY app.txt /app/']);
  t.is(c.strata(['run', '--rm', 'onbuild:1', 'ls', '/t.txt']).status, 2, 'not run in the image that declares them');
  const child = path.join(c.base, 'child');
  writeTree(child, { Dockerfile: 'FROM onbuild:1\nRUN cat /t.txt /app/app.txt > /both.txt\n', 'app.txt': 'child context\n' });
  const iid = path.join(c.base, 'iid');
  const out = c.ok(['build', '--label', 'org.example=yes', '--label', 'x=', '--iidfile', iid, '-t', 'child:1', child]);
  t.is(fs.readFileSync(iid, 'utf8'), lastLine(out));
  t.deepEqual(cfg('child:1').Labels, { 'org.example': 'yes', x: '' });
  t.regex(out, /--> Executing 2 build triggers\n--> RUN echo triggered > \/t.txt\n[\s\S]*--> COPY app.txt \/app\/\n/);
  t.is(c.ok(['run', '--rm', 'child:1', 'cat', '/both.txt']), 'triggered\nchild context\n');
  t.is(cfg('child:1').OnBuild, undefined, 'triggers are not inherited');
  // a grandchild runs nothing
  writeTree(child, { Dockerfile: 'FROM child:1\nRUN rm /t.txt\n' });
  t.notRegex(c.ok(['build', '-t', 'grandchild:1', child]), /build trigger/);
  // triggers ONBUILD may not hold
  writeTree(ctx, { Dockerfile: 'FROM deb:l0\nONBUILD FROM deb:l0\n' });
  oneLineError(t, c.strata(['build', ctx]), /Dockerfile line 2: FROM is not allowed as an ONBUILD trigger/);
  writeTree(ctx, { Dockerfile: 'FROM deb:l0\nONBUILD onbuild RUN true\n' });
  oneLineError(t, c.strata(['build', ctx]), /Dockerfile line 2: ONBUILD is not allowed as an ONBUILD trigger/);
});
