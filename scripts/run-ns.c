/* bin/strata-run-ns: the namespaces of a `strata run` container (see src/image/run.ts), in place of
 * util-linux's `setpriv --pdeathsig KILL unshare --mount --pid --uts [--net] --fork --kill-child`:
 *
 *   strata-run-ns [--net] -- COMMAND [ARG...]
 *
 * New mount, PID and UTS namespaces (and a network namespace with --net); COMMAND runs as their
 * pid 1 in a child, and this process waits for it and exits with its status: its exit code, or
 * 128+N when a signal N ended it, as docker and a shell report it (unshare 2.38 reports 1 for a
 * child that a signal ended). Both this process and the child die with their parent (SIGKILL by
 * PR_SET_PDEATHSIG): a killed monitor takes its container along, and a SIGKILL to this process ends
 * the whole PID namespace with its pid 1. While it waits, SIGINT, SIGTERM and SIGHUP are blocked
 * here: the monitor sends the container's signals to pid 1 itself. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS;
  int i = 1;
  for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
    if (strcmp(argv[i], "--net") == 0) flags |= CLONE_NEWNET;
    else {
      fprintf(stderr, "strata-run-ns: unknown option %s\n", argv[i]);
      return 125;
    }
  }
  if (i + 1 >= argc) {
    fprintf(stderr, "usage: strata-run-ns [--net] -- COMMAND [ARG...]\n");
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
