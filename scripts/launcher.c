/* The strata command (bin/strata), built by `make build` with the absolute paths of node and of
 * the bundled CLI's loader, dist/src/bundle/load.cjs (so it works under mount(8)'s minimal PATH).
 *
 * Every command runs as `node main.js ARGS...` in this process (exec). A background mount would
 * need two Node.js processes (the command, which must return, and the daemon, which stays), and
 * Node's start-up is most of a mount's time; so for a mount this launcher forks and the child
 * execs `node main.js ARGS... __daemon MOUNTPOINT`, which parses, mounts and serves (its command
 * line ends with its mount point, as it did when the CLI started it). Here the parent waits
 * for one line on a status pipe (the child's fd 3), see src/cli/mount.ts:
 *   ok MNT     exit 0: the mount is live, the daemon serves on (after one statx of MNT through the
 *              kernel, as a check and so that the kernel caches the root's attributes, birth time
 *              included, as Node's stat asks for it: a later stat by `strata umount` of a hung
 *              daemon's mount must not wait for the daemon);
 *   error MSG  print "strata: MSG", exit with the daemon's status;
 *   pass       not a background mount after all: pass its output through, exit with its status.
 * No line means the daemon died: one line says so, with the telling line of its stderr.
 * Which arguments fork is only a guess made here: a wrong guess costs a fork, not a behaviour. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef STRATA_NODE
#error "build with -DSTRATA_NODE=\"/path/to/node\""
#endif
#ifndef STRATA_MAIN
#error "build with -DSTRATA_MAIN=\"/path/to/dist/src/bundle/load.cjs\""
#endif

#define ERR_CAP 65536

/* Options of the mount command that take a value (see src/cli/mount.ts). */
static bool takes_value(const char *a) {
  static const char *const names[] = {"-o", "--o", "--passthrough", "--log-level", "--logLevel", "--log-file",
                                      "--logFile", "--pid-file", "--pidFile", "--write-format", "--writeFormat",
                                      "--cache-dir", "--cacheDir", NULL};
  for (int i = 0; names[i]; i++)
    if (strcmp(a, names[i]) == 0) return true;
  return false;
}

/* Could these arguments be a mount that goes to the background? Then its mount point (the last
 * plain argument, which the daemon's command line ends with), else NULL. */
static const char *background_mountpoint(int argc, char **argv) {
  static const char *const others[] = {"umount", "unmount", "status", "cache", "bench", "help", "image", "run",
                                       "commit", "export", "container", "pull", "push", "login", "logout",
                                       "create", "start", "stop", "exec", "diff", "logs", "build", "ps", "rm",
                                       "images", "rmi", "volume", "inspect", "kill", "wait", "restart", "cp", "save", "load", "tag", "history", "import", "system", "pause", "unpause", "rename", "top", "stats", NULL};
  if (argc < 2) return NULL;
  for (int i = 0; others[i]; i++)
    if (strcmp(argv[1], others[i]) == 0) return NULL;
  const char *last = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-f") == 0 || strncmp(a, "--foreground", 12) == 0 || strcmp(a, "--help") == 0 ||
        strcmp(a, "-h") == 0 || strcmp(a, "--version") == 0 || strcmp(a, "__daemon") == 0)
      return NULL;
    if (strncmp(a, "--image", 7) == 0) return NULL; /* a mount of a stored image: the full parser */
    if (takes_value(a)) i++;
    else if (a[0] != '-') last = a;
  }
  return last;
}

static void write_all(int fd, const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    s += w;
    n -= (size_t)w;
  }
}

static int exit_status_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

static int wait_child(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return 1 << 8;
  }
  return status;
}

/* Copies the JSON string value after `key` (e.g. "\"msg\":\"") in line into out. */
static bool json_string(const char *line, const char *key, char *out, size_t cap) {
  const char *p = strstr(line, key);
  if (!p) return false;
  p += strlen(key);
  size_t n = 0;
  for (; *p && *p != '"' && n + 1 < cap; p++) {
    if (*p == '\\' && p[1]) p++;
    out[n++] = *p;
  }
  out[n] = 0;
  return n > 0;
}

/* Does the line start with a JavaScript error name ("Error:", "TypeError: ...")? */
static bool is_error_line(const char *l) {
  const char *p = l;
  while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_') p++;
  return p - l >= 5 && strncmp(p - 5, "Error", 5) == 0;
}

/* The most telling line of a crashed daemon's stderr: an error log line, the error message,
 * else the last line (as lastErrorLine in src/cli/mount.ts). */
static void telling_line(char *buf, char *out, size_t cap) {
  char *last = NULL, *errline = NULL;
  out[0] = 0;
  for (char *save = NULL, *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    while (*l == ' ' || *l == '\t' || *l == '\r') l++;
    if (!*l) continue;
    if (*l == '{' && (strstr(l, "\"level\":50") || strstr(l, "\"level\":60"))) {
      char msg[512] = "", em[512] = "";
      json_string(l, "\"msg\":\"", msg, sizeof msg);
      const char *err = strstr(l, "\"err\":{");
      if (err) json_string(err, "\"message\":\"", em, sizeof em);
      snprintf(out, cap, "%s%s%s", msg, *msg && *em ? ": " : "", em);
      return;
    }
    if (!errline && is_error_line(l)) errline = l;
    last = l;
  }
  const char *pick = errline ? errline : last;
  if (pick) snprintf(out, cap, "%.500s", pick);
}

static int fail_crashed(int status, char *errbuf) {
  char why[1024], how[64];
  if (WIFSIGNALED(status)) {
    const char *name = sigabbrev_np(WTERMSIG(status));
    if (name) snprintf(how, sizeof how, "killed by SIG%s", name);
    else snprintf(how, sizeof how, "killed by signal %d", WTERMSIG(status));
  } else {
    snprintf(how, sizeof how, "exit status %d", exit_status_of(status));
  }
  telling_line(errbuf, why, sizeof why);
  fprintf(stderr, "strata: the daemon exited before the mount was live (%s)%s%s\n", how, *why ? ": " : "", why);
  return 1;
}

/* Node 20 reads NODE_EXTRA_CA_CERTS as it starts and builds its whole store of root certificates
 * there and then: with the variable set, as on our machine type, `node -e 0` took 100-120 ms instead
 * of 30 ms, and that was most of a mount's time. So node gets the value under another name, and
 * scripts/load.cjs puts it back into process.env before the command runs: what strata starts sees the
 * variable as the user set it, and strata's registry client adds those certificates to its own TLS
 * contexts (src/registry/trust.ts), when it needs them. */
static void defer_extra_ca_certs(void) {
  const char *certs = getenv("NODE_EXTRA_CA_CERTS");
  if (!certs) return;
  if (setenv("STRATA_NODE_EXTRA_CA_CERTS", certs, 1) == 0) unsetenv("NODE_EXTRA_CA_CERTS");
}

/* Descriptor slots a daemon's table gets before node starts (see grow_fd_table). */
#define FD_TABLE_SLOTS 65536

/* A daemon holds many descriptors (a directory's in each of its layers, open files). The kernel
 * doubles a process's descriptor table as it fills (256, 512, 1024, ... slots), and where the table
 * is shared by threads, as node's is, each growth waits for an RCU grace period (expand_fdtable's
 * synchronize_rcu): 7-16 ms on this machine kind, while the daemon answers nothing (a stat at the
 * bottom of a 40-layer stack took 20 ms when its directory's descriptors crossed 256). Grown here to
 * FD_TABLE_SLOTS in one step, single-threaded, where that wait does not happen; exec keeps the table
 * of a process that does not share it. The soft limit of open files is left as it was. */
static void grow_fd_table(void) {
  struct rlimit was, rl;
  if (getrlimit(RLIMIT_NOFILE, &was) != 0) return;
  rl = was;
  if (rl.rlim_cur < FD_TABLE_SLOTS) rl.rlim_cur = rl.rlim_max < FD_TABLE_SLOTS ? rl.rlim_max : FD_TABLE_SLOTS;
  if (rl.rlim_cur != was.rlim_cur && setrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (nul >= 0) {
    int top = (int)rl.rlim_cur - 1;
    if (top > nul && dup3(nul, top, O_CLOEXEC) == top) close(top);
    close(nul);
  }
  if (rl.rlim_cur != was.rlim_cur) setrlimit(RLIMIT_NOFILE, &was);
}

/* node's flags, for every command (scripts/load.cjs sets the same ones when node runs it directly: V8
 * accepts a code cache only under the flags it was made with; code-cache.test checks they agree). */
static const char *const NODE_FLAGS[] = {
    /* V8 keeps bytecode that has not run lately: the code cache a daemon writes at its exit then still
     * holds the start-up code. */
    "--no-flush-bytecode",
    /* The young generation at most 2 MiB per semi-space instead of 16: a daemon's requests leave little
     * garbage that lives, and the default grew to 48 MiB of resident memory during a walk. */
    "--max-semi-space-size=2",
    /* TurboFan inlines less into each function it optimizes (300 bytes of bytecode in all, not 920):
     * its compiles on the second CPU were a third of a daemon's CPU time in a short workload (284 ms for
     * 64 functions while every file of a rootfs was read; 32 ms for the merged listing alone), which the
     * caller and the daemon then waited for on two cores. */
    "--max-inlined-bytecode-size-cumulative=300",
    /* Young-generation collections on this thread alone, without helper threads: with a 2 MiB young
     * generation they come often and are short, and each parallel one woke a helper onto the other CPU,
     * the caller's, on two cores (walks, untar, creates: 8-20% faster without; see BENCHMARKS.md). */
    "--no-parallel-scavenge",
};
#define N_NODE_FLAGS (sizeof NODE_FLAGS / sizeof NODE_FLAGS[0])

int main(int argc, char **argv) {
  defer_extra_ca_certs();
  const char *mountpoint = background_mountpoint(argc, argv);
  bool fork_mount = mountpoint != NULL;
  /* node, its flags, "--", the script, the arguments, "__daemon" and the mount point, NULL */
  char **nargv = calloc((size_t)argc + N_NODE_FLAGS + 5, sizeof *nargv);
  if (!nargv) return 127;
  int n = 0;
  nargv[n++] = STRATA_NODE;
  for (size_t i = 0; i < N_NODE_FLAGS; i++) nargv[n++] = (char *)NODE_FLAGS[i];
  /* Node 20 reads an --env-file option anywhere on its command line, even after the script (and
   * loads that file into strata's own environment: `strata run --env-file F` did): "--" ends its
   * options. */
  nargv[n++] = "--";
  nargv[n++] = STRATA_MAIN;
  for (int i = 1; i < argc; i++) nargv[n++] = argv[i];
  if (fork_mount) {
    nargv[n++] = "__daemon";
    nargv[n++] = (char *)mountpoint;
  }
  nargv[n] = NULL;
  if (!fork_mount) {
    /* (a mount in the foreground: this process becomes its daemon) */
    if (argc > 1 && strcmp(argv[1], "mount") == 0) grow_fd_table();
    execv(STRATA_NODE, nargv);
    fprintf(stderr, "strata: cannot run %s: %s\n", STRATA_NODE, strerror(errno));
    return 127;
  }

  int st[2], er[2];
  if (pipe2(st, O_CLOEXEC) < 0 || pipe2(er, O_CLOEXEC) < 0) {
    fprintf(stderr, "strata: pipe: %s\n", strerror(errno));
    return 1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "strata: fork: %s\n", strerror(errno));
    return 1;
  }
  if (pid == 0) {
    /* The daemon: its own session, no terminal input, status on fd 3, stderr to the parent. */
    setsid();
    int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (nul >= 0) dup2(nul, 0);
    dup2(st[1], 3);
    dup2(er[1], 2);
    /* Nothing else the caller left open (a daemon must not hold its callers' pipes). */
    close_range(4, ~0U, 0);
    grow_fd_table();
    execv(STRATA_NODE, nargv);
    dprintf(2, "cannot run %s: %s\n", STRATA_NODE, strerror(errno));
    _exit(127);
  }
  close(st[1]);
  close(er[1]);

  char *errbuf = malloc(ERR_CAP + 1);
  if (!errbuf) return 1;
  size_t errlen = 0;
  char line[4096];
  size_t linelen = 0;
  bool pass = false, status_open = true, err_open = true;
  while (status_open || err_open) {
    struct pollfd fds[2] = {{status_open ? st[0] : -1, POLLIN, 0}, {err_open ? er[0] : -1, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[1].revents) {
      char buf[4096];
      ssize_t r = read(er[0], buf, sizeof buf);
      if (r <= 0 && !(r < 0 && errno == EINTR)) {
        err_open = false;
      } else if (r > 0) {
        if (pass) {
          write_all(2, buf, (size_t)r);
        } else {
          size_t take = (size_t)r < ERR_CAP - errlen ? (size_t)r : ERR_CAP - errlen;
          memcpy(errbuf + errlen, buf, take);
          errlen += take;
        }
      }
    }
    if (fds[0].revents) {
      ssize_t r = read(st[0], line + linelen, sizeof line - 1 - linelen);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        status_open = false;
        if (!pass) break; /* died without a word */
        continue;
      }
      linelen += (size_t)r;
      line[linelen] = 0;
      char *nl = strchr(line, '\n');
      if (!nl && linelen < sizeof line - 1) continue;
      if (nl) *nl = 0;
      if (strncmp(line, "ok", 2) == 0 && (line[2] == 0 || line[2] == ' ')) {
        struct statx sx;
        if (line[2] == ' ') statx(AT_FDCWD, line + 3, 0, STATX_BASIC_STATS | STATX_BTIME, &sx);
        return 0;
      }
      if (strncmp(line, "error ", 6) == 0) {
        fprintf(stderr, "strata: %s\n", line + 6);
        int code = exit_status_of(wait_child(pid));
        return code ? code : 1;
      }
      /* "pass" (or anything else): the command runs as a plain one. */
      pass = true;
      status_open = false;
      write_all(2, errbuf, errlen);
      errlen = 0;
    }
  }
  int status = wait_child(pid);
  if (pass) return exit_status_of(status);
  /* Whatever it still wrote before it died. */
  for (;;) {
    struct pollfd p = {er[0], POLLIN, 0};
    if (!err_open || poll(&p, 1, 100) <= 0) break;
    ssize_t r = read(er[0], errbuf + errlen, ERR_CAP - errlen);
    if (r <= 0) break;
    errlen += (size_t)r;
    if (errlen >= ERR_CAP) break;
  }
  errbuf[errlen] = 0;
  return fail_crashed(status, errbuf);
}
