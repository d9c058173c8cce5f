/* bin/strata-run-exec: the last step of `strata run` (see src/image/run.ts), run as pid 1 of the
 * container's namespaces once /proc, /sys and /dev are mounted:
 *
 *   strata-run-exec [--pivot | --enter PID] [--cgroup DIR]... [--caps MASK] [--rlimit RESOURCE:SOFT:HARD]... ROOT WORKDIR UID GID GROUPS COMMAND [ARG...]
 *
 * Each --cgroup DIR: the process joins that control group first (an exec's command is in its
 * container's group, under its limits, as with docker exec).
 *
 * The root: with --pivot (`strata run`, pid 1 of the container's own mount namespace), ROOT becomes
 * the namespace's root by pivot_root and the old root, with the copy of every host mount the new
 * namespace was born with, is detached: as runc does, so that a host filesystem unmounted while the
 * container runs is really gone (a chroot would keep all of them alive until the container ends).
 * Where pivot_root cannot work (EINVAL: the host's own root is not a mount, as in an initramfs or a
 * chroot) it is a chroot(ROOT). With --enter PID (`strata exec`, after nsenter has joined PID's other
 * namespaces), the process first joins PID's mount namespace, whose root is ROOT after a pivot;
 * otherwise (the chroot case) it chroots to ROOT inside it. Without either, chroot(ROOT).
 *
 * Each --rlimit sets a resource limit (RESOURCE: the RLIMIT_ number; -1: unlimited) before anything
 * else, while the process may still raise hard limits: docker run's --ulimit.
 *
 * With --uidmap MAP --gidmap MAP (MAP: CONTAINER:HOST:COUNT triples, comma-separated; `strata run
 * --uidmap`), once the root is set up (pivot_root needs the host's capabilities) the process makes a
 * user namespace of its own with those maps and becomes its root: the container's ids are the
 * namespace's, its root has no power over what the host's ids own. A helper child left in the host's
 * namespace writes the maps (only there may a process map more ids than its own). With --enter PID,
 * PID's user namespace, when it has one of its own, is joined after its mount namespace.
 *
 * With --caps, every capability whose bit is clear in MASK (hexadecimal, bit N for capability N)
 * leaves the bounding set first: what the command (as root, or through a setuid program) can ever
 * hold; docker's default set, or what --cap-add, --cap-drop and --privileged make of it.
 *
 * Then chdir(WORKDIR) inside the root, creating it when it is missing (parents root:root 0755,
 * the directory itself UID:GID 0755, as podman does for an image's WorkingDir); then the
 * supplementary groups (GROUPS: comma-separated gids, may be empty), the gid and the uid; then
 * exec COMMAND, searched on the container's PATH (the environment is the container's). The ids
 * are numbers, resolved beforehand from the container's /etc/passwd and /etc/group.
 *
 * Neither util-linux's unshare --root (its --setuid/--setgid drop every supplementary group) nor
 * coreutils' chroot (no working directory) can do this, and after the chroot no host tool can
 * run. Exit status when COMMAND cannot run: 127 when it is not found, 126 otherwise (as a shell,
 * unshare and docker report it); 125 when the container cannot be entered. */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "join_cgroup.h"

static const char *prog = "strata";

static int fail(int status, const char *what, const char *arg) {
  fprintf(stderr, "%s: %s%s%s: %s\n", prog, what, arg ? " " : "", arg ? arg : "", strerror(errno));
  return status;
}

static int parse_id(const char *s, unsigned long *out) {
  char *end;
  if (*s < '0' || *s > '9') return -1;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || *end || v > 0x7fffffffUL) return -1;
  *out = v;
  return 0;
}

/* mkdir -p of an absolute path (inside the chroot); the last component gets uid:gid. */
static int make_workdir(const char *wd, uid_t uid, gid_t gid) {
  char *p = strdup(wd);
  if (!p) return -1;
  for (char *s = p + 1;; s++) {
    if (*s != '/' && *s != '\0') continue;
    char c = *s;
    *s = '\0';
    int last = c == '\0' || s[1] == '\0';
    if (mkdir(p, 0755) == 0) {
      if (chmod(p, 0755) != 0 || (last && chown(p, uid, gid) != 0)) {
        free(p);
        return -1;
      }
    } else if (errno != EEXIST) {
      free(p);
      return -1;
    }
    if (c == '\0' || last) break;
    *s = c;
  }
  free(p);
  return 0;
}

/* "RESOURCE:SOFT:HARD" (decimal; -1: unlimited) applied with setrlimit; -1 when it is malformed or refused. */
static int apply_rlimit(const char *spec) {
  char *end;
  errno = 0;
  long res = strtol(spec, &end, 10);
  if (errno || *end != ':' || res < 0 || res >= RLIM_NLIMITS) return -1;
  rlim_t v[2];
  for (int i = 0; i < 2; i++) {
    const char *p = end + 1;
    if (strncmp(p, "-1", 2) == 0 && (p[2] == ':' || p[2] == '\0')) {
      v[i] = RLIM_INFINITY;
      end = (char *)p + 2;
    } else {
      errno = 0;
      unsigned long long n = strtoull(p, &end, 10);
      if (errno || end == p) return -1;
      v[i] = (rlim_t)n;
    }
    if (*end != (i == 0 ? ':' : '\0')) return -1;
  }
  struct rlimit rl = {v[0], v[1]};
  return setrlimit((int)res, &rl);
}

/* pivot_root into ROOT and detach the old root with everything mounted under it (runc's way: the
 * old root ends up stacked on the new one, entered through a descriptor of it, then detached). */
static int pivot_into(const char *root) {
  int old = open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
  if (old < 0) return fail(125, "cannot open", "/");
  if (chdir(root) != 0) return fail(125, "cannot enter", root);
  if (syscall(SYS_pivot_root, ".", ".") != 0) {
    int e = errno;
    close(old);
    if (e != EINVAL) {
      errno = e;
      return fail(125, "cannot pivot_root to", root);
    }
    /* the host's root is not a mount of its own: a chroot, as before */
    if (chroot(".") != 0) return fail(125, "cannot chroot to", root);
    return chdir("/") != 0 ? fail(125, "cannot enter", root) : 0;
  }
  if (fchdir(old) != 0) return fail(125, "cannot enter the old root of", root);
  close(old);
  if (umount2(".", MNT_DETACH) != 0) return fail(125, "cannot detach the host's mounts from", root);
  return chdir("/") != 0 ? fail(125, "cannot enter", root) : 0;
}

/* MAP (CONTAINER:HOST:COUNT,...) as /proc/PID/uid_map takes it, written there. */
static int write_map(pid_t pid, const char *file, const char *map) {
  char path[64], lines[2048];
  size_t n = 0;
  for (const char *m = map; *m && n + 40 < sizeof lines;) {
    unsigned long c, h, k;
    int used = 0;
    if (sscanf(m, "%lu:%lu:%lu%n", &c, &h, &k, &used) != 3) return -1;
    n += (size_t)snprintf(lines + n, sizeof lines - n, "%lu %lu %lu\n", c, h, k);
    m += used;
    if (*m == ',') m++;
    else if (*m) return -1;
  }
  snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t w = write(fd, lines, n);
  close(fd);
  return w == (ssize_t)n ? 0 : -1;
}

/* Root of the user namespace just entered (ids 0 there; the capabilities stay). */
static int become_ns_root(void) {
  if (setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0) return fail(125, "cannot become root in the container's user namespace", NULL);
  return 0;
}

/* A user namespace of its own with these maps (see the header). */
static int new_userns(const char *uidmap, const char *gidmap) {
  int go[2];
  if (pipe2(go, O_CLOEXEC) != 0) return fail(125, "cannot make a pipe", NULL);
  pid_t self = getpid();
  pid_t helper = fork();
  if (helper < 0) return fail(125, "cannot fork", NULL);
  if (helper == 0) {
    char c;
    close(go[1]);
    if (read(go[0], &c, 1) != 1) _exit(1);
    if (write_map(self, "uid_map", uidmap) != 0) {
      fprintf(stderr, "%s: cannot map the container's uids %s: %s\n", prog, uidmap, strerror(errno));
      _exit(1);
    }
    if (write_map(self, "gid_map", gidmap) != 0) {
      fprintf(stderr, "%s: cannot map the container's gids %s: %s\n", prog, gidmap, strerror(errno));
      _exit(1);
    }
    _exit(0);
  }
  close(go[0]);
  int made = unshare(CLONE_NEWUSER), e = errno;
  if (made == 0 && write(go[1], "x", 1) != 1) made = -1;
  close(go[1]);
  int st = 0;
  while (waitpid(helper, &st, 0) < 0 && errno == EINTR) {}
  if (made != 0) {
    errno = e;
    return fail(125, "cannot make the container's user namespace", NULL);
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return 125;
  return become_ns_root();
}

/* Joins the mount namespace of PID (pid 1 of a running container): its root is ROOT when the
 * container's start could pivot_root; else ROOT is chrooted to there. */
static int enter_root(const char *pid, const char *root) {
  char p[64];
  struct stat want, got;
  if (stat(root, &want) != 0) return fail(125, "cannot find the container's root", root);
  snprintf(p, sizeof p, "/proc/%s/ns/mnt", pid);
  int ns = open(p, O_RDONLY | O_CLOEXEC);
  if (ns < 0) return fail(125, "cannot open", p);
  if (setns(ns, CLONE_NEWNS) != 0) return fail(125, "cannot enter the mount namespace of", p);
  close(ns);
  if (stat("/", &got) == 0 && got.st_dev == want.st_dev && got.st_ino == want.st_ino) return chdir("/") != 0 ? fail(125, "cannot enter", "/") : 0;
  if (chroot(root) != 0) return fail(125, "cannot chroot to", root);
  return chdir("/") != 0 ? fail(125, "cannot enter", root) : 0;
}

int main(int argc, char **argv) {
  int caps_given = 0, pivot = 0, deathsig = 0;
  /* (pid 1 of a container's namespaces dies with strata-run-ns: see the end) */
  if (prctl(PR_GET_PDEATHSIG, &deathsig, 0, 0, 0) != 0) deathsig = 0;
  const char *enter = NULL, *uidmap = NULL, *gidmap = NULL;
  unsigned long long keep = 0;
  for (;;) {
    if (argc > 1 && strcmp(argv[1], "--pivot") == 0) {
      pivot = 1;
      argv[1] = argv[0];
      argv++;
      argc--;
      continue;
    }
    if (!(argc > 2 && (strcmp(argv[1], "--caps") == 0 || strcmp(argv[1], "--rlimit") == 0 || strcmp(argv[1], "--enter") == 0 ||
                          strcmp(argv[1], "--cgroup") == 0 || strcmp(argv[1], "--uidmap") == 0 || strcmp(argv[1], "--gidmap") == 0))) break;
    if (strcmp(argv[1], "--uidmap") == 0) {
      uidmap = argv[2];
    } else if (strcmp(argv[1], "--gidmap") == 0) {
      gidmap = argv[2];
    } else if (strcmp(argv[1], "--cgroup") == 0) {
      if (join_cgroup(argv[2]) != 0) return 125;
    } else if (strcmp(argv[1], "--enter") == 0) {
      unsigned long v;
      if (parse_id(argv[2], &v)) {
        fprintf(stderr, "%s: bad pid: %s\n", prog, argv[2]);
        return 125;
      }
      enter = argv[2];
    } else if (strcmp(argv[1], "--rlimit") == 0) {
      if (apply_rlimit(argv[2]) != 0) {
        fprintf(stderr, "%s: cannot set the resource limit %s: %s\n", prog, argv[2], errno ? strerror(errno) : "malformed");
        return 125;
      }
    } else {
      char *end;
      errno = 0;
      keep = strtoull(argv[2], &end, 16);
      if (errno || *end || !*argv[2]) {
        fprintf(stderr, "%s: bad capability mask: %s\n", prog, argv[2]);
        return 125;
      }
      caps_given = 1;
    }
    argv[2] = argv[0];
    argv += 2;
    argc -= 2;
  }
  if (argc < 7) {
    fprintf(stderr, "usage: %s [--pivot | --enter PID] [--cgroup DIR]... [--caps MASK] [--rlimit RESOURCE:SOFT:HARD]... [--uidmap MAP --gidmap MAP] ROOT WORKDIR UID GID GROUPS COMMAND [ARG...]\n", argv[0]);
    return 125;
  }
  const char *root = argv[1], *wd = argv[2], *groups = argv[5];
  unsigned long uid, gid;
  if (parse_id(argv[3], &uid) || parse_id(argv[4], &gid)) {
    fprintf(stderr, "%s: bad uid or gid: %s:%s\n", prog, argv[3], argv[4]);
    return 125;
  }
  size_t ngroups = 0;
  gid_t *gids = calloc(strlen(groups) / 2 + 1, sizeof(gid_t));
  if (!gids) return 125;
  for (const char *g = groups; *g;) {
    const char *comma = strchr(g, ',');
    size_t n = comma ? (size_t)(comma - g) : strlen(g);
    char buf[16];
    unsigned long v;
    if (n == 0 || n >= sizeof buf) {
      fprintf(stderr, "%s: bad group list: %s\n", prog, groups);
      return 125;
    }
    memcpy(buf, g, n);
    buf[n] = '\0';
    if (parse_id(buf, &v)) {
      fprintf(stderr, "%s: bad group list: %s\n", prog, groups);
      return 125;
    }
    gids[ngroups++] = (gid_t)v;
    g += n + (comma ? 1 : 0);
  }

  if ((uidmap == NULL) != (gidmap == NULL)) {
    fprintf(stderr, "%s: --uidmap and --gidmap go together\n", prog);
    return 125;
  }
  /* (exec: the container's user namespace, if it has one, opened before its mount namespace hides
   * the host's /proc) */
  int userns = -1;
  if (enter) {
    /* (with --init, PID is the init, which stays in the host's: then its first child's, the command's) */
    char p[96], kids[64] = "";
    snprintf(p, sizeof p, "/proc/%s/task/%s/children", enter, enter);
    FILE *f = fopen(p, "re");
    if (f) {
      if (!fgets(kids, sizeof kids, f)) kids[0] = '\0';
      fclose(f);
    }
    kids[strcspn(kids, " \n")] = '\0';
    const char *cands[2] = {enter, kids[0] ? kids : NULL};
    for (int i = 0; i < 2 && cands[i] && userns < 0; i++) {
      struct stat theirs, mine;
      snprintf(p, sizeof p, "/proc/%s/ns/user", cands[i]);
      int fd = open(p, O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        if (i == 0) return fail(125, "cannot open", p);
        continue;
      }
      if (fstat(fd, &theirs) == 0 && stat("/proc/self/ns/user", &mine) == 0 && theirs.st_ino == mine.st_ino && theirs.st_dev == mine.st_dev) close(fd);
      else userns = fd;
    }
  }
  if (pivot) {
    int r = pivot_into(root);
    if (r) return r;
    if (uidmap && (r = new_userns(uidmap, gidmap)) != 0) return r;
  } else if (enter) {
    int r = enter_root(enter, root);
    if (r) return r;
    if (userns >= 0) {
      if (setns(userns, CLONE_NEWUSER) != 0) return fail(125, "cannot enter the user namespace of", enter);
      close(userns);
      if ((r = become_ns_root()) != 0) return r;
    }
  } else {
    if (chroot(root) != 0) return fail(125, "cannot chroot to", root);
    if (chdir("/") != 0) return fail(125, "cannot enter", root);
  }
  if (wd[0] != '/') {
    fprintf(stderr, "%s: the working directory must be absolute: %s\n", prog, wd);
    return 125;
  }
  /* As root, before the ids change (runc does the same): a working directory the user may not
   * search is still entered. */
  if (chdir(wd) != 0) {
    if (errno != ENOENT || make_workdir(wd, (uid_t)uid, (gid_t)gid) != 0 || chdir(wd) != 0)
      return fail(125, "cannot enter the working directory", wd);
  }
  if (caps_given) {
    /* (PR_CAPBSET_READ fails past the last capability this kernel knows) */
    for (int cap = 0; cap < 64 && prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++) {
      if (!(keep & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) return fail(125, "cannot drop a capability", NULL);
    }
  }
  if (setgroups(ngroups, gids) != 0) return fail(125, "cannot set the supplementary groups", groups);
  if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0) return fail(125, "cannot set gid", argv[4]);
  if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) return fail(125, "cannot set uid", argv[3]);
  /* A change of ids (another user, a user namespace) clears the parent-death signal that
   * strata-run-ns gave pid 1: set again, or a stop's SIGKILL to strata-run-ns would leave the
   * container running. */
  if (deathsig != 0 && prctl(PR_SET_PDEATHSIG, deathsig, 0, 0, 0) != 0) return fail(125, "cannot set the parent-death signal", NULL);
  execvp(argv[6], argv + 6);
  return fail(errno == ENOENT ? 127 : 126, "cannot run", argv[6]);
}
