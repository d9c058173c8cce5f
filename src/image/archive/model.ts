// The model between archive formats and the store (go-containerregistry's Image / Layer idea):
// a reader turns a docker-archive, an OCI archive or an OCI layout into SourceImages; the loader
// puts those into the store. A writer turns stored images into one format. A format is one file.

import type { Readable } from 'node:stream';
import type { ImageConfig } from '../types.js';

/** One layer as an archive holds it: a blob to stream, and what it must hash to. */
export interface SourceLayer {
  /** sha256 of the uncompressed tar (from the config's rootfs.diff_ids). */
  diffId: string;
  /** Digest and size of the blob when the format names them (OCI); checked while streaming. */
  digest?: string;
  size?: number;
  mediaType?: string;
  /**
   * The blob need not be read when the store holds this layer's chain with this very blob (a
   * registry's: reading it would be a download); an archive's layers are read and checked anyway.
   */
  trustStored?: boolean;
  /** The blob is this file in the store's tmp/, checked against `digest` and `size` already (store.addLayer's verifiedBlobFile). */
  verifiedFile?: string;
  /** Resolves when the blob can be opened (a download still under way); rejects if it cannot be. */
  ready?: () => Promise<void>;
  /** A fresh stream of the blob's bytes. */
  open(): Readable;
}

/** One image as an archive holds it. */
export interface SourceImage {
  /** References to tag it with ("name:tag"); may be empty. */
  tags: string[];
  /** The config's exact bytes (their digest is the image ID) and their parse. */
  configBytes: Buffer;
  config: ImageConfig;
  /** The manifest's exact bytes when the format has one (OCI): kept so its digest stays. */
  manifestBytes?: Buffer;
  /** Bottom first. */
  layers: SourceLayer[];
}

export type ArchiveFormat = 'docker-archive' | 'oci-archive' | 'oci-dir';

export const ARCHIVE_FORMATS: readonly ArchiveFormat[] = ['docker-archive', 'oci-archive', 'oci-dir'];
