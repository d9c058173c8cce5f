/* join_cgroup.h: moving the calling process into a control group, for bin/strata-run-ns (pid 1 of a
 * container) and bin/strata-run-exec (an exec's command); see src/image/cgroups.ts. */
#ifndef STRATA_JOIN_CGROUP_H
#define STRATA_JOIN_CGROUP_H
#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Writes "0" (the writer itself, whatever its pid namespace) to DIR/cgroup.procs; on failure says
 * why on stderr and returns -1. */
static int join_cgroup(const char *dir) {
  char p[4200];
  snprintf(p, sizeof p, "%s/cgroup.procs", dir);
  FILE *f = fopen(p, "w");
  int ok = f && fputs("0\n", f) >= 0;
  if (f && fclose(f) != 0) ok = 0;
  if (!ok) fprintf(stderr, "strata: cannot join the control group %s: %s\n", dir, strerror(errno));
  return ok ? 0 : -1;
}
#endif
