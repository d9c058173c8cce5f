/* bin/strata-run-ns: the namespaces of a `strata run` container (see src/image/run.ts), in place of
 * util-linux's `setpriv --pdeathsig KILL unshare --mount --pid --uts [--net] --fork --kill-child`:
 *
 *   strata-run-ns [--net] [--init] [--cgroup DIR]... -- COMMAND [ARG...]
 *
 * With --cgroup, pid 1 joins the control group DIR first (one per v1 hierarchy): it and whatever it
 * starts are in it, this process not (src/image/cgroups.ts).
 *
 * With --init, pid 1 stays a small init after the setup (docker run --init, as tini): COMMAND runs as
 * its child; it passes on every signal it gets, reaps the orphans the namespace hands it, and ends
 * with COMMAND's status when COMMAND ends.
 *
 * New mount, PID and UTS namespaces (and a network namespace with --net); COMMAND runs as their
 * pid 1 in a child, and this process waits for it and exits with its status: its exit code, or
 * 128+N when a signal N ended it, as docker and a shell report it (unshare 2.38 reports 1 for a
 * child that a signal ended). Both this process and the child die with their parent (SIGKILL by
 * PR_SET_PDEATHSIG): a killed monitor takes its container along, and a SIGKILL to this process ends
 * the whole PID namespace with its pid 1. While it waits, SIGINT, SIGTERM and SIGHUP are blocked
 * here: the monitor sends the container's signals to pid 1 itself.
 *
 * With STRATA_SETUP in the environment (taken out of it before COMMAND runs), pid 1 first makes the
 * container's mounts, in its own mount and PID namespaces, before it execs COMMAND: lines of
 * tab-separated fields,
 *   root ROOT [SHM]    the container's root (mounted): /proc (of the new PID namespace), /sys
 *                      (read-only), a small /dev (tmpfs: null, zero, full, random, urandom, tty, its
 *                      own devpts, shm of SHM bytes, the fd links) when the image has those directories
 *   host NAME          the host name
 *   path PATH          the PATH COMMAND is searched on
 *   lo                 bring the loopback up (a network namespace of its own)
 *   etc SOURCE NAME    bind SOURCE over ROOT/etc/NAME
 *   mount KIND SOURCE TARGET OPTIONS   KIND bind (recursive), volume (filled from what the image
 *                      has at TARGET when empty), tmpfs; OPTIONS "-" or a comma list (ro, size=...)
 *   ro                 the root read-only (last: its mounts keep their own modes)
 * Every target was made by strata beforehand, inside the root (a mount point under an earlier mount
 * is made here). What the shell and util-linux's tools did before, without a process per step. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "join_cgroup.h"

static int fail(const char *what, const char *arg) {
  fprintf(stderr, "strata: cannot %s %s: %s\n", what, arg, strerror(errno));
  return -1;
}

static int is_dir_not_link(const char *p) {
  struct stat st;
  return lstat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* mkdir -p (0755) */
static int mkdirs(const char *path) {
  char *p = strdup(path);
  if (!p) return -1;
  for (char *s = p + 1;; s++) {
    if (*s != '/' && *s != '\0') continue;
    char c = *s;
    *s = '\0';
    if (mkdir(p, 0755) != 0 && errno != EEXIST) {
      free(p);
      return -1;
    }
    if (c == '\0') break;
    *s = c;
  }
  free(p);
  return 0;
}

static int empty_dir(const char *p) {
  DIR *d = opendir(p);
  if (!d) return 0;
  struct dirent *e;
  int empty = 1;
  while ((e = readdir(d))) {
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
      empty = 0;
      break;
    }
  }
  closedir(d);
  return empty;
}

/* Splits a mount option list into flags and the data the filesystem takes. */
static unsigned long mount_flags(const char *opts, char *data, size_t size) {
  unsigned long flags = 0;
  data[0] = '\0';
  if (!opts || !strcmp(opts, "-")) return 0;
  char *copy = strdup(opts), *save = NULL;
  for (char *o = strtok_r(copy, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
    if (!strcmp(o, "ro")) flags |= MS_RDONLY;
    else if (!strcmp(o, "rw")) flags &= ~(unsigned long)MS_RDONLY;
    else if (!strcmp(o, "noexec")) flags |= MS_NOEXEC;
    else if (!strcmp(o, "nosuid")) flags |= MS_NOSUID;
    else if (!strcmp(o, "nodev")) flags |= MS_NODEV;
    else if (!strcmp(o, "exec") || !strcmp(o, "suid") || !strcmp(o, "dev")) continue;
    else {
      if (data[0]) strncat(data, ",", size - strlen(data) - 1);
      strncat(data, o, size - strlen(data) - 1);
    }
  }
  free(copy);
  return flags;
}

static int dev_setup(const char *root, const char *shm_bytes) {
  char d[4096], p[4200], shm_opts[64];
  snprintf(d, sizeof d, "%s/dev", root);
  if (!is_dir_not_link(d)) return 0;
  if (mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k") != 0) return fail("mount a tmpfs on", d);
  static const struct { const char *name; int maj, min; } nodes[] = {
    {"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
  for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
    snprintf(p, sizeof p, "%s/%s", d, nodes[i].name);
    if (mknod(p, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)) != 0 || chmod(p, 0666) != 0) return fail("make", p);
  }
  snprintf(p, sizeof p, "%s/pts", d);
  if (mkdir(p, 0755) != 0 || mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") != 0) return fail("mount devpts on", p);
  snprintf(p, sizeof p, "%s/ptmx", d);
  if (symlink("pts/ptmx", p) != 0) return fail("make", p);
  snprintf(p, sizeof p, "%s/shm", d);
  snprintf(shm_opts, sizeof shm_opts, "mode=1777%s%s", shm_bytes ? ",size=" : "", shm_bytes ? shm_bytes : "");
  if (mkdir(p, 01777) != 0 || chmod(p, 01777) != 0 || mount("shm", p, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, shm_opts) != 0) return fail("mount a tmpfs on", p);
  static const char *const links[][2] = {{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}};
  for (size_t i = 0; i < 4; i++) {
    snprintf(p, sizeof p, "%s/%s", d, links[i][1]);
    if (symlink(links[i][0], p) != 0) return fail("make", p);
  }
  return 0;
}

static int loopback_up(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return 0;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP;
    ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  close(s);
  return 0;
}

/* Copies what the image has at DIR into the empty volume SRC (cp -a, as the shell did). */
static int fill_volume(const char *dir, const char *src) {
  char from[4200], to[4200];
  snprintf(from, sizeof from, "%s/.", dir);
  snprintf(to, sizeof to, "%s/", src);
  pid_t pid = fork();
  if (pid < 0) return fail("fill the volume", src);
  if (pid == 0) {
    execl("/bin/cp", "cp", "-a", "--", from, to, (char *)NULL);
    _exit(127);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "strata: cannot fill the volume %s from %s\n", src, dir);
    return -1;
  }
  return 0;
}

/* The STRATA_SETUP spec (see the header), as pid 1 of the new namespaces. */
static int setup(char *spec) {
  char *root = NULL, *save = NULL;
  int readonly = 0;
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return fail("make the mounts private in", "/");
  for (char *line = strtok_r(spec, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *f[6] = {0};
    int n = 0;
    for (char *q = line; n < 6;) {
      f[n++] = q;
      char *tab = strchr(q, '\t');
      if (!tab) break;
      *tab = '\0';
      q = tab + 1;
    }
    char p[4200], data[1024];
    if (!strcmp(f[0], "root") && n >= 2) {
      root = f[1];
      snprintf(p, sizeof p, "%s/proc", root);
      if (is_dir_not_link(p) && mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) return fail("mount /proc on", p);
      snprintf(p, sizeof p, "%s/sys", root);
      if (is_dir_not_link(p) && mount("sysfs", p, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) return fail("mount /sys on", p);
      if (dev_setup(root, n >= 3 ? f[2] : NULL) != 0) return -1;
    } else if (!strcmp(f[0], "host") && n >= 2) {
      if (sethostname(f[1], strlen(f[1])) != 0) return fail("set the host name", f[1]);
    } else if (!strcmp(f[0], "path") && n >= 2) {
      setenv("PATH", f[1], 1);
    } else if (!strcmp(f[0], "lo")) {
      loopback_up();
    } else if (!strcmp(f[0], "ro")) {
      readonly = 1;
    } else if (!strcmp(f[0], "etc") && n >= 3 && root) {
      snprintf(p, sizeof p, "%s/etc/%s", root, f[2]);
      if (mount(f[1], p, NULL, MS_BIND, NULL) != 0) return fail("bind over", p);
    } else if (!strcmp(f[0], "mount") && n >= 5) {
      const char *kind = f[1], *src = f[2], *dst = f[3];
      unsigned long flags = mount_flags(f[4], data, sizeof data);
      /* (a mount point under an earlier mount: made in what that mount shows) */
      struct stat st;
      if (lstat(dst, &st) != 0 && mkdirs(dst) != 0) return fail("make the mount point", dst);
      if (!strcmp(kind, "tmpfs")) {
        if (mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV | flags, data[0] ? data : NULL) != 0) return fail("mount a tmpfs on", dst);
        continue;
      }
      if (!strcmp(kind, "volume") && is_dir_not_link(dst) && empty_dir(src) && fill_volume(dst, src) != 0) return -1;
      if (mount(src, dst, NULL, MS_BIND | (!strcmp(kind, "bind") ? MS_REC : 0), NULL) != 0) return fail("bind a mount on", dst);
      if ((flags & MS_RDONLY) && mount(NULL, dst, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) != 0) return fail("make read-only", dst);
    } else {
      fprintf(stderr, "strata: bad setup line: %s\n", f[0]);
      return -1;
    }
  }
  /* --read-only: this namespace's view of the root (not its mounts: /proc, /dev, volumes keep theirs) */
  if (readonly && root && mount(NULL, root, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) != 0) return fail("make read-only", root);
  return 0;
}

/* pid 1 as an init (--init): COMMAND in a child; signals passed on to it, orphans reaped; its status. */
static void run_as_init(char **cmd, const sigset_t *cmd_mask) {
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, NULL);
  pid_t c = fork();
  if (c < 0) {
    fprintf(stderr, "strata: cannot start the command under the init: %s\n", strerror(errno));
    _exit(125);
  }
  if (c == 0) {
    sigprocmask(SIG_SETMASK, cmd_mask, NULL);
    execvp(cmd[0], cmd);
    fprintf(stderr, "strata: cannot run %s: %s\n", cmd[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
  }
  for (;;) {
    siginfo_t si;
    int sig = sigwaitinfo(&all, &si);
    if (sig < 0) continue;
    if (sig != SIGCHLD) {
      kill(c, sig);
      continue;
    }
    int st;
    pid_t p;
    while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
      if (p != c) continue;
      if (WIFEXITED(st)) _exit(WEXITSTATUS(st));
      _exit(WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 125);
    }
  }
}

int main(int argc, char **argv) {
  int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS;
  int init = 0;
  const char *cgroups[8];
  int ncgroups = 0;
  int i = 1;
  for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
    if (strcmp(argv[i], "--net") == 0) flags |= CLONE_NEWNET;
    else if (strcmp(argv[i], "--init") == 0) init = 1;
    else if (strcmp(argv[i], "--cgroup") == 0 && i + 1 < argc && ncgroups < 8) cgroups[ncgroups++] = argv[++i];
    else {
      fprintf(stderr, "strata-run-ns: unknown option %s\n", argv[i]);
      return 125;
    }
  }
  if (i + 1 >= argc) {
    fprintf(stderr, "usage: strata-run-ns [--net] [--init] [--cgroup DIR]... -- COMMAND [ARG...]\n");
    return 125;
  }
  char **cmd = argv + i + 1;
  pid_t parent = getppid();
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) return 125;
  if (unshare(flags) != 0) {
    fprintf(stderr, "strata: cannot make the container's namespaces: %s\n", strerror(errno));
    return 125;
  }
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGHUP);
  sigprocmask(SIG_BLOCK, &block, &old);
  pid_t child = fork();
  if (child < 0) {
    fprintf(stderr, "strata: cannot fork the container's pid 1: %s\n", strerror(errno));
    return 125;
  }
  if (child == 0) {
    /* pid 1 of the new PID namespace: dies with this process, as unshare's --kill-child */
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) _exit(125);
    for (int k = 0; k < ncgroups; k++)
      if (join_cgroup(cgroups[k]) != 0) _exit(125);
    char *spec = getenv("STRATA_SETUP");
    if (spec) {
      spec = strdup(spec);
      unsetenv("STRATA_SETUP");
      if (!spec || setup(spec) != 0) _exit(125);
    }
    if (init) run_as_init(cmd, &old);
    execvp(cmd[0], cmd);
    fprintf(stderr, "strata: cannot run %s: %s\n", cmd[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
  }
  int status;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) return 125;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 125;
}
