// xop: a tiny C program, compiled once per test process, for the system calls Node's fs does not
// offer (xattrs, utimensat with nanoseconds, mknod/mkfifo, renameat2 flags) and for running
// operations as another user (setgroups/setgid/setuid before the first operation).
//
// It reads commands from stdin, one per line, and prints one result line per command:
// "ok", "ok <field>..." or "err <errno number>". String arguments (paths, xattr names and values,
// data) travel hex-encoded so that no byte is lost; numbers are decimal.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { run } from './exec.js';
import { FifoChannel } from './fifo-channel.js';
import { isAlive } from './processes.js';

const SOURCE = String.raw`
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

static char *unhex(const char *h, size_t *len) {
  if (!strcmp(h, "-")) h = ""; /* the empty string */
  size_t n = strlen(h) / 2;
  char *b = malloc(n + 1);
  for (size_t i = 0; i < n; i++) { unsigned v; sscanf(h + 2 * i, "%2x", &v); b[i] = (char)v; }
  b[n] = 0;
  if (len) *len = n;
  return b;
}
static void puthex(const char *b, size_t n) {
  for (size_t i = 0; i < n; i++) printf("%02x", (unsigned char)b[i]);
}
static long long num(const char *s) { return strtoll(s, NULL, 10); }
#define ARG(i) unhex(av[i], NULL)
#define FAIL() do { printf("err %d\n", errno); return; } while (0)
#define OK() do { printf("ok\n"); return; } while (0)

static void do_stat(const char *p) {
  struct stat st;
  if (lstat(p, &st) < 0) FAIL();
  printf("ok %u %u %u %lld %llu %llu %u %u %lld %lld %lld %lld %lld\n", st.st_mode, st.st_uid, st.st_gid,
         (long long)st.st_size, (unsigned long long)st.st_nlink, (unsigned long long)st.st_ino,
         major(st.st_rdev), minor(st.st_rdev), (long long)st.st_atim.tv_sec, (long long)st.st_atim.tv_nsec,
         (long long)st.st_mtim.tv_sec, (long long)st.st_mtim.tv_nsec, (long long)st.st_blocks);
}

static void do_read_fd(int fd) {
  static char buf[1 << 16];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) { printf(" ERR%d", errno); break; }
    if (n == 0) break;
    puthex(buf, (size_t)n);
  }
}

static void one(int ac, char **av) {
  const char *c = av[0];
  if (!strcmp(c, "setxattr") && ac == 5) {
    size_t n; char *v = unhex(av[3], &n);
    if (lsetxattr(ARG(1), ARG(2), v, n, (int)num(av[4])) < 0) FAIL(); OK();
  } else if (!strcmp(c, "removexattr") && ac == 3) {
    if (lremovexattr(ARG(1), ARG(2)) < 0) FAIL(); OK();
  } else if (!strcmp(c, "getxattr") && ac == 3) {
    static char v[65536];
    ssize_t n = lgetxattr(ARG(1), ARG(2), v, sizeof v);
    if (n < 0) FAIL();
    printf("ok "); puthex(v, (size_t)n); printf("\n");
  } else if (!strcmp(c, "xattrs") && ac == 2) {
    /* every xattr of one path: ok <namehex>:<valuehex> ... */
    static char names[65536], v[65536];
    char *p = ARG(1);
    ssize_t n = llistxattr(p, names, sizeof names);
    if (n < 0) FAIL();
    printf("ok");
    for (char *q = names; q < names + n; q += strlen(q) + 1) {
      ssize_t m = lgetxattr(p, q, v, sizeof v);
      printf(" "); puthex(q, strlen(q)); printf(":");
      if (m >= 0) puthex(v, (size_t)m); else printf("ERR%d", errno);
    }
    printf("\n");
  } else if (!strcmp(c, "utimens") && ac == 6) {
    struct timespec ts[2] = {{num(av[2]), num(av[3])}, {num(av[4]), num(av[5])}};
    if (utimensat(AT_FDCWD, ARG(1), ts, AT_SYMLINK_NOFOLLOW) < 0) FAIL(); OK();
  } else if (!strcmp(c, "mknod") && ac == 5) {
    if (mknod(ARG(1), (mode_t)num(av[2]), makedev(num(av[3]), num(av[4]))) < 0) FAIL(); OK();
  } else if (!strcmp(c, "rename2") && ac == 4) {
    if (syscall(SYS_renameat2, AT_FDCWD, ARG(1), AT_FDCWD, ARG(2), (unsigned)num(av[3])) < 0) FAIL(); OK();
  } else if (!strcmp(c, "open") && ac == 4) {
    int fd = open(ARG(1), (int)num(av[2]), (mode_t)num(av[3]));
    if (fd < 0) FAIL(); close(fd); OK();
  } else if (!strcmp(c, "write") && ac == 5) {
    /* open with flags, pwrite data at offset */
    size_t n; char *d = unhex(av[4], &n);
    int fd = open(ARG(1), (int)num(av[2]), 0644);
    if (fd < 0) FAIL();
    if (n && pwrite(fd, d, n, (off_t)num(av[3])) != (ssize_t)n) { int e = errno; close(fd); errno = e; FAIL(); }
    if (close(fd) < 0) FAIL(); OK();
  } else if (!strcmp(c, "create") && ac == 4) {
    size_t n; char *d = unhex(av[3], &n);
    int fd = open(ARG(1), O_CREAT | O_EXCL | O_WRONLY, (mode_t)num(av[2]));
    if (fd < 0) FAIL();
    if (n && write(fd, d, n) != (ssize_t)n) { int e = errno; close(fd); errno = e; FAIL(); }
    if (close(fd) < 0) FAIL(); OK();
  } else if (!strcmp(c, "read") && ac == 2) {
    int fd = open(ARG(1), O_RDONLY);
    if (fd < 0) FAIL();
    printf("ok "); do_read_fd(fd); printf("\n"); close(fd);
  } else if (!strcmp(c, "openunlink") && ac == 2) {
    /* open, unlink through the path, then fstat and read through the descriptor */
    char *p = ARG(1);
    int fd = open(p, O_RDONLY);
    if (fd < 0) FAIL();
    if (unlink(p) < 0) { int e = errno; close(fd); errno = e; FAIL(); }
    struct stat st;
    if (fstat(fd, &st) < 0) { int e = errno; close(fd); errno = e; FAIL(); }
    printf("ok %llu %lld ", (unsigned long long)st.st_nlink, (long long)st.st_size);
    do_read_fd(fd); printf("\n"); close(fd);
  } else if (!strcmp(c, "truncate") && ac == 3) {
    if (truncate(ARG(1), (off_t)num(av[2])) < 0) FAIL(); OK();
  } else if (!strcmp(c, "chmod") && ac == 3) {
    if (chmod(ARG(1), (mode_t)num(av[2])) < 0) FAIL(); OK();
  } else if (!strcmp(c, "lchown") && ac == 4) {
    if (lchown(ARG(1), (uid_t)num(av[2]), (gid_t)num(av[3])) < 0) FAIL(); OK();
  } else if (!strcmp(c, "mkdir") && ac == 3) {
    if (mkdir(ARG(1), (mode_t)num(av[2])) < 0) FAIL(); OK();
  } else if (!strcmp(c, "rmdir") && ac == 2) {
    if (rmdir(ARG(1)) < 0) FAIL(); OK();
  } else if (!strcmp(c, "unlink") && ac == 2) {
    if (unlink(ARG(1)) < 0) FAIL(); OK();
  } else if (!strcmp(c, "link") && ac == 3) {
    if (link(ARG(1), ARG(2)) < 0) FAIL(); OK();
  } else if (!strcmp(c, "symlink") && ac == 3) {
    if (symlink(ARG(1), ARG(2)) < 0) FAIL(); OK();
  } else if (!strcmp(c, "dirents") && ac == 2) {
    /* raw readdir: ok <namehex>:<d_ino>:<d_type> ... ('.' and '..' left out) */
    DIR *d = opendir(ARG(1));
    if (!d) FAIL();
    printf("ok");
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      printf(" "); puthex(e->d_name, strlen(e->d_name));
      printf(":%llu:%u", (unsigned long long)e->d_ino, (unsigned)e->d_type);
    }
    if (errno) printf(" ERR%d", errno);
    printf("\n");
    closedir(d);
  } else if (!strcmp(c, "stat") && ac == 2) {
    do_stat(ARG(1));
  } else if (!strcmp(c, "fallocate") && ac == 5) {
    int fd = open(ARG(1), O_RDWR);
    if (fd < 0) FAIL();
    if (fallocate(fd, (int)num(av[2]), (off_t)num(av[3]), (off_t)num(av[4])) < 0) { int e = errno; close(fd); errno = e; FAIL(); }
    if (close(fd) < 0) FAIL(); OK();
  } else if (!strcmp(c, "tmpfile") && ac == 5) {
    /* O_TMPFILE in a directory, data written, then linked to a new path through /proc/self/fd */
    size_t n; char *d = unhex(av[4], &n);
    int fd = open(ARG(1), O_TMPFILE | O_RDWR, (mode_t)num(av[2]));
    if (fd < 0) FAIL();
    char proc[64]; snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if ((n && write(fd, d, n) != (ssize_t)n) || linkat(AT_FDCWD, proc, AT_FDCWD, ARG(3), AT_SYMLINK_FOLLOW) < 0) {
      int e = errno; close(fd); errno = e; FAIL();
    }
    if (close(fd) < 0) FAIL(); OK();
  } else if (!strcmp(c, "seekdir") && ac == 3) {
    /* read a directory noting telldir before each entry, seekdir back to entry k, read on:
       ok <entries> <1 when the names after the seek are the ones first read from k on> */
    DIR *d = opendir(ARG(1));
    if (!d) FAIL();
    static long pos[1 << 16]; static char *names[1 << 16]; int cnt = 0;
    for (;;) {
      long p = telldir(d); struct dirent *e = readdir(d);
      if (!e || cnt == (1 << 16)) break;
      pos[cnt] = p; names[cnt++] = strdup(e->d_name);
    }
    int k = cnt ? (int)(num(av[2]) % cnt) : 0, same = 1, i = k;
    if (cnt) seekdir(d, pos[k]);
    struct dirent *e;
    while (cnt && (e = readdir(d))) if (i >= cnt || strcmp(e->d_name, names[i++])) same = 0;
    if (i != cnt) same = 0;
    printf("ok %d %d\n", cnt, same);
    for (int j = 0; j < cnt; j++) free(names[j]);
    closedir(d);
  } else {
    printf("err %d\n", EINVAL);
  }
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "--as")) {
    unsigned u, g;
    if (sscanf(argv[2], "%u:%u", &u, &g) != 2) return 2;
    if (setgroups(0, NULL) < 0 || setgid(g) < 0 || setuid(u) < 0) { perror("xop: dropping privileges"); return 3; }
  }
  static char line[1 << 20];
  while (fgets(line, sizeof line, stdin)) {
    char *av[16]; int ac = 0;
    for (char *tok = strtok(line, " \n"); tok && ac < 16; tok = strtok(NULL, " \n")) av[ac++] = tok;
    if (ac == 0) continue;
    one(ac, av);
    fflush(stdout);
  }
  return 0;
}
`;

let binary: string | undefined;

/** Path of the compiled helper (built on first use, removed when the process exits). */
export function xopBinary(): string {
  if (binary) return binary;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xop-'));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.join(dir, 'xop.c');
  fs.writeFileSync(src, SOURCE);
  const out = path.join(dir, 'xop');
  const r = run('cc', ['-O1', '-Wall', '-o', out, src]);
  if (r.status !== 0) throw new Error(`cannot compile the xop helper: ${r.stderr}`);
  fs.chmodSync(dir, 0o755); // runnable by the unprivileged users of the permission tests
  binary = out;
  return out;
}

/** One command: its name and arguments; strings and Buffers are hex-encoded, numbers/bigints decimal. */
export type XArg = string | Buffer | number | bigint;
export type XCmd = [string, ...XArg[]];

export type XResult = { ok: string[] } | { err: string };

const errnoNames = new Map<number, string>(Object.entries(os.constants.errno).map(([k, v]) => [v, k]));
export function errnoName(n: number): string {
  return errnoNames.get(n) ?? `E#${n}`;
}

function encode(a: XArg): string {
  if (typeof a === 'number' || typeof a === 'bigint') return a.toString();
  return (typeof a === 'string' ? Buffer.from(a, 'utf8') : a).toString('hex') || '-';
}

export interface XopOptions {
  /** Run as this uid:gid (supplementary groups cleared). */
  as?: [number, number];
}

/**
 * One long-lived xop process per user (spawning one per call cost most of a random-ops seed's
 * time): commands go through a FIFO to its stdin, answers come back through another FIFO, read
 * without blocking the event loop's thread for longer than the answer takes. It holds no
 * descriptor between commands (each command closes what it opened), so it never keeps a mount busy.
 */
class XopServer {
  private readonly channel = new FifoChannel('xops-');
  private readonly child: ChildProcess;

  constructor(args: string[]) {
    const [inp, out] = this.channel.childStdio();
    this.child = spawn(xopBinary(), args, { stdio: [inp, out, 'inherit'], cwd: '/' });
    fs.closeSync(out);
    fs.closeSync(inp);
    this.child.unref();
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && this.child.pid !== undefined && isAlive(this.child.pid);
  }

  /** Sends `input` (lines) and returns `count` answer lines. */
  call(input: string, count: number, timeoutMs: number): string[] {
    this.channel.send(input);
    const lines: string[] = [];
    const end = Date.now() + timeoutMs;
    while (lines.length < count) {
      const line = this.channel.readLine(
        Math.max(0, end - Date.now()),
        () => this.alive,
        () => new Error(`xop ended after ${lines.length} of ${count} answers`),
        () => new Error(`xop gave ${lines.length} of ${count} answers within ${timeoutMs} ms`),
      );
      if (line !== '') lines.push(line);
    }
    return lines;
  }

  close(): void {
    try {
      this.child.kill('SIGKILL');
    } catch {
      // gone already
    }
    this.channel.close();
  }
}

const servers = new Map<string, XopServer>();
process.on('exit', () => {
  for (const s of servers.values()) s.close();
});

function server(args: string[]): XopServer {
  const key = args.join(' ');
  let s = servers.get(key);
  if (s && !s.alive) {
    s.close();
    s = undefined;
  }
  if (!s) servers.set(key, (s = new XopServer(args)));
  return s;
}

/** Runs commands in the xop process of the user (one per user, kept); one result per command. */
export function xop(cmds: readonly XCmd[], opts: XopOptions = {}): XResult[] {
  if (cmds.length === 0) return [];
  // An empty string is sent as '-' (an empty token would vanish between the separators).
  const input = cmds.map((c) => [c[0], ...c.slice(1).map(encode)].join(' ')).join('\n') + '\n';
  const args = opts.as ? ['--as', `${opts.as[0]}:${opts.as[1]}`] : [];
  const s = server(args);
  let lines: string[];
  try {
    lines = s.call(input, cmds.length, 120_000);
  } catch (e) {
    s.close();
    servers.delete(args.join(' '));
    throw e;
  }
  return lines.map((l) => {
    const f = l.split(' ');
    if (f[0] === 'err') return { err: errnoName(Number(f[1])) };
    return { ok: f.slice(1) };
  });
}

/** Runs one command; throws with the command on failure. */
export function xopOk(cmd: XCmd, opts: XopOptions = {}): string[] {
  const [res] = xop([cmd], opts);
  if ('err' in res!) throw new Error(`${cmd[0]} ${cmd.slice(1).map(String).join(' ')}: ${res.err}`);
  return res!.ok;
}
