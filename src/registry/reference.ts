// Image references as Docker and podman read them: [HOST[:PORT]/]PATH[:TAG][@DIGEST].
//
// The first component names a registry when it holds a "." or a ":", or is "localhost";
// otherwise the image is on Docker Hub ("docker.io"), where one-component names live under
// "library/". No tag and no digest means ":latest". (distribution/reference's normalize.go.)

import { ImageError } from '../image/types.js';

export const DOCKER_HUB = 'docker.io';
/** Where Docker Hub's registry API answers. */
const DOCKER_HUB_API = 'registry-1.docker.io';

export interface Reference {
  /** Registry host as named (with port): "docker.io", "127.0.0.1:5000", "quay.io". */
  registry: string;
  /** Repository path in that registry: "library/debian", "team/app". */
  repository: string;
  tag?: string;
  /** "sha256:<hex>" when pinned. */
  digest?: string;
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

function bad(ref: string, why: string): ImageError {
  return new ImageError(`invalid reference "${ref}": ${why}`, 2);
}

/** Parses a reference; throws a one-line ImageError (exit 2) on a malformed one. */
export function parseReference(ref: string): Reference {
  if (ref.length === 0 || ref.length > 255 + 128 + 72) throw bad(ref, ref.length === 0 ? 'empty' : 'too long');
  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad(ref, 'the digest must be sha256: and 64 lowercase hex digits');
  }
  let tag: string | undefined;
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(ref, `bad tag "${tag}"`);
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  const first = parts[0]!;
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost' || /[A-Z]/.test(first))) {
    if (!HOST.test(first)) throw bad(ref, `bad registry host "${first}"`);
    registry = first;
    parts.shift();
  }
  if (parts.length === 0 || parts.some((p) => !COMPONENT.test(p))) {
    throw bad(ref, 'repository names are lowercase letters, digits and separators (. _ __ -), in /-separated components');
  }
  if (registry === 'index.docker.io') registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  const repository = parts.join('/');
  if (repository.length > 255) throw bad(ref, 'the repository name is longer than 255 characters');
  if (tag === undefined && digest === undefined) tag = 'latest';
  return { registry, repository, ...(tag !== undefined ? { tag } : {}), ...(digest !== undefined ? { digest } : {}) };
}

/** "HOST/REPO" (docker.io included, as podman names images). */
export function repoName(r: Reference): string {
  return `${r.registry}/${r.repository}`;
}

/** The full reference: "HOST/REPO:TAG", "HOST/REPO@DIGEST" or both. */
export function formatReference(r: Reference): string {
  return `${repoName(r)}${r.tag !== undefined ? `:${r.tag}` : ''}${r.digest !== undefined ? `@${r.digest}` : ''}`;
}

/** Where the registry's HTTP API answers (Docker Hub's is another host than its name). */
export function apiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
}

/**
 * Whether a registry may be reached without verified TLS by default: as Docker's built-in
 * insecure range, the loopback addresses (and "localhost").
 */
export function isLoopback(registry: string): boolean {
  const host = registry.startsWith('[') ? registry.slice(1, registry.indexOf(']')) : registry.replace(/:[0-9]+$/, '');
  return host === 'localhost' || host === '::1' || /^127(?:\.[0-9]{1,3}){3}$/.test(host);
}
