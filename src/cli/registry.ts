// `strata pull REFERENCE` and `strata push IMAGE [DESTINATION]`: podman's verbs and flags
// (--tls-verify, --creds, --authfile, --platform, -q). On a terminal, what happens goes to stderr,
// a line per step, with a progress bar; stdout gets the result: the image ID for a pull, "TAG: digest: DIGEST size: N" for a push (as
// docker prints it), or JSON with --json.

import type { CommandModule } from 'yargs';
import type { ClientOptions } from '../registry/client.js';
import type { Store } from '../image/store.js';
import { type CommonArgs, printJson } from './image.js';
import { guarded, out, storeOption } from './options.js';
import { byteProgress, type Progress } from './progress.js';

interface RegistryArgs extends CommonArgs {
  tlsVerify?: boolean;
  certDir?: string;
  creds?: string;
  authfile?: string;
  quiet: boolean;
}

const common = {
  store: storeOption,
  json: { type: 'boolean', default: false, describe: 'print JSON' },
  'log-level': { type: 'string', default: 'warn', describe: 'trace, debug, info, warn, error (JSON logs on stderr)' },
  'tls-verify': {
    type: 'boolean',
    describe: 'require HTTPS with a verified certificate (default: yes, except for loopback registries; --tls-verify=false also tries plain HTTP)',
  },
  'cert-dir': {
    type: 'string',
    describe: 'the registry\'s certificates: *.crt authorities, NAME.cert + NAME.key a client certificate (default: certs.d, see README)',
  },
  creds: { type: 'string', describe: 'USER:PASSWORD for the registry (default: from the auth files, see README)' },
  authfile: { type: 'string', describe: 'the auth file with credentials (podman\'s auth.json or docker\'s config.json format)' },
  quiet: { alias: 'q', type: 'boolean', default: false, describe: 'print no progress' },
} as const;

export const PULL_OPTIONS = {
  ...common,
  platform: { type: 'string', describe: 'OS/ARCH[/VARIANT] to take from a multi-platform image (default: the host\'s)' },
} as const;
export const PUSH_OPTIONS = common;

/** What `strata run` takes for the pull of an image it lacks. */
export const RUN_PULL_OPTIONS = {
  pull: { type: 'string', describe: 'pull the image: missing (when the store lacks it; the default), always, never' },
  'tls-verify': common['tls-verify'],
  'cert-dir': common['cert-dir'],
  creds: common.creds,
  authfile: common.authfile,
  platform: PULL_OPTIONS.platform,
} as const;

async function clientOptions(a: RegistryArgs): Promise<ClientOptions> {
  const { parseCreds } = await import('../registry/auth.js');
  return {
    ...(a.tlsVerify !== undefined ? { tlsVerify: a.tlsVerify } : {}),
    ...(a.certDir !== undefined ? { certDir: a.certDir } : {}),
    ...(a.creds !== undefined ? { creds: parseCreds(a.creds) } : {}),
    ...(a.authfile !== undefined ? { authfile: a.authfile } : {}),
  };
}

/** A byte bar whose total is known only once the transfer is planned; bytes before that are kept. */
function plannedBar(what: string, quiet: boolean): { plan: (total: number) => Promise<void>; tick: (n: number) => void; stop: () => void } {
  let bar: Progress | null = null;
  let early = 0;
  return {
    plan: async (total) => {
      bar = await byteProgress(what, total, quiet);
      bar.tick(early);
    },
    tick: (n) => (bar ? bar.tick(n) : void (early += n)),
    stop: () => bar?.stop(),
  };
}

function statusPrinter(a: RegistryArgs): (line: string) => void {
  // (on a terminal only: a script's stderr holds nothing but an error, in one line)
  return a.quiet || a.json || !process.stderr.isTTY ? () => {} : (line) => process.stderr.write(`${line}\n`);
}

export const pullCommand: CommandModule = {
  command: 'pull <reference>',
  describe: 'pull an image from a registry into the store ([HOST[:PORT]/]NAME[:TAG][@DIGEST])',
  builder: (y) => y.positional('reference', { type: 'string', demandOption: true }).options(PULL_OPTIONS),
  handler: guarded(async (argv) => {
    const a = argv as unknown as RegistryArgs & { reference: string; platform?: string };
    // (not withImageStore: the store is opened only for moments, not during the downloads)
    const [{ parsePlatform, pullImage }, { withStore, storeDir }] = await Promise.all([import('../registry/pull.js'), import('../image/store.js')]);
    const root = storeDir(a.store);
    const opts = { ...(await clientOptions(a)), ...(a.platform !== undefined ? { platform: parsePlatform(a.platform) } : {}) };
    const bar = plannedBar('pulling', a.quiet || a.json);
    const r = await pullImage({ root, open: (fn) => withStore(root, fn) }, a.reference, opts, {
      onStatus: statusPrinter(a), onPlan: (_n, bytes) => void bar.plan(bytes), onBytes: bar.tick,
    }).finally(bar.stop);
    if (a.json) printJson({ id: r.image.id, reference: r.reference, digest: r.digest, downloaded: r.downloaded, reused: r.reused });
    else out(r.image.id);
    process.exit(0);
  }),
};

export const pushCommand: CommandModule = {
  command: 'push <image> [destination]',
  describe: 'push an image of the store to a registry (to DESTINATION, [HOST[:PORT]/]NAME[:TAG], or to its own name)',
  builder: (y) => y.positional('image', { type: 'string', demandOption: true }).positional('destination', { type: 'string' }).options(PUSH_OPTIONS),
  handler: guarded(async (argv) => {
    const a = argv as unknown as RegistryArgs & { image: string; destination?: string };
    // (not withImageStore: the store is opened only for moments, not during the uploads)
    const [{ pushImage }, { withStore, storeDir }] = await Promise.all([import('../registry/push.js'), import('../image/store.js')]);
    const root = storeDir(a.store);
    const bar = plannedBar('pushing', a.quiet || a.json);
    const r = await pushImage((fn) => withStore(root, fn), a.image, a.destination, await clientOptions(a), {
      onStatus: statusPrinter(a), onPlan: (bytes) => void bar.plan(bytes), onBytes: bar.tick,
    }).finally(bar.stop);
    if (a.json) {
      printJson(r);
    } else {
      const tag = r.reference.slice(r.reference.lastIndexOf(':') + 1);
      out(`${tag}: digest: ${r.digest} size: ${r.size}`);
    }
    process.exit(0);
  }),
};

export type PullPolicy = 'missing' | 'always' | 'never';

export interface EnsureArgs {
  pull?: string;
  tlsVerify?: boolean;
  certDir?: string;
  creds?: string;
  authfile?: string;
  platform?: string;
}

/**
 * Before `strata run`: pulls the image when the store lacks it (--pull missing, the default, as
 * docker and podman do), always (--pull always), or never. A reference the store lacks and no
 * registry gives is "no such image", with why the pull failed.
 */
export async function ensureImage(storeDir: string, ref: string, a: EnsureArgs): Promise<void>;
export async function ensureImage<T>(storeDir: string, ref: string, a: EnsureArgs, then: (s: Store) => Promise<T>): Promise<T>;
/** Pulls `ref` as --pull says; then `then` with the store open (with the check's opening when nothing is pulled). */
export async function ensureImage<T>(storeDir: string, ref: string, a: EnsureArgs, then?: (s: Store) => Promise<T>): Promise<T | undefined> {
  const policy = (a.pull ?? 'missing') as PullPolicy;
  const { ImageError } = await import('../image/types.js');
  if (!['missing', 'always', 'never'].includes(policy)) throw new ImageError(`--pull takes missing, always or never, not "${policy}"`, 2);
  const { withStore } = await import('../image/store.js');
  if (policy === 'never') return then ? withStore(storeDir, then) : undefined;
  // (the common case, an image the store has: one opening for the check and `then`)
  const checked = await withStore(storeDir, async (store) => {
    const present = (await store.findImage(ref)) !== undefined;
    return present && policy === 'missing' ? { done: true as const, value: await then?.(store) } : { done: false as const, present };
  });
  if (checked.done) return checked.value;
  const { present } = checked;
  const { parsePlatform, pullImage } = await import('../registry/pull.js');
  const opts = { ...(await clientOptions({ ...a, quiet: true, json: false, logLevel: 'warn' })), ...(a.platform !== undefined ? { platform: parsePlatform(a.platform) } : {}) };
  const status = statusPrinter({ quiet: false, json: false, logLevel: 'warn' });
  if (!present) status(`Unable to find image '${ref}' in the store`);
  try {
    await pullImage({ root: storeDir, open: (fn) => withStore(storeDir, fn) }, ref, opts, { onStatus: status });
  } catch (e) {
    if (present || !(e instanceof ImageError) || e.exitCode === 2) throw e;
    throw new ImageError(`no such image: ${ref} (not in the store, and pulling it failed: ${e.message})`, 125);
  }
  return then ? withStore(storeDir, then) : undefined;
}

export const LOGIN_OPTIONS = {
  username: { alias: 'u', type: 'string', describe: 'the user name' },
  password: { alias: 'p', type: 'string', describe: 'the password (visible to other users in the process list: prefer --password-stdin)' },
  'password-stdin': { type: 'boolean', default: false, describe: 'read the password from standard input' },
  authfile: { type: 'string', describe: 'the auth file to write (default $REGISTRY_AUTH_FILE, else podman\'s: $XDG_RUNTIME_DIR/containers/auth.json or /run/containers/UID/auth.json)' },
  'tls-verify': common['tls-verify'],
  'cert-dir': common['cert-dir'],
  'log-level': common['log-level'],
} as const;
export const LOGOUT_OPTIONS = {
  authfile: LOGIN_OPTIONS.authfile,
  all: { alias: 'a', type: 'boolean', default: false, describe: 'remove the credentials of every registry' },
  'log-level': common['log-level'],
} as const;

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

/** The registry a login or logout names: a host (default Docker Hub), not an image. */
async function registryArg(value: string | undefined): Promise<string> {
  const { DOCKER_HUB } = await import('../registry/reference.js');
  const { ImageError } = await import('../image/types.js');
  if (value === undefined) return DOCKER_HUB;
  const host = value.replace(/^https?:\/\//, '').replace(/\/+$/, '');
  if (host === '' || host.includes('/') || host.includes('@')) throw new ImageError(`give a registry host (e.g. quay.io, 127.0.0.1:5000), not "${value}"`, 2);
  return host === 'index.docker.io' || host === 'registry-1.docker.io' ? DOCKER_HUB : host;
}

export const loginCommand: CommandModule = {
  command: 'login [registry]',
  describe: 'check credentials with a registry and keep them in the auth file (default registry: docker.io)',
  builder: (y) => y.positional('registry', { type: 'string' }).options(LOGIN_OPTIONS),
  handler: guarded(async (argv) => {
    const a = argv as unknown as { registry?: string; username?: string; password?: string; passwordStdin: boolean; authfile?: string; tlsVerify?: boolean; certDir?: string };
    const { ImageError } = await import('../image/types.js');
    const registry = await registryArg(a.registry);
    if (a.passwordStdin && a.password !== undefined) throw new ImageError('give --password or --password-stdin, not both', 2);
    if (!a.username) throw new ImageError('give the user name with -u USER (strata does not prompt)', 2);
    const password = a.passwordStdin ? await readStdin() : a.password;
    if (!password) throw new ImageError('give the password with --password-stdin (or -p PASSWORD)', 2);
    const creds = { username: a.username, password };
    const { RegistryClient } = await import('../registry/client.js');
    await new RegistryClient({ registry, repository: '' }, null, {
      creds, ...(a.tlsVerify !== undefined ? { tlsVerify: a.tlsVerify } : {}), ...(a.certDir !== undefined ? { certDir: a.certDir } : {}),
    }).connect();
    const { defaultAuthFile, storeCredentials } = await import('../registry/auth.js');
    storeCredentials(a.authfile ?? defaultAuthFile(), registry, creds);
    out('Login Succeeded!');
  }),
};

export const logoutCommand: CommandModule = {
  command: 'logout [registry]',
  describe: 'remove a registry\'s credentials from the auth file (--all: every registry\'s)',
  builder: (y) => y.positional('registry', { type: 'string' }).options(LOGOUT_OPTIONS),
  handler: guarded(async (argv) => {
    const a = argv as unknown as { registry?: string; authfile?: string; all: boolean };
    const { defaultAuthFile, removeCredentials } = await import('../registry/auth.js');
    const { ImageError } = await import('../image/types.js');
    const file = a.authfile ?? defaultAuthFile();
    if (a.all) {
      removeCredentials(file, null);
      out('Removed login credentials for all registries');
      return;
    }
    const registry = await registryArg(a.registry);
    if (!removeCredentials(file, registry)) throw new ImageError(`not logged into ${registry} (in ${file})`);
    out(`Removed login credentials for ${registry}`);
  }),
};
