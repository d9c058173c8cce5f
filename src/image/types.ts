// The image model shared by the store, the archive formats and the commands: OCI image config,
// manifest and index as JSON types, plus digest helpers. Docker's and OCI's configs are the same
// JSON; only the media types of manifests differ.

import { createHash } from 'node:crypto';

export const MEDIA = Object.freeze({
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
});

/** One entry of an image config's history (OCI image spec). */
export interface HistoryEntry {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

/** The runtime part of an image config (OCI `config`, Docker `config`). */
export interface RunConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  WorkingDir?: string;
  Labels?: Record<string, string> | null;
  ExposedPorts?: Record<string, object>;
  Volumes?: Record<string, object>;
  StopSignal?: string;
  [key: string]: unknown;
}

/** An image config (application/vnd.oci.image.config.v1+json). Unknown keys are kept. */
export interface ImageConfig {
  created?: string;
  author?: string;
  architecture: string;
  os: string;
  config?: RunConfig;
  rootfs: { type: 'layers'; diff_ids: string[] };
  history?: HistoryEntry[];
  [key: string]: unknown;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { architecture: string; os: string; variant?: string; 'os.version'?: string; 'os.features'?: string[] };
}

export interface Manifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

export interface Index {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
}

/** "sha256:<hex>" of bytes. */
export function sha256Digest(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

/** The hex part of a sha256 digest; throws on anything else (digests name files in the store). */
export function digestHex(digest: string): string {
  if (!DIGEST_RE.test(digest)) throw new ImageError(`not a sha256 digest: ${JSON.stringify(digest).slice(0, 100)}`);
  return digest.slice(7);
}

/** Chain ID of a layer (image-spec): the diff ID for the first, else sha256("<parent> <diffID>"). */
export function chainId(parent: string | null, diffId: string): string {
  return parent === null ? diffId : sha256Digest(`${parent} ${diffId}`);
}

/** Chain IDs of a stack of diff IDs, bottom first. */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) out.push(chainId(out.at(-1) ?? null, d));
  return out;
}

/** An error the user caused or can act on: the CLI prints its message as one line. */
export class ImageError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = 'ImageError';
  }
}

/** Whether a layer media type means gzip. */
export function isGzipMediaType(mediaType: string): boolean {
  return mediaType.endsWith('+gzip') || mediaType.endsWith('.gzip');
}

/** An image's platform, as configs and index entries name it (Go's GOOS/GOARCH, and GOARM's variant). */
export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

/** The host's platform, as Go names it (x64 is amd64; 32-bit ARM is arm/v7, 64-bit arm64/v8). */
export function hostPlatform(): Platform {
  const arch: Record<string, string> = {
    x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64', mips: 'mips', mipsel: 'mipsle', loong64: 'loong64',
  };
  const architecture = arch[process.arch] ?? process.arch;
  return { os: 'linux', architecture, ...(architecture === 'arm' ? { variant: 'v7' } : architecture === 'arm64' ? { variant: 'v8' } : {}) };
}
