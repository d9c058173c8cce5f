/*
 * strata_native: thin synchronous syscall wrappers for the strata FUSE
 * union filesystem daemon, plus a uv_poll based /dev/fuse reader.
 *
 * Conventions:
 *  - every path / name string crosses the boundary as latin1 (one JS char
 *    per byte), so arbitrary non-UTF-8 names are lossless;
 *  - all calls are synchronous on the calling thread and retry on EINTR;
 *  - failures throw an Error "<CODE>: <syscall> '<path>'" carrying
 *    code / errno / syscall (and path / dest when known).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <node_api.h>
#include <uv.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/fsuid.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <linux/openat2.h>

/* ------------------------------------------------------------------ */
/* Definitions newer than the installed kernel / libc headers          */
/* ------------------------------------------------------------------ */

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452
#endif
#ifndef SYS_setxattrat
#define SYS_setxattrat 463
#endif
#ifndef SYS_getxattrat
#define SYS_getxattrat 464
#endif
#ifndef SYS_listxattrat
#define SYS_listxattrat 465
#endif
#ifndef SYS_removexattrat
#define SYS_removexattrat 466
#endif
#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif
#ifndef RENAME_WHITEOUT
#define RENAME_WHITEOUT (1 << 2)
#endif
#ifndef FICLONE
#define FICLONE _IOW(0x94, 9, int)
#endif

/* Kernel value; glibc defines O_LARGEFILE as 0 on 64-bit targets, but the
 * FUSE protocol hands us raw kernel open flags, so export the real bit. */
#define KERNEL_O_LARGEFILE 0100000

struct strata_xattr_args {
  uint64_t value; /* __aligned_u64 */
  uint32_t size;
  uint32_t flags;
};

struct strata_fuse_backing_map {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};

#define FUSE_DEV_IOC_MAGIC 229
#define STRATA_FUSE_DEV_IOC_CLONE _IOR(FUSE_DEV_IOC_MAGIC, 0, uint32_t)
#define STRATA_FUSE_DEV_IOC_BACKING_OPEN \
  _IOW(FUSE_DEV_IOC_MAGIC, 1, struct strata_fuse_backing_map)
#define STRATA_FUSE_DEV_IOC_BACKING_CLOSE _IOW(FUSE_DEV_IOC_MAGIC, 2, uint32_t)

#define PATHBUF (PATH_MAX + 1)
#define NAMEBUF 512 /* xattr names are at most XATTR_NAME_MAX (255) */
#define STAT_SLOTS 16

#define NOINTR(expr)                                   \
  ({                                                   \
    __typeof__(expr) _r;                               \
    do _r = (expr);                                    \
    while (_r == -1 && errno == EINTR);                \
    _r;                                                \
  })

/* ------------------------------------------------------------------ */
/* Error helpers                                                       */
/* ------------------------------------------------------------------ */

static const char *errno_name(int err) {
  const char *n = strerrorname_np(err);
  return n ? n : "UNKNOWN";
}

static void set_str(napi_env env, napi_value obj, const char *key, const char *val) {
  napi_value v;
  if (napi_create_string_latin1(env, val, NAPI_AUTO_LENGTH, &v) == napi_ok)
    napi_set_named_property(env, obj, key, v);
}

/* Build (but do not throw) an errno Error. */
static napi_value make_sys_error(napi_env env, int err, const char *syscall,
                                 const char *path, const char *dest) {
  size_t cap = 64 + strlen(syscall) + (path ? strlen(path) : 0) +
               (dest ? strlen(dest) : 0);
  char *msg = malloc(cap);
  if (!msg) return NULL;
  if (path && dest)
    snprintf(msg, cap, "%s: %s '%s' -> '%s'", errno_name(err), syscall, path, dest);
  else if (path)
    snprintf(msg, cap, "%s: %s '%s'", errno_name(err), syscall, path);
  else
    snprintf(msg, cap, "%s: %s", errno_name(err), syscall);

  napi_value jmsg, error = NULL, jerrno;
  if (napi_create_string_latin1(env, msg, NAPI_AUTO_LENGTH, &jmsg) == napi_ok &&
      napi_create_error(env, NULL, jmsg, &error) == napi_ok) {
    set_str(env, error, "code", errno_name(err));
    if (napi_create_int32(env, err, &jerrno) == napi_ok)
      napi_set_named_property(env, error, "errno", jerrno);
    set_str(env, error, "syscall", syscall);
    if (path) set_str(env, error, "path", path);
    if (dest) set_str(env, error, "dest", dest);
  }
  free(msg);
  return error;
}

/* Throw an errno Error; always returns NULL so callers can `return throw_sys(...)`. */
static napi_value throw_sys2(napi_env env, int err, const char *syscall,
                             const char *path, const char *dest) {
  napi_value e = make_sys_error(env, err, syscall, path, dest);
  if (e) napi_throw(env, e);
  else napi_throw_error(env, errno_name(err), syscall);
  return NULL;
}

static napi_value throw_sys(napi_env env, int err, const char *syscall, const char *path) {
  return throw_sys2(env, err, syscall, path, NULL);
}

static bool type_error(napi_env env, const char *what) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", what);
  return false;
}

/* ------------------------------------------------------------------ */
/* Argument helpers: each returns false after throwing                 */
/* ------------------------------------------------------------------ */

#define ARGS(n)                                                              \
  size_t argc = (n);                                                         \
  napi_value argv[(n) > 0 ? (n) : 1];                                        \
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)       \
    return NULL;                                                             \
  if (argc < (n)) {                                                          \
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "expected " #n " arguments"); \
    return NULL;                                                             \
  }

/* Bail out of a napi callback (TRY) or of a bool helper (TRYB) after a throw. */
#define TRY(x)               \
  do {                       \
    if (!(x)) return NULL;   \
  } while (0)
#define TRYB(x)              \
  do {                       \
    if (!(x)) return false;  \
  } while (0)

static bool arg_i32(napi_env env, napi_value v, int32_t *out) {
  if (napi_get_value_int32(env, v, out) == napi_ok) return true;
  return type_error(env, "expected a number");
}

static bool arg_u32(napi_env env, napi_value v, uint32_t *out) {
  if (napi_get_value_uint32(env, v, out) == napi_ok) return true;
  return type_error(env, "expected a number");
}

static bool arg_i64(napi_env env, napi_value v, int64_t *out) {
  if (napi_get_value_int64(env, v, out) == napi_ok) return true;
  return type_error(env, "expected a number");
}

static bool arg_bool(napi_env env, napi_value v, bool *out) {
  if (napi_get_value_bool(env, v, out) == napi_ok) return true;
  return type_error(env, "expected a boolean");
}

static bool is_nullish(napi_env env, napi_value v) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) == napi_ok && (t == napi_null || t == napi_undefined);
}

/* latin1 string -> NUL-terminated bytes in buf[cap]; rejects embedded NULs and
 * strings that cannot fit (ENAMETOOLONG, as the kernel would). */
static bool arg_str(napi_env env, napi_value v, char *buf, size_t cap,
                    const char *syscall, int toolong_errno) {
  size_t len;
  if (napi_get_value_string_latin1(env, v, buf, cap, &len) != napi_ok)
    return type_error(env, "expected a string");
  if (len >= cap - 1) {
    throw_sys(env, toolong_errno, syscall, NULL);
    return false;
  }
  if (memchr(buf, 0, len)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE",
                          "string must not contain null bytes");
    return false;
  }
  return true;
}

static bool arg_path(napi_env env, napi_value v, char *buf, const char *syscall) {
  return arg_str(env, v, buf, PATHBUF, syscall, ENAMETOOLONG);
}

static bool arg_name(napi_env env, napi_value v, char *buf, const char *syscall) {
  return arg_str(env, v, buf, NAMEBUF, syscall, ERANGE);
}

/* Optional string: null/undefined -> *out = NULL. */
static bool arg_opt_path(napi_env env, napi_value v, char *buf, const char **out,
                         const char *syscall) {
  if (is_nullish(env, v)) {
    *out = NULL;
    return true;
  }
  *out = buf;
  return arg_path(env, v, buf, syscall);
}

static bool arg_buffer(napi_env env, napi_value v, char **data, size_t *len) {
  void *d;
  if (napi_get_buffer_info(env, v, &d, len) != napi_ok)
    return type_error(env, "expected a Buffer");
  *data = d;
  return true;
}

static bool arg_stat_out(napi_env env, napi_value v, double **out) {
  napi_typedarray_type t;
  size_t len;
  void *data;
  if (napi_get_typedarray_info(env, v, &t, &len, &data, NULL, NULL) != napi_ok ||
      t != napi_float64_array)
    return type_error(env, "expected a Float64Array");
  if (len < STAT_SLOTS) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "stat array must have length >= 16");
    return false;
  }
  *out = data;
  return true;
}

static bool arg_function(napi_env env, napi_value v) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) == napi_ok && t == napi_function) return true;
  return type_error(env, "expected a function");
}

/* Buffer slice [off, off+len) must lie inside the buffer. */
static bool arg_slice(napi_env env, napi_value vbuf, napi_value voff, napi_value vlen,
                      char **ptr, size_t *len) {
  char *data;
  size_t blen;
  int64_t off, n;
  TRYB(arg_buffer(env, vbuf, &data, &blen));
  TRYB(arg_i64(env, voff, &off));
  TRYB(arg_i64(env, vlen, &n));
  if (off < 0 || n < 0 || (uint64_t)off > blen || (uint64_t)n > blen - (uint64_t)off) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "offset/length outside the buffer");
    return false;
  }
  *ptr = data + off;
  *len = (size_t)n;
  return true;
}

/* ------------------------------------------------------------------ */
/* Return helpers                                                      */
/* ------------------------------------------------------------------ */

static napi_value ret_undef(napi_env env) {
  napi_value v;
  napi_get_undefined(env, &v);
  return v;
}

static napi_value ret_null(napi_env env) {
  napi_value v;
  napi_get_null(env, &v);
  return v;
}

static napi_value ret_num(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

static napi_value ret_bool(napi_env env, bool b) {
  napi_value v;
  napi_get_boolean(env, b, &v);
  return v;
}

static napi_value ret_latin1(napi_env env, const char *s, size_t len) {
  napi_value v;
  napi_create_string_latin1(env, s, len, &v);
  return v;
}

/* Result of a syscall returning 0 / -1. */
static napi_value ret_void(napi_env env, long r, const char *syscall, const char *path) {
  if (r < 0) return throw_sys(env, errno, syscall, path);
  return ret_undef(env);
}

/* Result of a syscall returning a count / fd / offset, or -1. */
static napi_value ret_count(napi_env env, long r, const char *syscall, const char *path) {
  if (r < 0) return throw_sys(env, errno, syscall, path);
  return ret_num(env, (double)r);
}

/* ------------------------------------------------------------------ */
/* stat family                                                         */
/* ------------------------------------------------------------------ */

static void fill_stat(double *o, const struct stat *st) {
  o[0] = (double)st->st_dev;
  o[1] = (double)st->st_ino;
  o[2] = st->st_mode;
  o[3] = (double)st->st_nlink;
  o[4] = st->st_uid;
  o[5] = st->st_gid;
  o[6] = (double)st->st_rdev;
  o[7] = (double)st->st_size;
  o[8] = (double)st->st_blksize;
  o[9] = (double)st->st_blocks;
  o[10] = (double)st->st_atim.tv_sec;
  o[11] = (double)st->st_atim.tv_nsec;
  o[12] = (double)st->st_mtim.tv_sec;
  o[13] = (double)st->st_mtim.tv_nsec;
  o[14] = (double)st->st_ctim.tv_sec;
  o[15] = (double)st->st_ctim.tv_nsec;
}

static void fill_statx(double *o, const struct statx *sx) {
  o[0] = (double)makedev(sx->stx_dev_major, sx->stx_dev_minor);
  o[1] = (double)sx->stx_ino;
  o[2] = sx->stx_mode;
  o[3] = sx->stx_nlink;
  o[4] = sx->stx_uid;
  o[5] = sx->stx_gid;
  o[6] = (double)makedev(sx->stx_rdev_major, sx->stx_rdev_minor);
  o[7] = (double)sx->stx_size;
  o[8] = sx->stx_blksize;
  o[9] = (double)sx->stx_blocks;
  o[10] = (double)sx->stx_atime.tv_sec;
  o[11] = sx->stx_atime.tv_nsec;
  o[12] = (double)sx->stx_mtime.tv_sec;
  o[13] = sx->stx_mtime.tv_nsec;
  o[14] = (double)sx->stx_ctime.tv_sec;
  o[15] = sx->stx_ctime.tv_nsec;
}

/* fstatat(dirfd, path, flags, out) */
static napi_value fn_fstatat(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t dirfd, flags;
  char path[PATHBUF];
  double *out;
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "fstatat"));
  TRY(arg_i32(env, argv[2], &flags));
  TRY(arg_stat_out(env, argv[3], &out));
  struct stat st;
  if (NOINTR(fstatat(dirfd, path, &st, flags)) < 0)
    return throw_sys(env, errno, "fstatat", path);
  fill_stat(out, &st);
  return ret_undef(env);
}

/* fstat(fd, out) */
static napi_value fn_fstat(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd;
  double *out;
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_stat_out(env, argv[1], &out));
  struct stat st;
  if (NOINTR(fstat(fd, &st)) < 0) return throw_sys(env, errno, "fstat", NULL);
  fill_stat(out, &st);
  return ret_undef(env);
}

/* statx(dirfd, path, flags, mask, out) */
/* statx(2) of (argv[0] dirfd, argv[1] path, argv[2] flags) with `mask`; false once an exception is
   pending (bad argument or the call failed). */
static bool statx_args(napi_env env, napi_value *argv, uint32_t mask, struct statx *sx) {
  int32_t dirfd, flags;
  char path[PATHBUF];
  TRYB(arg_i32(env, argv[0], &dirfd));
  TRYB(arg_path(env, argv[1], path, "statx"));
  TRYB(arg_i32(env, argv[2], &flags));
  if (NOINTR(statx(dirfd, path, flags, mask, sx)) < 0) {
    throw_sys(env, errno, "statx", path);
    return false;
  }
  return true;
}

static napi_value fn_statx(napi_env env, napi_callback_info info) {
  ARGS(5);
  uint32_t mask;
  double *out;
  TRY(arg_u32(env, argv[3], &mask));
  TRY(arg_stat_out(env, argv[4], &out));
  struct statx sx;
  TRY(statx_args(env, argv, mask, &sx));
  fill_statx(out, &sx);
  return ret_undef(env);
}

/* statxBtime(dirfd, path, flags): creation time as seconds (with nanoseconds), or null when the
   filesystem keeps none */
static napi_value fn_statxBtime(napi_env env, napi_callback_info info) {
  ARGS(3);
  struct statx sx;
  TRY(statx_args(env, argv, STATX_BTIME, &sx));
  if (!(sx.stx_mask & STATX_BTIME)) return ret_null(env);
  napi_value arr, sec, nsec;
  napi_create_array_with_length(env, 2, &arr);
  napi_create_double(env, (double)sx.stx_btime.tv_sec, &sec);
  napi_create_uint32(env, sx.stx_btime.tv_nsec, &nsec);
  napi_set_element(env, arr, 0, sec);
  napi_set_element(env, arr, 1, nsec);
  return arr;
}

/* statxAttributes(dirfd, path, flags): the STATX_ATTR_* bits the filesystem reports (stx_attributes,
   limited to stx_attributes_mask; the low 32 bits: immutable, append, nodump, ...) */
static napi_value fn_statxAttributes(napi_env env, napi_callback_info info) {
  ARGS(3);
  struct statx sx;
  TRY(statx_args(env, argv, 0, &sx));
  return ret_num(env, (double)(uint32_t)(sx.stx_attributes & sx.stx_attributes_mask));
}

/* lstatMaybe(dirfd, path, out): boolean (false on ENOENT / ENOTDIR) */
static napi_value fn_lstatMaybe(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t dirfd;
  char path[PATHBUF];
  double *out;
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "lstat"));
  TRY(arg_stat_out(env, argv[2], &out));
  struct stat st;
  if (NOINTR(fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW)) < 0) {
    if (errno == ENOENT || errno == ENOTDIR) return ret_bool(env, false);
    return throw_sys(env, errno, "lstat", path);
  }
  fill_stat(out, &st);
  return ret_bool(env, true);
}

/* ------------------------------------------------------------------ */
/* open / close / links / directories                                  */
/* ------------------------------------------------------------------ */

/* openat(dirfd, path, flags, mode): fd */
static napi_value fn_openat(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t dirfd, flags;
  uint32_t mode;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "openat"));
  TRY(arg_i32(env, argv[2], &flags));
  TRY(arg_u32(env, argv[3], &mode));
  return ret_count(env, NOINTR(openat(dirfd, path, flags, (mode_t)mode)), "openat", path);
}

/* openat2(dirfd, path, flags, mode, resolve): fd */
static napi_value fn_openat2(napi_env env, napi_callback_info info) {
  ARGS(5);
  int32_t dirfd, flags;
  uint32_t mode;
  int64_t resolve;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "openat2"));
  TRY(arg_i32(env, argv[2], &flags));
  TRY(arg_u32(env, argv[3], &mode));
  TRY(arg_i64(env, argv[4], &resolve));
  struct open_how how = {0};
  how.flags = (uint32_t)flags;
  /* openat2 rejects a non-zero mode unless a file may be created. */
  if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) how.mode = mode;
  how.resolve = (uint64_t)resolve;
  return ret_count(env, NOINTR(syscall(SYS_openat2, dirfd, path, &how, sizeof how)),
                   "openat2", path);
}

/* close(fd) -- not retried on EINTR (the fd is gone either way on Linux) */
static napi_value fn_close(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t fd;
  TRY(arg_i32(env, argv[0], &fd));
  if (close(fd) < 0 && errno != EINTR) return throw_sys(env, errno, "close", NULL);
  return ret_undef(env);
}

/* dup(fd): fd  (the duplicate is O_CLOEXEC) */
static napi_value fn_dup(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t fd;
  TRY(arg_i32(env, argv[0], &fd));
  return ret_count(env, fcntl(fd, F_DUPFD_CLOEXEC, 0), "dup", NULL);
}

/* dup2(oldfd, newfd): newfd  (newfd is replaced; it does not get O_CLOEXEC) */
static napi_value fn_dup2(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t oldfd, newfd;
  TRY(arg_i32(env, argv[0], &oldfd));
  TRY(arg_i32(env, argv[1], &newfd));
  return ret_count(env, dup2(oldfd, newfd), "dup2", NULL);
}

/* pipe(): [readFd, writeFd], both O_CLOEXEC (a real pipe: its writer gets SIGPIPE once the reader is
   gone, where the socketpair of node's stdio 'pipe' can give ECONNRESET instead) */
static napi_value fn_pipe(napi_env env, napi_callback_info info) {
  (void)info;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return throw_sys(env, errno, "pipe2", NULL);
  napi_value arr, r, w;
  napi_create_array_with_length(env, 2, &arr);
  napi_create_int32(env, fds[0], &r);
  napi_create_int32(env, fds[1], &w);
  napi_set_element(env, arr, 0, r);
  napi_set_element(env, arr, 1, w);
  return arr;
}

/* readlinkat(dirfd, path): string */
static napi_value fn_readlinkat(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t dirfd;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "readlinkat"));
  char stackbuf[PATHBUF];
  char *buf = stackbuf;
  size_t cap = sizeof stackbuf;
  for (;;) {
    ssize_t n = NOINTR(readlinkat(dirfd, path, buf, cap));
    if (n < 0) {
      int e = errno;
      if (buf != stackbuf) free(buf);
      return throw_sys(env, e, "readlinkat", path);
    }
    if ((size_t)n < cap) {
      napi_value v = ret_latin1(env, buf, (size_t)n);
      if (buf != stackbuf) free(buf);
      return v;
    }
    /* possibly truncated: grow and retry */
    cap *= 2;
    char *nb = buf == stackbuf ? malloc(cap) : realloc(buf, cap);
    if (!nb) {
      if (buf != stackbuf) free(buf);
      return throw_sys(env, ENOMEM, "readlinkat", path);
    }
    buf = nb;
  }
}

#define DENTS_BUF_SIZE (256 * 1024)
static __thread char *dents_buf;

/* A growable byte buffer, kept per thread between calls. */
struct growbuf {
  char *p;
  size_t len, cap;
};

static bool grow_put(struct growbuf *b, const void *src, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) return false;
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, src, n);
  b->len += n;
  return true;
}

static __thread struct growbuf dir_names, dir_types, dir_inos;

/* readdir(dirfd): [names, types, inos] for the entries other than "." and "..": their names in one
 * latin1 string, each followed by '/' (a name never holds one), their DT_* types in a Buffer and their
 * inode numbers in a Float64Array: a handful of values per directory instead of four per entry. */
static napi_value fn_readdir(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t dirfd;
  TRY(arg_i32(env, argv[0], &dirfd));
  if (!dents_buf && !(dents_buf = malloc(DENTS_BUF_SIZE)))
    return throw_sys(env, ENOMEM, "readdir", NULL);
  int fd = NOINTR(openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd < 0) return throw_sys(env, errno, "openat", ".");
  dir_names.len = dir_types.len = dir_inos.len = 0;
  for (;;) {
    ssize_t n = NOINTR(getdents64(fd, dents_buf, DENTS_BUF_SIZE));
    if (n < 0) {
      int e = errno;
      close(fd);
      return throw_sys(env, e, "getdents64", NULL);
    }
    if (n == 0) break;
    for (ssize_t pos = 0; pos < n;) {
      struct dirent64 *d = (struct dirent64 *)(dents_buf + pos);
      pos += d->d_reclen;
      const char *nm = d->d_name;
      if (nm[0] == '.' && (nm[1] == 0 || (nm[1] == '.' && nm[2] == 0))) continue;
      unsigned char type = d->d_type;
      double ino = (double)d->d_ino;
      if (!grow_put(&dir_names, nm, strlen(nm)) || !grow_put(&dir_names, "/", 1) ||
          !grow_put(&dir_types, &type, 1) || !grow_put(&dir_inos, &ino, sizeof ino)) {
        close(fd);
        return throw_sys(env, ENOMEM, "readdir", NULL);
      }
    }
  }
  close(fd);
  size_t count = dir_types.len;
  napi_value out, names, types, inos_ab, inos;
  void *data;
  napi_create_string_latin1(env, dir_names.p ? dir_names.p : "", dir_names.len, &names);
  napi_create_buffer_copy(env, count, dir_types.p ? dir_types.p : "", NULL, &types);
  napi_create_arraybuffer(env, count * sizeof(double), &data, &inos_ab);
  if (count) memcpy(data, dir_inos.p, count * sizeof(double));
  napi_create_typedarray(env, napi_float64_array, count, inos_ab, 0, &inos);
  napi_create_array_with_length(env, 3, &out);
  napi_set_element(env, out, 0, names);
  napi_set_element(env, out, 1, types);
  napi_set_element(env, out, 2, inos);
  /* (a huge directory's buffers are not kept) */
  struct growbuf *bufs[] = {&dir_names, &dir_types, &dir_inos};
  for (int i = 0; i < 3; i++)
    if (bufs[i]->cap > (1 << 20)) {
      free(bufs[i]->p);
      *bufs[i] = (struct growbuf){0};
    }
  return out;
}

/* mkdirat(dirfd, path, mode) */
static napi_value fn_mkdirat(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t dirfd;
  uint32_t mode;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "mkdirat"));
  TRY(arg_u32(env, argv[2], &mode));
  return ret_void(env, NOINTR(mkdirat(dirfd, path, mode)), "mkdirat", path);
}

/* mknodat(dirfd, path, mode, dev) */
static napi_value fn_mknodat(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t dirfd;
  uint32_t mode;
  int64_t dev;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "mknodat"));
  TRY(arg_u32(env, argv[2], &mode));
  TRY(arg_i64(env, argv[3], &dev));
  return ret_void(env, NOINTR(mknodat(dirfd, path, mode, (dev_t)dev)), "mknodat", path);
}

/* symlinkat(target, dirfd, path) */
static napi_value fn_symlinkat(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t dirfd;
  char target[PATHBUF], path[PATHBUF];
  TRY(arg_path(env, argv[0], target, "symlinkat"));
  TRY(arg_i32(env, argv[1], &dirfd));
  TRY(arg_path(env, argv[2], path, "symlinkat"));
  if (NOINTR(symlinkat(target, dirfd, path)) < 0)
    return throw_sys2(env, errno, "symlinkat", target, path);
  return ret_undef(env);
}

/* linkat(olddirfd, oldpath, newdirfd, newpath, flags) */
static napi_value fn_linkat(napi_env env, napi_callback_info info) {
  ARGS(5);
  int32_t olddirfd, newdirfd, flags;
  char oldpath[PATHBUF], newpath[PATHBUF];
  TRY(arg_i32(env, argv[0], &olddirfd));
  TRY(arg_path(env, argv[1], oldpath, "linkat"));
  TRY(arg_i32(env, argv[2], &newdirfd));
  TRY(arg_path(env, argv[3], newpath, "linkat"));
  TRY(arg_i32(env, argv[4], &flags));
  if (NOINTR(linkat(olddirfd, oldpath, newdirfd, newpath, flags)) < 0)
    return throw_sys2(env, errno, "linkat", oldpath, newpath);
  return ret_undef(env);
}

/* unlinkat(dirfd, path, flags) */
static napi_value fn_unlinkat(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t dirfd, flags;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "unlinkat"));
  TRY(arg_i32(env, argv[2], &flags));
  return ret_void(env, NOINTR(unlinkat(dirfd, path, flags)), "unlinkat", path);
}

/* renameat2(olddirfd, oldpath, newdirfd, newpath, flags) -- raw syscall */
static napi_value fn_renameat2(napi_env env, napi_callback_info info) {
  ARGS(5);
  int32_t olddirfd, newdirfd;
  uint32_t flags;
  char oldpath[PATHBUF], newpath[PATHBUF];
  TRY(arg_i32(env, argv[0], &olddirfd));
  TRY(arg_path(env, argv[1], oldpath, "renameat2"));
  TRY(arg_i32(env, argv[2], &newdirfd));
  TRY(arg_path(env, argv[3], newpath, "renameat2"));
  TRY(arg_u32(env, argv[4], &flags));
  if (NOINTR(syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags)) < 0)
    return throw_sys2(env, errno, "renameat2", oldpath, newpath);
  return ret_undef(env);
}

/* ------------------------------------------------------------------ */
/* ownership, permissions, times                                       */
/* ------------------------------------------------------------------ */

/* uid/gid arguments: -1 means "leave unchanged" */
static bool arg_id(napi_env env, napi_value v, uint32_t *out) {
  int64_t x;
  TRYB(arg_i64(env, v, &x));
  *out = (uint32_t)x;
  return true;
}

/* fchownat(dirfd, path, uid, gid, flags) */
static napi_value fn_fchownat(napi_env env, napi_callback_info info) {
  ARGS(5);
  int32_t dirfd, flags;
  uint32_t uid, gid;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "fchownat"));
  TRY(arg_id(env, argv[2], &uid));
  TRY(arg_id(env, argv[3], &gid));
  TRY(arg_i32(env, argv[4], &flags));
  return ret_void(env, NOINTR(fchownat(dirfd, path, uid, gid, flags)), "fchownat", path);
}

/* fchown(fd, uid, gid) */
static napi_value fn_fchown(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd;
  uint32_t uid, gid;
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_id(env, argv[1], &uid));
  TRY(arg_id(env, argv[2], &gid));
  return ret_void(env, NOINTR(fchown(fd, uid, gid)), "fchown", NULL);
}

/* fchmod(fd, mode) */
static napi_value fn_fchmod(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd;
  uint32_t mode;
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_u32(env, argv[1], &mode));
  return ret_void(env, NOINTR(fchmod(fd, mode)), "fchmod", NULL);
}

/* fchmodat(dirfd, path, mode, flags): any flag (AT_SYMLINK_NOFOLLOW,
 * AT_EMPTY_PATH) goes through the raw fchmodat2 syscall. */
static napi_value fn_fchmodat(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t dirfd, flags;
  uint32_t mode;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "fchmodat"));
  TRY(arg_u32(env, argv[2], &mode));
  TRY(arg_i32(env, argv[3], &flags));
  if (flags == 0)
    return ret_void(env, NOINTR(fchmodat(dirfd, path, mode, 0)), "fchmodat", path);
  return ret_void(env, NOINTR(syscall(SYS_fchmodat2, dirfd, path, mode, flags)),
                  "fchmodat2", path);
}

static bool arg_timespec(napi_env env, napi_value vsec, napi_value vnsec,
                         struct timespec *ts) {
  int64_t sec, nsec;
  TRYB(arg_i64(env, vsec, &sec));
  TRYB(arg_i64(env, vnsec, &nsec));
  ts->tv_sec = sec;
  ts->tv_nsec = nsec;
  return true;
}

/* utimensat(dirfd, path, aSec, aNsec, mSec, mNsec, flags) */
static napi_value fn_utimensat(napi_env env, napi_callback_info info) {
  ARGS(7);
  int32_t dirfd, flags;
  char path[PATHBUF];
  struct timespec ts[2];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "utimensat"));
  TRY(arg_timespec(env, argv[2], argv[3], &ts[0]));
  TRY(arg_timespec(env, argv[4], argv[5], &ts[1]));
  TRY(arg_i32(env, argv[6], &flags));
  long r;
  if (path[0]) {
    r = NOINTR(syscall(SYS_utimensat, dirfd, path, ts, flags));
  } else {
    /* "" + AT_EMPTY_PATH acts on dirfd itself (works for O_PATH fds too);
     * kernels without AT_EMPTY_PATH support here take a NULL path. */
    r = NOINTR(syscall(SYS_utimensat, dirfd, "", ts, flags | AT_EMPTY_PATH));
    if (r < 0 && errno == EINVAL && dirfd != AT_FDCWD)
      r = NOINTR(syscall(SYS_utimensat, dirfd, NULL, ts, 0));
  }
  return ret_void(env, r, "utimensat", path);
}

/* futimens(fd, aSec, aNsec, mSec, mNsec) */
static napi_value fn_futimens(napi_env env, napi_callback_info info) {
  ARGS(5);
  int32_t fd;
  struct timespec ts[2];
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_timespec(env, argv[1], argv[2], &ts[0]));
  TRY(arg_timespec(env, argv[3], argv[4], &ts[1]));
  return ret_void(env, NOINTR(futimens(fd, ts)), "futimens", NULL);
}

/* ------------------------------------------------------------------ */
/* file data                                                           */
/* ------------------------------------------------------------------ */

/* ftruncate(fd, len) */
static napi_value fn_ftruncate(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd;
  int64_t len;
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_i64(env, argv[1], &len));
  return ret_void(env, NOINTR(ftruncate(fd, len)), "ftruncate", NULL);
}

/* truncateFile(fd, len): truncate(2) of the file open as fd, by its /proc/self/fd link. Only the
 * size is asked to change (ATTR_SIZE): the filesystem decides whether its times move, as for a
 * truncate(2) by name. ftruncate(2) always moves them. */
static napi_value fn_truncateFile(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd;
  int64_t len;
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_i64(env, argv[1], &len));
  char p[40];
  snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
  return ret_void(env, NOINTR(truncate(p, len)), "truncate", NULL);
}

#define FD_ONLY_FN(jsname, call)                                 \
  static napi_value fn_##jsname(napi_env env, napi_callback_info info) { \
    ARGS(1);                                                     \
    int32_t fd;                                                  \
    TRY(arg_i32(env, argv[0], &fd));                             \
    return ret_void(env, NOINTR(call(fd)), #jsname, NULL);       \
  }

FD_ONLY_FN(fsync, fsync)
FD_ONLY_FN(fdatasync, fdatasync)
FD_ONLY_FN(syncfs, syncfs)

/* fallocate(fd, mode, offset, len) */
static napi_value fn_fallocate(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t fd, mode;
  int64_t off, len;
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_i32(env, argv[1], &mode));
  TRY(arg_i64(env, argv[2], &off));
  TRY(arg_i64(env, argv[3], &len));
  return ret_void(env, NOINTR(fallocate(fd, mode, off, len)), "fallocate", NULL);
}

/* lseek(fd, offset, whence): new offset */
static napi_value fn_lseek(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd, whence;
  int64_t off;
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_i64(env, argv[1], &off));
  TRY(arg_i32(env, argv[2], &whence));
  return ret_count(env, lseek(fd, off, whence), "lseek", NULL);
}

/* The arguments of pread and pwrite: (fd, buf, bufOffset, length, position). */
typedef struct {
  int32_t fd;
  char *p;
  size_t len;
  int64_t pos;
} io_args;

static bool arg_io(napi_env env, napi_value *argv, io_args *a) {
  return arg_i32(env, argv[0], &a->fd) && arg_slice(env, argv[1], argv[2], argv[3], &a->p, &a->len) &&
         arg_i64(env, argv[4], &a->pos);
}

/* pread or pwrite with io_args; a negative position reads or writes at (and advances) the file offset. */
static napi_value rw_call(napi_env env, napi_callback_info info, bool write_) {
  ARGS(5);
  io_args a;
  TRY(arg_io(env, argv, &a));
  ssize_t n;
  if (write_) n = a.pos < 0 ? NOINTR(write(a.fd, a.p, a.len)) : NOINTR(pwrite(a.fd, a.p, a.len, a.pos));
  else n = a.pos < 0 ? NOINTR(read(a.fd, a.p, a.len)) : NOINTR(pread(a.fd, a.p, a.len, a.pos));
  return ret_count(env, n, write_ ? (a.pos < 0 ? "write" : "pwrite") : (a.pos < 0 ? "read" : "pread"), NULL);
}

/* pread(fd, buf, bufOffset, length, position): bytes read. */
static napi_value fn_pread(napi_env env, napi_callback_info info) {
  return rw_call(env, info, false);
}

/* pwrite(fd, buf, bufOffset, length, position): bytes written. */
static napi_value fn_pwrite(napi_env env, napi_callback_info info) {
  return rw_call(env, info, true);
}

/* copyFileRange(fdIn, offIn, fdOut, offOut, len, flags): bytes copied.
 * A null offset uses (and advances) that fd's file offset. */
static napi_value fn_copyFileRange(napi_env env, napi_callback_info info) {
  ARGS(6);
  int32_t fdin, fdout;
  uint32_t flags;
  int64_t len;
  loff_t offin, offout;
  loff_t *poffin = NULL, *poffout = NULL;
  TRY(arg_i32(env, argv[0], &fdin));
  if (!is_nullish(env, argv[1])) {
    TRY(arg_i64(env, argv[1], &offin));
    poffin = &offin;
  }
  TRY(arg_i32(env, argv[2], &fdout));
  if (!is_nullish(env, argv[3])) {
    TRY(arg_i64(env, argv[3], &offout));
    poffout = &offout;
  }
  TRY(arg_i64(env, argv[4], &len));
  TRY(arg_u32(env, argv[5], &flags));
  if (len < 0) return throw_sys(env, EINVAL, "copy_file_range", NULL);
  return ret_count(env, NOINTR(copy_file_range(fdin, poffin, fdout, poffout, (size_t)len, flags)),
                   "copy_file_range", NULL);
}

/* sendfile(fdOut, fdIn, offIn, len): bytes copied from fdIn at offIn (its file offset untouched) to
 * fdOut at fdOut's file offset, which it advances: the kernel's copy between page caches, for files
 * whose filesystems copy_file_range will not join. */
static napi_value fn_sendfile(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t fdout, fdin;
  int64_t offin, len;
  TRY(arg_i32(env, argv[0], &fdout));
  TRY(arg_i32(env, argv[1], &fdin));
  TRY(arg_i64(env, argv[2], &offin));
  TRY(arg_i64(env, argv[3], &len));
  if (len < 0 || offin < 0) return throw_sys(env, EINVAL, "sendfile", NULL);
  off_t off = (off_t)offin;
  return ret_count(env, NOINTR(sendfile(fdout, fdin, &off, (size_t)len)), "sendfile", NULL);
}

/* fadvise(fd, offset, len, advice): posix_fadvise(2) (it returns the error number itself). */
static napi_value fn_fadvise(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t fd;
  int64_t off, len;
  uint32_t advice;
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_i64(env, argv[1], &off));
  TRY(arg_i64(env, argv[2], &len));
  TRY(arg_u32(env, argv[3], &advice));
  int r = posix_fadvise(fd, (off_t)off, (off_t)len, (int)advice);
  if (r != 0) {
    errno = r;
    return ret_void(env, -1, "posix_fadvise", NULL);
  }
  return ret_undef(env);
}

/* ficlone(destFd, srcFd) */
static napi_value fn_ficlone(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t dst, src;
  TRY(arg_i32(env, argv[0], &dst));
  TRY(arg_i32(env, argv[1], &src));
  return ret_void(env, NOINTR(ioctl(dst, FICLONE, src)), "ioctl(FICLONE)", NULL);
}

/* ioctlBuf(fd, request, buf): ioctl(2) with a pointer to buf (in and out), for the
 * file attribute requests (FS_IOC_GETFLAGS, FS_IOC_FSSETXATTR, ...). The request's encoded
 * size must fit in buf. Returns ioctl's result. */
static napi_value fn_ioctlBuf(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd;
  uint32_t req;
  char *data;
  size_t len;
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_u32(env, argv[1], &req));
  TRY(arg_buffer(env, argv[2], &data, &len));
  if (_IOC_SIZE(req) > len) return throw_sys(env, EINVAL, "ioctl", NULL);
  return ret_count(env, NOINTR(ioctl(fd, (unsigned long)req, data)), "ioctl", NULL);
}

/* ------------------------------------------------------------------ */
/* extended attributes                                                 */
/* ------------------------------------------------------------------ */

static volatile int xattr_force_fallback; /* set by _forceXattrFallback */
static volatile int xattr_at_missing;     /* *xattrat returned ENOSYS once */

static bool use_xattr_at(void) { return !xattr_force_fallback && !xattr_at_missing; }

/* Path for the l*xattr(2) fallback: "/proc/self/fd/<dirfd>/<path>".
 * Sets *follow when the final component is the fd itself (path ""). */
static int xattr_proc_path(char *out, size_t cap, int dirfd, const char *path,
                           bool *follow) {
  int n;
  *follow = path[0] == 0;
  if (dirfd == AT_FDCWD || path[0] == '/')
    n = snprintf(out, cap, "%s", path[0] ? path : ".");
  else if (path[0] == 0)
    n = snprintf(out, cap, "/proc/self/fd/%d", dirfd);
  else
    n = snprintf(out, cap, "/proc/self/fd/%d/%s", dirfd, path);
  if (n < 0 || (size_t)n >= cap) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return 0;
}

/* Decide after a failed *xattrat call whether to retry via /proc. The
 * *xattrat calls refuse O_PATH fds with "" + AT_EMPTY_PATH (EBADF). */
static bool xattr_at_failed(const char *path) {
  if (errno == ENOSYS) {
    xattr_at_missing = 1;
    return true;
  }
  return errno == EBADF && path[0] == 0;
}

/* After a /proc fallback: a bad fd shows up as ENOENT; report EBADF. */
static long xattr_fix_badf(long r, int dirfd) {
  if (r < 0 && errno == ENOENT && dirfd != AT_FDCWD && fcntl(dirfd, F_GETFD) < 0)
    errno = EBADF;
  return r;
}

static unsigned xattr_at_flags(const char *path) {
  return AT_SYMLINK_NOFOLLOW | (path[0] ? 0 : AT_EMPTY_PATH);
}

static ssize_t x_getat(int dirfd, const char *path, const char *name, void *buf, size_t size) {
  if (use_xattr_at()) {
    struct strata_xattr_args a = {(uintptr_t)buf, (uint32_t)size, 0};
    ssize_t r = NOINTR(syscall(SYS_getxattrat, dirfd, path, xattr_at_flags(path), name, &a, sizeof a));
    if (r >= 0 || !xattr_at_failed(path)) return r;
  }
  char p[PATHBUF + 32];
  bool follow;
  if (xattr_proc_path(p, sizeof p, dirfd, path, &follow) < 0) return -1;
  return xattr_fix_badf(follow ? NOINTR(getxattr(p, name, buf, size))
                               : NOINTR(lgetxattr(p, name, buf, size)), dirfd);
}

static ssize_t x_listat(int dirfd, const char *path, char *buf, size_t size) {
  if (use_xattr_at()) {
    ssize_t r = NOINTR(syscall(SYS_listxattrat, dirfd, path, xattr_at_flags(path), buf, size));
    if (r >= 0 || !xattr_at_failed(path)) return r;
  }
  char p[PATHBUF + 32];
  bool follow;
  if (xattr_proc_path(p, sizeof p, dirfd, path, &follow) < 0) return -1;
  return xattr_fix_badf(follow ? NOINTR(listxattr(p, buf, size))
                               : NOINTR(llistxattr(p, buf, size)), dirfd);
}

static long x_setat(int dirfd, const char *path, const char *name, const void *val,
                    size_t size, int flags) {
  if (use_xattr_at()) {
    struct strata_xattr_args a = {(uintptr_t)val, (uint32_t)size, (uint32_t)flags};
    long r = NOINTR(syscall(SYS_setxattrat, dirfd, path, xattr_at_flags(path), name, &a, sizeof a));
    if (r >= 0 || !xattr_at_failed(path)) return r;
  }
  char p[PATHBUF + 32];
  bool follow;
  if (xattr_proc_path(p, sizeof p, dirfd, path, &follow) < 0) return -1;
  return xattr_fix_badf(follow ? NOINTR(setxattr(p, name, val, size, flags))
                               : NOINTR(lsetxattr(p, name, val, size, flags)), dirfd);
}

static long x_removeat(int dirfd, const char *path, const char *name) {
  if (use_xattr_at()) {
    long r = NOINTR(syscall(SYS_removexattrat, dirfd, path, xattr_at_flags(path), name));
    if (r >= 0 || !xattr_at_failed(path)) return r;
  }
  char p[PATHBUF + 32];
  bool follow;
  if (xattr_proc_path(p, sizeof p, dirfd, path, &follow) < 0) return -1;
  return xattr_fix_badf(follow ? NOINTR(removexattr(p, name))
                               : NOINTR(lremovexattr(p, name)), dirfd);
}

/* A value/list reader: either (dirfd, path[, name]) or (fd[, name]). */
typedef struct {
  int fd;
  const char *path; /* NULL: fd-based */
  const char *name; /* NULL: list */
} xattr_src;

static ssize_t xattr_read(const xattr_src *s, char *buf, size_t size) {
  if (s->path) {
    return s->name ? x_getat(s->fd, s->path, s->name, buf, size)
                   : x_listat(s->fd, s->path, buf, size);
  }
  return s->name ? NOINTR(fgetxattr(s->fd, s->name, buf, size))
                 : NOINTR(flistxattr(s->fd, buf, size));
}

/* Read a whole value or list: try the stack buffer first, then probe the
 * size and read into a heap buffer, retrying while it keeps growing.
 * Returns the length; *out is stackbuf or a malloc()ed buffer. */
static ssize_t xattr_read_all(const xattr_src *s, char *stackbuf, size_t stacksz, char **out) {
  *out = stackbuf;
  ssize_t r = xattr_read(s, stackbuf, stacksz);
  if (r >= 0 || errno != ERANGE) return r;
  char *heap = NULL;
  do {
    ssize_t sz = xattr_read(s, NULL, 0);
    if (sz < 0) break;
    char *nb = realloc(heap, sz > 0 ? (size_t)sz : 1);
    if (!nb) {
      errno = ENOMEM;
      break;
    }
    heap = nb;
    r = xattr_read(s, heap, (size_t)sz);
    if (r >= 0) {
      *out = heap;
      return r;
    }
  } while (errno == ERANGE);
  int e = errno;
  free(heap);
  errno = e;
  return -1;
}

static napi_value xattr_value_result(napi_env env, const xattr_src *s, const char *syscall) {
  char stackbuf[4096], *buf;
  ssize_t n = xattr_read_all(s, stackbuf, sizeof stackbuf, &buf);
  if (n < 0) {
    if (errno == ENODATA) return ret_null(env);
    return throw_sys(env, errno, syscall, s->path);
  }
  napi_value result;
  napi_create_buffer_copy(env, (size_t)n, buf, NULL, &result);
  if (buf != stackbuf) free(buf);
  return result;
}

static napi_value xattr_list_result(napi_env env, const xattr_src *s, const char *syscall) {
  char stackbuf[4096], *buf;
  ssize_t n = xattr_read_all(s, stackbuf, sizeof stackbuf, &buf);
  if (n < 0) return throw_sys(env, errno, syscall, s->path);
  napi_value arr;
  uint32_t count = 0;
  napi_create_array(env, &arr);
  for (ssize_t pos = 0; pos < n;) {
    size_t len = strnlen(buf + pos, (size_t)(n - pos));
    if (len > 0) napi_set_element(env, arr, count++, ret_latin1(env, buf + pos, len));
    pos += (ssize_t)len + 1;
  }
  if (buf != stackbuf) free(buf);
  return arr;
}

/* lgetxattr(dirfd, path, name): Buffer | null */
static napi_value fn_lgetxattr(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t dirfd;
  char path[PATHBUF], name[NAMEBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "getxattrat"));
  TRY(arg_name(env, argv[2], name, "getxattrat"));
  xattr_src s = {dirfd, path, name};
  return xattr_value_result(env, &s, "getxattrat");
}

/* llistxattr(dirfd, path): string[] */
static napi_value fn_llistxattr(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t dirfd;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "listxattrat"));
  xattr_src s = {dirfd, path, NULL};
  return xattr_list_result(env, &s, "listxattrat");
}

/* lsetxattr(dirfd, path, name, value, flags) */
static napi_value fn_lsetxattr(napi_env env, napi_callback_info info) {
  ARGS(5);
  int32_t dirfd, flags;
  char path[PATHBUF], name[NAMEBUF], *val;
  size_t len;
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "setxattrat"));
  TRY(arg_name(env, argv[2], name, "setxattrat"));
  TRY(arg_buffer(env, argv[3], &val, &len));
  TRY(arg_i32(env, argv[4], &flags));
  return ret_void(env, x_setat(dirfd, path, name, val, len, flags), "setxattrat", path);
}

/* lremovexattr(dirfd, path, name) */
static napi_value fn_lremovexattr(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t dirfd;
  char path[PATHBUF], name[NAMEBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "removexattrat"));
  TRY(arg_name(env, argv[2], name, "removexattrat"));
  return ret_void(env, x_removeat(dirfd, path, name), "removexattrat", path);
}

/* fgetxattr(fd, name): Buffer | null */
static napi_value fn_fgetxattr(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd;
  char name[NAMEBUF];
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_name(env, argv[1], name, "fgetxattr"));
  xattr_src s = {fd, NULL, name};
  return xattr_value_result(env, &s, "fgetxattr");
}

/* flistxattr(fd): string[] */
static napi_value fn_flistxattr(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t fd;
  TRY(arg_i32(env, argv[0], &fd));
  xattr_src s = {fd, NULL, NULL};
  return xattr_list_result(env, &s, "flistxattr");
}

/* fsetxattr(fd, name, value, flags) */
static napi_value fn_fsetxattr(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t fd, flags;
  char name[NAMEBUF], *val;
  size_t len;
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_name(env, argv[1], name, "fsetxattr"));
  TRY(arg_buffer(env, argv[2], &val, &len));
  TRY(arg_i32(env, argv[3], &flags));
  return ret_void(env, NOINTR(fsetxattr(fd, name, val, len, flags)), "fsetxattr", NULL);
}

/* fremovexattr(fd, name) */
static napi_value fn_fremovexattr(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd;
  char name[NAMEBUF];
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_name(env, argv[1], name, "fremovexattr"));
  return ret_void(env, NOINTR(fremovexattr(fd, name)), "fremovexattr", NULL);
}

/* _forceXattrFallback(on): test hook forcing the /proc/self/fd fallback */
static napi_value fn_forceXattrFallback(napi_env env, napi_callback_info info) {
  ARGS(1);
  bool on;
  TRY(arg_bool(env, argv[0], &on));
  xattr_force_fallback = on;
  return ret_undef(env);
}

/* ------------------------------------------------------------------ */
/* filesystems and mounts                                              */
/* ------------------------------------------------------------------ */

static void set_num(napi_env env, napi_value obj, const char *key, double val) {
  napi_set_named_property(env, obj, key, ret_num(env, val));
}

/* fstatfs(fd): {type, bsize, blocks, bfree, bavail, files, ffree, namelen, frsize, flags} */
static napi_value fn_fstatfs(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t fd;
  TRY(arg_i32(env, argv[0], &fd));
  struct statfs sf;
  if (NOINTR(fstatfs(fd, &sf)) < 0) return throw_sys(env, errno, "fstatfs", NULL);
  napi_value o;
  napi_create_object(env, &o);
  set_num(env, o, "type", (double)(unsigned long)sf.f_type);
  set_num(env, o, "bsize", (double)sf.f_bsize);
  set_num(env, o, "blocks", (double)sf.f_blocks);
  set_num(env, o, "bfree", (double)sf.f_bfree);
  set_num(env, o, "bavail", (double)sf.f_bavail);
  set_num(env, o, "files", (double)sf.f_files);
  set_num(env, o, "ffree", (double)sf.f_ffree);
  set_num(env, o, "namelen", (double)sf.f_namelen);
  set_num(env, o, "frsize", (double)sf.f_frsize);
  set_num(env, o, "flags", (double)sf.f_flags);
  return o;
}

/* mount(source, target, fstype, flags, data): null source/fstype/data -> NULL */
static napi_value fn_mount(napi_env env, napi_callback_info info) {
  ARGS(5);
  char src[PATHBUF], target[PATHBUF], fstype[PATHBUF], data[PATHBUF];
  const char *psrc, *pfstype, *pdata;
  int64_t flags;
  TRY(arg_opt_path(env, argv[0], src, &psrc, "mount"));
  TRY(arg_path(env, argv[1], target, "mount"));
  TRY(arg_opt_path(env, argv[2], fstype, &pfstype, "mount"));
  TRY(arg_i64(env, argv[3], &flags));
  TRY(arg_opt_path(env, argv[4], data, &pdata, "mount"));
  if (NOINTR(mount(psrc, target, pfstype, (unsigned long)flags, pdata)) < 0)
    return throw_sys2(env, errno, "mount", psrc ? psrc : "", target);
  return ret_undef(env);
}

/* umount2(target, flags) */
static napi_value fn_umount2(napi_env env, napi_callback_info info) {
  ARGS(2);
  char target[PATHBUF];
  int32_t flags;
  TRY(arg_path(env, argv[0], target, "umount2"));
  TRY(arg_i32(env, argv[1], &flags));
  return ret_void(env, NOINTR(umount2(target, flags)), "umount2", target);
}

/* openTree(dirfd, path, flags): fd of a detached copy of the mount tree at path (OPEN_TREE_CLONE) */
static napi_value fn_openTree(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t dirfd, flags;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "open_tree"));
  TRY(arg_i32(env, argv[2], &flags));
  return ret_count(env, NOINTR(syscall(SYS_open_tree, dirfd, path, (unsigned)flags)), "open_tree", path);
}

/* mountSetattr(dirfd, path, flags, attrSet, attrClr): mount_setattr(2) without idmapping */
static napi_value fn_mountSetattr(napi_env env, napi_callback_info info) {
  ARGS(5);
  int32_t dirfd, flags;
  int64_t set, clr;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "mount_setattr"));
  TRY(arg_i32(env, argv[2], &flags));
  TRY(arg_i64(env, argv[3], &set));
  TRY(arg_i64(env, argv[4], &clr));
  struct mount_attr attr = {.attr_set = (uint64_t)set, .attr_clr = (uint64_t)clr};
  return ret_void(env, NOINTR(syscall(SYS_mount_setattr, dirfd, path, (unsigned)flags, &attr, sizeof attr)),
                  "mount_setattr", path);
}

#ifndef SYS_open_tree_attr
#define SYS_open_tree_attr 467 /* Linux 6.15 (one number on every architecture) */
#endif
#ifndef MOUNT_ATTR_IDMAP
#define MOUNT_ATTR_IDMAP 0x00100000
#endif

/* openTreeAttr(dirfd, path, flags, attrSet, attrClr, usernsFd): open_tree_attr(2), a detached copy of
   the mount at path with attributes set (an idmapping from usernsFd when attrSet has MOUNT_ATTR_IDMAP) */
static napi_value fn_openTreeAttr(napi_env env, napi_callback_info info) {
  ARGS(6);
  int32_t dirfd, flags, userns;
  int64_t set, clr;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "open_tree_attr"));
  TRY(arg_i32(env, argv[2], &flags));
  TRY(arg_i64(env, argv[3], &set));
  TRY(arg_i64(env, argv[4], &clr));
  TRY(arg_i32(env, argv[5], &userns));
  struct mount_attr attr = {.attr_set = (uint64_t)set, .attr_clr = (uint64_t)clr, .userns_fd = (uint64_t)(uint32_t)userns};
  return ret_count(env, NOINTR(syscall(SYS_open_tree_attr, dirfd, path, (unsigned)flags, &attr, sizeof attr)),
                   "open_tree_attr", path);
}

/* ------------------------------------------------------------------ */
/* file handles and filesystem identity (overlayfs' origin xattr)      */
/* ------------------------------------------------------------------ */

#ifndef FS_IOC_GETFSUUID
struct fsuuid2 {
  uint8_t len;
  uint8_t uuid[16];
};
#define FS_IOC_GETFSUUID _IOR(0x15, 0, struct fsuuid2)
#endif

/* nameToHandleAt(dirfd, path, flags): {type, handle: Buffer, mountId} */
static napi_value fn_nameToHandleAt(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t dirfd, flags;
  char path[PATHBUF];
  TRY(arg_i32(env, argv[0], &dirfd));
  TRY(arg_path(env, argv[1], path, "name_to_handle_at"));
  TRY(arg_i32(env, argv[2], &flags));
  union {
    struct file_handle fh;
    char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  } h;
  h.fh.handle_bytes = MAX_HANDLE_SZ;
  int mount_id;
  if (NOINTR(name_to_handle_at(dirfd, path, &h.fh, &mount_id, flags)) < 0)
    return throw_sys(env, errno, "name_to_handle_at", path);
  napi_value o, buf;
  napi_create_object(env, &o);
  set_num(env, o, "type", h.fh.handle_type);
  napi_create_buffer_copy(env, h.fh.handle_bytes, h.fh.f_handle, NULL, &buf);
  napi_set_named_property(env, o, "handle", buf);
  set_num(env, o, "mountId", mount_id);
  return o;
}

/* openByHandleAt(mountFd, type, handle, flags): fd (needs CAP_DAC_READ_SEARCH) */
static napi_value fn_openByHandleAt(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t mountfd, type, flags;
  char *data;
  size_t len;
  TRY(arg_i32(env, argv[0], &mountfd));
  TRY(arg_i32(env, argv[1], &type));
  TRY(arg_buffer(env, argv[2], &data, &len));
  TRY(arg_i32(env, argv[3], &flags));
  if (len > MAX_HANDLE_SZ) return throw_sys(env, EINVAL, "open_by_handle_at", NULL);
  union {
    struct file_handle fh;
    char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  } h;
  h.fh.handle_bytes = (unsigned int)len;
  h.fh.handle_type = type;
  memcpy(h.fh.f_handle, data, len);
  return ret_count(env, NOINTR(open_by_handle_at(mountfd, &h.fh, flags)), "open_by_handle_at", NULL);
}

/* fsUuid(fd): the filesystem's s_uuid (FS_IOC_GETFSUUID), or null when it has none to report */
static napi_value fn_fsUuid(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t fd;
  TRY(arg_i32(env, argv[0], &fd));
  struct fsuuid2 u;
  memset(&u, 0, sizeof u);
  u.len = sizeof u.uuid;
  if (NOINTR(ioctl(fd, FS_IOC_GETFSUUID, &u)) < 0) {
    if (errno == ENOTTY || errno == EINVAL || errno == EOPNOTSUPP) return ret_null(env);
    return throw_sys(env, errno, "ioctl(FS_IOC_GETFSUUID)", NULL);
  }
  if (u.len > sizeof u.uuid) u.len = sizeof u.uuid;
  napi_value buf;
  napi_create_buffer_copy(env, u.len, u.uuid, NULL, &buf);
  return buf;
}

/* ------------------------------------------------------------------ */
/* /dev/fuse                                                           */
/* ------------------------------------------------------------------ */

/* openFuseDevice(): fd */
static napi_value fn_openFuseDevice(napi_env env, napi_callback_info info) {
  return ret_count(env, NOINTR(open("/dev/fuse", O_RDWR | O_CLOEXEC)), "open", "/dev/fuse");
}

/* ioctlClone(newFd, oldFd) */
static napi_value fn_ioctlClone(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t newfd, oldfd;
  TRY(arg_i32(env, argv[0], &newfd));
  TRY(arg_i32(env, argv[1], &oldfd));
  uint32_t v = (uint32_t)oldfd;
  return ret_void(env, NOINTR(ioctl(newfd, STRATA_FUSE_DEV_IOC_CLONE, &v)),
                  "ioctl(FUSE_DEV_IOC_CLONE)", NULL);
}

/* backingOpen(devFd, fd): backing id */
static napi_value fn_backingOpen(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t devfd, fd;
  TRY(arg_i32(env, argv[0], &devfd));
  TRY(arg_i32(env, argv[1], &fd));
  struct strata_fuse_backing_map map = {.fd = fd, .flags = 0, .padding = 0};
  return ret_count(env, NOINTR(ioctl(devfd, STRATA_FUSE_DEV_IOC_BACKING_OPEN, &map)),
                   "ioctl(FUSE_DEV_IOC_BACKING_OPEN)", NULL);
}

/* backingClose(devFd, id) */
static napi_value fn_backingClose(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t devfd;
  uint32_t id;
  TRY(arg_i32(env, argv[0], &devfd));
  TRY(arg_u32(env, argv[1], &id));
  return ret_void(env, NOINTR(ioctl(devfd, STRATA_FUSE_DEV_IOC_BACKING_CLOSE, &id)),
                  "ioctl(FUSE_DEV_IOC_BACKING_CLOSE)", NULL);
}

/* writeReply(fd, Buffer | Buffer[], length?): bytes written (one write/writev). With a Buffer and a
 * length, its first `length` bytes (a reply in a reused buffer, without a view made per reply). */
static napi_value fn_writeReply(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 2) return type_error(env, "expected 2 or 3 arguments"), NULL;
  if (argc < 3) napi_get_undefined(env, &argv[2]);
  int32_t fd;
  TRY(arg_i32(env, argv[0], &fd));
  bool isbuf = false, isarr = false;
  napi_is_buffer(env, argv[1], &isbuf);
  if (isbuf) {
    char *data;
    size_t len;
    TRY(arg_buffer(env, argv[1], &data, &len));
    if (!is_nullish(env, argv[2])) {
      uint32_t want;
      TRY(arg_u32(env, argv[2], &want));
      if (want > len) {
        napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "length beyond the buffer");
        return NULL;
      }
      len = want;
    }
    return ret_count(env, NOINTR(write(fd, data, len)), "write", NULL);
  }
  napi_is_array(env, argv[1], &isarr);
  if (!isarr) return type_error(env, "expected a Buffer or an array of Buffers"), NULL;
  uint32_t n;
  napi_get_array_length(env, argv[1], &n);
  if (n > IOV_MAX) return throw_sys(env, EINVAL, "writev", NULL);
  struct iovec stackiov[16];
  struct iovec *iov = n <= 16 ? stackiov : malloc(n * sizeof *iov);
  if (!iov) return throw_sys(env, ENOMEM, "writev", NULL);
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    char *data;
    size_t len;
    if (napi_get_element(env, argv[1], i, &el) != napi_ok || !arg_buffer(env, el, &data, &len)) {
      if (iov != stackiov) free(iov);
      return NULL;
    }
    iov[i].iov_base = data;
    iov[i].iov_len = len;
  }
  ssize_t r = NOINTR(writev(fd, iov, (int)n));
  int e = errno;
  if (iov != stackiov) free(iov);
  errno = e;
  return ret_count(env, r, "writev", NULL);
}

/* ------------------------------------------------------------------ */
/* Reader: uv_poll on a /dev/fuse fd, calling back into JS per request */
/* ------------------------------------------------------------------ */

typedef struct reader reader_t;

/* Opcodes whose spins are tracked one by one (FUSE's are below 64; others share slot 0). */
#define READER_SPIN_OPS 64
/* Gaps remembered per opcode (a power of 2). */
#define READER_GAPS 8

/* Owned by the JS handle (napi external); points at the reader while live. Keeps the reader's
 * spins (see reader_spin_ns): how many, how many caught a request, and their time. */
typedef struct {
  reader_t *r;
  double spins, caught, spin_ns;
} reader_box;

struct reader {
  uv_poll_t poll;
  napi_env env;
  napi_ref buf_ref, req_ref, end_ref, handle_ref;
  napi_async_context actx;
  reader_box *box;
  char *data;
  size_t size;
  int fd;
  bool stopped;   /* no more reads / callbacks */
  bool torn_down; /* refs released, uv_close issued */
  bool in_poll;   /* inside on_poll: defer teardown */
  /* Per opcode of the last request of a batch: the last READER_GAPS gaps between the end of such a
   * batch and the next request (ns), where the next is written, and how many batch ends in a row
   * were not spun after (see reader_spin_ns). */
  uint32_t gaps[READER_SPIN_OPS][READER_GAPS];
  uint8_t gap_next[READER_SPIN_OPS];
  uint8_t spin_skipped[READER_SPIN_OPS];
  /* When the last batch ended (its replies out; 0: its gap is recorded) and its last opcode's slot. */
  long long batch_end;
  unsigned end_op;
};

static void reader_cleanup_hook(void *arg);

static void reader_on_close(uv_handle_t *h) { free(h->data); }

/* Release every JS reference and close the poll handle (memory is freed in
 * the close callback). */
static void reader_teardown(reader_t *r, bool from_hook) {
  if (r->torn_down) return;
  r->torn_down = true;
  napi_env env = r->env;
  if (!from_hook) {
    napi_remove_env_cleanup_hook(env, reader_cleanup_hook, r);
    napi_async_destroy(env, r->actx);
  }
  if (r->box) r->box->r = NULL;
  r->box = NULL;
  napi_delete_reference(env, r->buf_ref);
  napi_delete_reference(env, r->req_ref);
  napi_delete_reference(env, r->end_ref);
  napi_delete_reference(env, r->handle_ref);
  uv_close((uv_handle_t *)&r->poll, reader_on_close);
}

static void reader_stop(reader_t *r) {
  if (!r->stopped) {
    r->stopped = true;
    uv_poll_stop(&r->poll);
  }
  if (!r->in_poll) reader_teardown(r, false);
}

static void reader_cleanup_hook(void *arg) {
  reader_t *r = arg;
  r->stopped = true;
  uv_poll_stop(&r->poll);
  reader_teardown(r, true);
}

static void box_finalize(napi_env env, void *data, void *hint) {
  reader_box *b = data;
  if (b->r) b->r->box = NULL;
  free(b);
}

/* Print (and clear) a pending JS exception thrown by a callback. */
static void report_exception(napi_env env, const char *where) {
  napi_value exc, str = NULL;
  if (napi_get_and_clear_last_exception(env, &exc) != napi_ok) return;
  napi_valuetype t;
  napi_typeof(env, exc, &t);
  if (t == napi_object) {
    napi_value stack;
    napi_valuetype st;
    if (napi_get_named_property(env, exc, "stack", &stack) == napi_ok &&
        napi_typeof(env, stack, &st) == napi_ok && st == napi_string)
      str = stack;
    else
      napi_get_and_clear_last_exception(env, &stack);
  }
  if (!str && napi_coerce_to_string(env, exc, &str) != napi_ok) {
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
    str = NULL;
  }
  size_t len = 0;
  char *msg = NULL;
  if (str && napi_get_value_string_utf8(env, str, NULL, 0, &len) == napi_ok &&
      (msg = malloc(len + 1)))
    napi_get_value_string_utf8(env, str, msg, len + 1, &len);
  fprintf(stderr, "strata_native: uncaught exception in %s: %s\n", where,
          msg ? msg : "(unprintable)");
  free(msg);
}

static void call_js(napi_env env, napi_value fn, size_t argc, napi_value *args,
                    const char *where) {
  napi_value recv;
  napi_get_undefined(env, &recv);
  if (napi_call_function(env, recv, fn, argc, args, NULL) != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) report_exception(env, where);
  }
}

/* How long one poll callback may serve before it lets the event loop run timers, I/O completions
 * and immediates. */
#define READER_SLICE_NS 2000000L

/* After a batch of requests, the reader keeps reading /dev/fuse without blocking for a while: a
 * caller in a loop of system calls sends its next request soon, and catching it there saves the
 * wakeup of a sleeping thread (on this project's VMs an idle vCPU halts, and waking it costs
 * 30-60 us; a loop of uncached statx: 17-20 us a round trip with a spin, 23-32 us without). How
 * soon depends on the caller: a C loop of statx comes back within 5 us, python's os.stat loop
 * within 20-60 us (its own vCPU was halted while it waited for the reply, and waking it takes that
 * long), and after the OPEN of a cold file the caller waits for the disk, where a spin is CPU for
 * nothing (a cold `cat` of 5000 small files: 360 ms of the daemon's CPU with 15 us spins, 520 ms
 * with 50 us). What follows a request depends mostly on what the request was, so per opcode that
 * ended a batch the reader keeps the last READER_GAPS gaps to the next request, and spins for the
 * step that pays best on them: each gap it would catch saves a wakeup (READER_WAKE_NS), each it
 * would not costs the whole step; where no step pays, it does not spin, except every
 * READER_SPIN_PROBE-th time for the longest step (a gap measured without a spin includes the
 * reader's own wakeup: a probe sees it as it is). */
static const long k_spin_steps[] = {15000L, 30000L, 50000L, 75000L, 100000L};
#define READER_SPIN_STEPS ((int)(sizeof k_spin_steps / sizeof k_spin_steps[0]))
#define READER_WAKE_NS 50000L
#define READER_SPIN_PROBE 16

/* How long to spin after a batch that ended with opcode slot `op` (0: not at all). */
static long reader_spin_ns(reader_t *r, unsigned op) {
  const uint32_t *g = r->gaps[op];
  long best = 0, best_gain = 0;
  for (int s = 0; s < READER_SPIN_STEPS; s++) {
    long step = k_spin_steps[s], caught = 0;
    for (int i = 0; i < READER_GAPS; i++) caught += g[i] <= step;
    long gain = caught * READER_WAKE_NS - (READER_GAPS - caught) * step;
    if (gain > best_gain) {
      best_gain = gain;
      best = step;
    }
  }
  if (best != 0) {
    r->spin_skipped[op] = 0;
    return best;
  }
  if (++r->spin_skipped[op] < READER_SPIN_PROBE) return 0;
  r->spin_skipped[op] = 0;
  return k_spin_steps[READER_SPIN_STEPS - 1];
}

/* A request was read at `now`: the gap since the last batch ended, for that batch's opcode. */
static void reader_gap(reader_t *r, long long now) {
  long long gap = now - r->batch_end;
  r->gaps[r->end_op][r->gap_next[r->end_op]++ & (READER_GAPS - 1)] = gap > (long long)UINT32_MAX ? UINT32_MAX : (uint32_t)gap;
  r->batch_end = 0;
}

static long long mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One request into JS. */
static void reader_deliver(reader_t *r, napi_value on_req, ssize_t n) {
  napi_env env = r->env;
  napi_handle_scope inner;
  napi_value arg;
  napi_open_handle_scope(env, &inner);
  napi_create_int32(env, (int32_t)n, &arg);
  call_js(env, on_req, 1, &arg, "onRequest");
  napi_close_handle_scope(env, inner);
}

/* Ends a callback scope (running nextTicks and microtasks: replies of handlers that returned a
 * promise settled synchronously go out here) and reports what they threw. */
static void reader_close_scope(reader_t *r, napi_callback_scope cs) {
  napi_close_callback_scope(r->env, cs);
  bool pending = false;
  napi_is_exception_pending(r->env, &pending);
  if (pending) report_exception(r->env, "reader tick processing");
}

static void reader_on_poll(uv_poll_t *h, int status, int events) {
  reader_t *r = h->data;
  if (r->stopped) return;
  napi_env env = r->env;
  napi_handle_scope hs;
  napi_callback_scope cs;
  napi_value resource, on_req;
  if (napi_open_handle_scope(env, &hs) != napi_ok) return;
  napi_get_reference_value(env, r->handle_ref, &resource);
  napi_get_reference_value(env, r->req_ref, &on_req);
  napi_open_callback_scope(env, resource, r->actx, &cs);
  r->in_poll = true;

  bool ended = false;
  int end_errno = 0;
  const char *end_syscall = "read";
  long long start = mono_ns(), spin_until = 0, spin_start = 0;
  int served = 0;
  unsigned last_op = 0; /* opcode of the last request read (its gaps' slot) */
  /* Even on a poll error (libuv has then stopped the handle) drain with
   * read(): a disconnected /dev/fuse reports EPOLLERR, and only read()
   * tells an unmount (ENODEV) from a real failure.
   * Drain until EAGAIN; then, if requests were served, run the microtasks (their replies go
   * out) and keep reading for a while (reader_spin_ns) before going back to the poll. */
  while (!r->stopped) {
    ssize_t n = read(r->fd, r->data, r->size);
    if (n > 0) {
      if (r->batch_end != 0) {
        long long now = mono_ns();
        if (spin_until != 0) {
          r->box->caught++;
          r->box->spin_ns += (double)(now - spin_start);
        }
        reader_gap(r, now);
      }
      uint32_t op = n >= 8 ? *(uint32_t *)(r->data + 4) : 0;
      last_op = op < READER_SPIN_OPS ? op : 0;
      reader_deliver(r, on_req, n);
      spin_until = 0;
      if ((++served & 63) == 0 && mono_ns() - start > READER_SLICE_NS) break;
      continue;
    }
    if (n == 0) { /* EOF: not expected from /dev/fuse, treat as end */
      ended = true;
      break;
    }
    if (errno == EINTR || errno == ENOENT) continue; /* ENOENT: aborted before we read it */
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      ended = true;
      if (errno != ENODEV) end_errno = errno; /* ENODEV: unmounted */
      break;
    }
    if (served == 0 || status < 0) break;
    long long now = mono_ns();
    if (spin_until == 0) {
      if (now - start > READER_SLICE_NS) break;
      /* The replies of this batch first, then spin (in_poll stays set: a stopReader from a
       * microtask defers the teardown, so the async context stays valid). */
      reader_close_scope(r, cs);
      napi_open_callback_scope(env, resource, r->actx, &cs);
      if (r->stopped) break;
      r->batch_end = now = mono_ns();
      r->end_op = last_op;
      long spin = reader_spin_ns(r, last_op);
      if (spin == 0) break;
      spin_start = now;
      spin_until = now + spin;
      r->box->spins++;
    } else if (now >= spin_until) {
      r->box->spin_ns += (double)(now - spin_start);
      break;
    }
  }
  if (!ended && status < 0) {
    ended = true;
    end_errno = -status;
    end_syscall = "uv_poll";
  }

  if (ended && !r->stopped) {
    napi_value on_end, arg;
    napi_get_reference_value(env, r->end_ref, &on_end);
    if (end_errno) arg = make_sys_error(env, end_errno, end_syscall, NULL, NULL);
    else napi_get_null(env, &arg);
    reader_stop(r); /* deferred teardown: still in_poll */
    call_js(env, on_end, 1, &arg, "onEnd");
  }

  r->in_poll = false;
  reader_close_scope(r, cs); /* runs nextTicks / microtasks */
  if (r->stopped) reader_teardown(r, false);
  napi_close_handle_scope(env, hs);
}

/* startReader(fd, buf, onRequest, onEnd): handle */
static napi_value fn_startReader(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t fd;
  char *data;
  size_t size;
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_buffer(env, argv[1], &data, &size));
  TRY(arg_function(env, argv[2]));
  TRY(arg_function(env, argv[3]));
  if (size == 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "buffer must not be empty");
    return NULL;
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
    return throw_sys(env, errno, "fcntl", NULL);

  struct uv_loop_s *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
    napi_throw_error(env, NULL, "no event loop");
    return NULL;
  }
  reader_t *r = calloc(1, sizeof *r);
  /* (the gaps start at 0: the shortest spin, until the callers show theirs) */
  reader_box *box = calloc(1, sizeof *box);
  if (!r || !box) {
    free(r);
    free(box);
    return throw_sys(env, ENOMEM, "startReader", NULL);
  }
  int rc = uv_poll_init(loop, &r->poll, fd);
  if (rc < 0) {
    free(r);
    free(box);
    return throw_sys(env, -rc, "uv_poll_init", NULL);
  }
  r->poll.data = r;
  r->env = env;
  r->fd = fd;
  r->data = data;
  r->size = size;
  r->box = box;
  box->r = r;

  napi_value handle, name;
  napi_create_external(env, box, box_finalize, NULL, &handle);
  napi_create_reference(env, argv[1], 1, &r->buf_ref);
  napi_create_reference(env, argv[2], 1, &r->req_ref);
  napi_create_reference(env, argv[3], 1, &r->end_ref);
  napi_create_reference(env, handle, 1, &r->handle_ref);
  napi_create_string_utf8(env, "strata:FuseReader", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, handle, name, &r->actx);
  napi_add_env_cleanup_hook(env, reader_cleanup_hook, r);

  rc = uv_poll_start(&r->poll, UV_READABLE, reader_on_poll);
  if (rc < 0) {
    reader_stop(r);
    return throw_sys(env, -rc, "uv_poll_start", NULL);
  }
  return handle;
}

/* The reader box behind a handle of startReader; NULL (a TypeError thrown) for anything else. */
static reader_box *arg_reader(napi_env env, napi_value v) {
  napi_valuetype t;
  void *p;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
      napi_get_value_external(env, v, &p) != napi_ok)
    return type_error(env, "expected a reader handle"), NULL;
  return p;
}

/* readerSpins(handle): [spins, spins that caught a request, milliseconds spun] */
static napi_value fn_readerSpins(napi_env env, napi_callback_info info) {
  ARGS(1);
  reader_box *box = arg_reader(env, argv[0]);
  if (!box) return NULL;
  napi_value arr, v;
  napi_create_array_with_length(env, 3, &arr);
  double vals[3] = {box->spins, box->caught, box->spin_ns / 1e6};
  for (uint32_t i = 0; i < 3; i++) {
    napi_create_double(env, vals[i], &v);
    napi_set_element(env, arr, i, v);
  }
  return arr;
}

/* stopReader(handle): idempotent */
static napi_value fn_stopReader(napi_env env, napi_callback_info info) {
  ARGS(1);
  reader_box *box = arg_reader(env, argv[0]);
  if (!box) return NULL;
  if (box->r) reader_stop(box->r);
  return ret_undef(env);
}

/* ------------------------------------------------------------------ */
/* process credentials / limits                                        */
/* ------------------------------------------------------------------ */

/* warmTree(fd, maxDirs): on the thread pool, walks the tree below the directory `fd` depth first (as
 * find -xdev does: not into other filesystems, and symlinks are not followed), reading each directory
 * and lstat'ing its entries, until maxDirs directories are read:
 * read-ahead of a tree for a walk that comes after, nothing more (what it reads is not kept). Takes
 * `fd` (closes it; O_PATH will do). Resolves with the number of directories read. */
struct warm_job {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  int max_dirs;
  int dirs;
  dev_t dev;
};

enum { WARM_BUF = 32 * 1024, WARM_DEPTH = 48 };
/* Set by warmCancel: read-aheads under way stop at their next directory (the daemon is ending). */
static _Atomic int warm_cancelled;

/* Reads the directory `dir` (closed here) and, below it, its subdirectories, depth first. */
static void warm_walk(struct warm_job *j, int dir, int depth) {
  char *buf = malloc(WARM_BUF);
  j->dirs++;
  while (buf) {
    ssize_t n = NOINTR(getdents64(dir, buf, WARM_BUF));
    if (n <= 0) break;
    for (ssize_t pos = 0; pos < n;) {
      struct dirent64 *d = (struct dirent64 *)(buf + pos);
      pos += d->d_reclen;
      const char *nm = d->d_name;
      if (nm[0] == '.' && (nm[1] == 0 || (nm[1] == '.' && nm[2] == 0))) continue;
      struct stat st;
      if (fstatat(dir, nm, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode) || st.st_dev != j->dev) continue;
      if (depth + 1 >= WARM_DEPTH || j->dirs >= j->max_dirs || warm_cancelled) continue;
      int sub = NOINTR(openat(dir, nm, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (sub >= 0) warm_walk(j, sub, depth + 1);
    }
  }
  free(buf);
  close(dir);
}

/* The directory `fd` (which may be O_PATH) opened for reading; `fd` is closed. -1 when it cannot be. */
static int open_dir_through(int fd) {
  int dir = NOINTR(openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  close(fd);
  return dir;
}

static void warm_execute(napi_env env, void *data) {
  (void)env;
  struct warm_job *j = data;
  int dir = open_dir_through(j->fd);
  if (dir < 0) return;
  struct stat st;
  if (fstat(dir, &st) != 0) {
    close(dir);
    return;
  }
  j->dev = st.st_dev;
  warm_walk(j, dir, 0);
}

static void warm_complete(napi_env env, napi_status status, void *data) {
  struct warm_job *j = data;
  napi_value v;
  napi_create_int32(env, status == napi_ok ? j->dirs : -1, &v);
  napi_resolve_deferred(env, j->deferred, v);
  napi_delete_async_work(env, j->work);
  free(j);
}

/* warmCancel(): stops every read-ahead under way, and any started later, at its next directory. */
static napi_value fn_warmCancel(napi_env env, napi_callback_info info) {
  (void)info;
  warm_cancelled = 1;
  return ret_undef(env);
}

/* Queues `execute` (on the thread pool) and `complete` for `data`, whose async work and deferred are
 * `work` and `deferred`; *promise is what `complete` resolves. False when nothing could be queued. */
static bool queue_job(napi_env env, const char *name, napi_async_execute_callback execute,
                      napi_async_complete_callback complete, void *data, napi_async_work *work,
                      napi_deferred *deferred, napi_value *promise) {
  napi_value resource;
  napi_create_promise(env, deferred, promise);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource);
  return napi_create_async_work(env, NULL, resource, execute, complete, data, work) == napi_ok &&
         napi_queue_async_work(env, *work) == napi_ok;
}

static napi_value fn_warmTree(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd, max_dirs;
  TRY(arg_i32(env, argv[0], &fd));
  TRY(arg_i32(env, argv[1], &max_dirs));
  struct warm_job *j = calloc(1, sizeof *j);
  if (!j) {
    close(fd);
    return throw_sys(env, ENOMEM, "warmTree", NULL);
  }
  j->fd = fd;
  j->max_dirs = max_dirs;
  napi_value promise;
  if (!queue_job(env, "strata:warmTree", warm_execute, warm_complete, j, &j->work, &j->deferred, &promise)) {
    close(fd);
    free(j);
    return throw_sys(env, ENOMEM, "warmTree", NULL);
  }
  return promise;
}

/* readAheadFiles(fd, after, maxFiles, maxBytes, maxSize): on the thread pool, starts the disk reads
 * (readahead(2), which does not wait for them) of the regular files of the directory `fd` that come
 * after the entry `after` in its listing order (all of them for ""), each of 1 to maxSize bytes, until
 * maxFiles files or maxBytes bytes: read-ahead of the files a reader of the directory opens next
 * (nothing is kept but the page cache). Symlinks are not followed, only regular files are opened.
 * Takes `fd` (closes it; O_PATH will do). Resolves with the number of files read ahead. */
struct files_job {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  char *after;
  int max_files;
  int64_t max_bytes;
  int64_t max_size;
  int files;
};

static void files_execute(napi_env env, void *data) {
  (void)env;
  struct files_job *j = data;
  int dir = open_dir_through(j->fd);
  if (dir < 0) return;
  char *buf = malloc(WARM_BUF);
  int started = j->after[0] == 0;
  int64_t bytes = 0;
  while (buf && j->files < j->max_files && bytes < j->max_bytes && !warm_cancelled) {
    ssize_t n = NOINTR(getdents64(dir, buf, WARM_BUF));
    if (n <= 0) break;
    for (ssize_t pos = 0; pos < n && j->files < j->max_files && bytes < j->max_bytes;) {
      struct dirent64 *d = (struct dirent64 *)(buf + pos);
      pos += d->d_reclen;
      if (!started) {
        started = strcmp(d->d_name, j->after) == 0;
        continue;
      }
      if (d->d_type != DT_REG && d->d_type != DT_UNKNOWN) continue;
      /* (a filesystem that does not give types: nothing but a regular file is opened, since the open of a
       * device node can act on the device) */
      struct stat lst;
      if (d->d_type == DT_UNKNOWN && (fstatat(dir, d->d_name, &lst, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(lst.st_mode))) continue;
      int f = NOINTR(openat(dir, d->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
      if (f < 0) continue;
      struct stat st;
      if (fstat(f, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 && st.st_size <= j->max_size) {
        readahead(f, 0, (size_t)st.st_size);
        j->files++;
        bytes += st.st_size;
      }
      close(f);
    }
  }
  free(buf);
  close(dir);
}

static void files_complete(napi_env env, napi_status status, void *data) {
  struct files_job *j = data;
  napi_value v;
  napi_create_int32(env, status == napi_ok ? j->files : -1, &v);
  napi_resolve_deferred(env, j->deferred, v);
  napi_delete_async_work(env, j->work);
  free(j->after);
  free(j);
}

static napi_value fn_readAheadFiles(napi_env env, napi_callback_info info) {
  ARGS(5);
  int32_t fd, max_files;
  int64_t max_bytes, max_size;
  char name_buf[NAMEBUF];
  TRY(arg_i32(env, argv[0], &fd));
  if (!arg_name(env, argv[1], name_buf, "readAheadFiles") || !arg_i32(env, argv[2], &max_files) ||
      !arg_i64(env, argv[3], &max_bytes) || !arg_i64(env, argv[4], &max_size)) {
    close(fd);
    return NULL;
  }
  char *after = strdup(name_buf);
  struct files_job *j = after ? calloc(1, sizeof *j) : NULL;
  if (!j) {
    close(fd);
    free(after);
    return throw_sys(env, ENOMEM, "readAheadFiles", NULL);
  }
  j->fd = fd;
  j->after = after;
  j->max_files = max_files;
  j->max_bytes = max_bytes;
  j->max_size = max_size;
  napi_value promise;
  if (!queue_job(env, "strata:readAheadFiles", files_execute, files_complete, j, &j->work, &j->deferred, &promise)) {
    close(fd);
    free(after);
    free(j);
    return throw_sys(env, ENOMEM, "readAheadFiles", NULL);
  }
  return promise;
}

/* threadInblock(): blocks this thread has had read from a disk (getrusage RUSAGE_THREAD ru_inblock):
 * it moves when a system call had to wait for the disk, never for what a cache served. */
static napi_value fn_threadInblock(napi_env env, napi_callback_info info) {
  (void)info;
  struct rusage ru;
  if (getrusage(RUSAGE_THREAD, &ru) != 0) return throw_sys(env, errno, "getrusage", NULL);
  return ret_num(env, (double)ru.ru_inblock);
}

/* setNofileLimit(n): soft limit now in effect */
static napi_value fn_setNofileLimit(napi_env env, napi_callback_info info) {
  ARGS(1);
  int64_t want;
  TRY(arg_i64(env, argv[0], &want));
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return throw_sys(env, errno, "getrlimit", NULL);
  rlim_t n = want < 0 ? 0 : (rlim_t)want;
  if (n > rl.rlim_max && geteuid() == 0) {
    struct rlimit up = {n, n};
    if (setrlimit(RLIMIT_NOFILE, &up) == 0) return ret_num(env, (double)n);
    /* capped by fs.nr_open: try that */
    FILE *f = fopen("/proc/sys/fs/nr_open", "re");
    unsigned long nr = 0;
    if (f) {
      if (fscanf(f, "%lu", &nr) != 1) nr = 0;
      fclose(f);
    }
    if (nr > rl.rlim_max && nr < n) {
      up.rlim_cur = up.rlim_max = nr;
      if (setrlimit(RLIMIT_NOFILE, &up) == 0) return ret_num(env, (double)nr);
    }
  }
  rl.rlim_cur = n < rl.rlim_max ? n : rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) < 0) return throw_sys(env, errno, "setrlimit", NULL);
  return ret_num(env, (double)rl.rlim_cur);
}

static napi_value fn_getuid(napi_env env, napi_callback_info info) { return ret_num(env, getuid()); }
static napi_value fn_getgid(napi_env env, napi_callback_info info) { return ret_num(env, getgid()); }
static napi_value fn_geteuid(napi_env env, napi_callback_info info) { return ret_num(env, geteuid()); }

/* umask(mask): previous mask */
static napi_value fn_umask(napi_env env, napi_callback_info info) {
  ARGS(1);
  uint32_t mask;
  TRY(arg_u32(env, argv[0], &mask));
  return ret_num(env, umask(mask & 0777));
}

/* setfsuid(uid) / setfsgid(gid): previous value (thread-local credential) */
static napi_value fn_setfsuid(napi_env env, napi_callback_info info) {
  ARGS(1);
  uint32_t id;
  TRY(arg_id(env, argv[0], &id));
  return ret_num(env, (uint32_t)setfsuid(id));
}

static napi_value fn_setfsgid(napi_env env, napi_callback_info info) {
  ARGS(1);
  uint32_t id;
  TRY(arg_id(env, argv[0], &id));
  return ret_num(env, (uint32_t)setfsgid(id));
}

/* ------------------------------------------------------------------ */
/* constants and module init                                           */
/* ------------------------------------------------------------------ */

typedef struct {
  const char *name;
  double value;
} constant;

#define K(x) {#x, (double)(x)}

static const constant k_constants[] = {
    K(AT_FDCWD), K(AT_SYMLINK_NOFOLLOW), K(AT_REMOVEDIR), K(AT_EMPTY_PATH), K(AT_SYMLINK_FOLLOW),
    K(O_RDONLY), K(O_WRONLY), K(O_RDWR), K(O_CREAT), K(O_EXCL), K(O_TRUNC),
    K(O_APPEND), K(O_NONBLOCK), K(O_DIRECTORY), K(O_NOFOLLOW), K(O_CLOEXEC),
    K(O_PATH), K(O_NOATIME), K(O_TMPFILE), K(O_DSYNC), K(O_SYNC), K(O_DIRECT),
    {"O_LARGEFILE", KERNEL_O_LARGEFILE},
    K(RESOLVE_BENEATH), K(RESOLVE_NO_MAGICLINKS), K(RESOLVE_NO_SYMLINKS),
    K(RESOLVE_NO_XDEV), K(RESOLVE_IN_ROOT),
    K(RENAME_NOREPLACE), K(RENAME_EXCHANGE), K(RENAME_WHITEOUT),
    K(POSIX_FADV_WILLNEED), K(POSIX_FADV_SEQUENTIAL), K(POSIX_FADV_DONTNEED),
    K(UTIME_NOW), K(UTIME_OMIT),
    K(S_IFMT), K(S_IFREG), K(S_IFDIR), K(S_IFLNK), K(S_IFCHR), K(S_IFBLK),
    K(S_IFIFO), K(S_IFSOCK),
    K(XATTR_CREATE), K(XATTR_REPLACE),
    K(SEEK_SET), K(SEEK_CUR), K(SEEK_END), K(SEEK_DATA), K(SEEK_HOLE),
    K(FALLOC_FL_KEEP_SIZE), K(FALLOC_FL_PUNCH_HOLE), K(FALLOC_FL_ZERO_RANGE),
    K(MS_RDONLY), K(MS_NOSUID), K(MS_NODEV), K(MS_NOEXEC), K(MS_NOATIME), K(MS_BIND),
    K(MS_REMOUNT), K(MS_RELATIME), K(MS_STRICTATIME), K(MS_NODIRATIME),
    K(OPEN_TREE_CLONE), K(OPEN_TREE_CLOEXEC), K(MOUNT_ATTR__ATIME), K(MOUNT_ATTR_RELATIME),
    K(MOUNT_ATTR_NOATIME), K(MOUNT_ATTR_STRICTATIME), K(MOUNT_ATTR_NODIRATIME), K(MOUNT_ATTR_IDMAP),
    K(MNT_DETACH), K(MNT_FORCE), K(UMOUNT_NOFOLLOW),
    K(DT_UNKNOWN), K(DT_FIFO), K(DT_CHR), K(DT_DIR), K(DT_BLK), K(DT_REG),
    K(DT_LNK), K(DT_SOCK),
    K(STATX_BASIC_STATS), K(MAX_HANDLE_SZ),
};

static const constant k_errnos[] = {
    K(ENOENT), K(EEXIST), K(ENOTDIR), K(EISDIR), K(ENOTEMPTY), K(EXDEV),
    K(EPERM), K(EACCES), K(EINVAL), K(ENOSYS), K(EIO), K(ENODATA), K(ERANGE),
    K(ENAMETOOLONG), K(EROFS), K(ELOOP), K(EBADF), K(ENOTSUP), K(EOPNOTSUPP),
    K(EAGAIN), K(EINTR), K(ENODEV), K(EMLINK), K(ENOSPC), K(EFBIG), K(ENXIO),
    K(ESPIPE), K(EOVERFLOW), K(ETXTBSY), K(EBUSY), K(E2BIG), K(EFAULT),
    K(EMFILE), K(ENFILE), K(ESTALE), K(ENOTTY), K(ECONNREFUSED),
};

static napi_value make_constants(napi_env env, const constant *k, size_t n) {
  napi_value o;
  napi_create_object(env, &o);
  for (size_t i = 0; i < n; i++) set_num(env, o, k[i].name, k[i].value);
  return o;
}

/* lowMemory(): a full collection that gives the freed memory back (low_memory.cc). */
void strata_low_memory_notification(void);
static napi_value fn_lowMemory(napi_env env, napi_callback_info info) {
  (void)info;
  strata_low_memory_notification();
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

#define FN(name) {#name, fn_##name}

static const struct {
  const char *name;
  napi_callback cb;
} k_functions[] = {
    FN(fstatat), FN(fstat), FN(statx), FN(lstatMaybe),
    FN(openat), FN(openat2), FN(close), FN(dup), FN(dup2), FN(pipe), FN(readlinkat), FN(readdir),
    FN(mkdirat), FN(mknodat), FN(symlinkat), FN(linkat), FN(unlinkat), FN(renameat2),
    FN(fchownat), FN(fchown), FN(fchmod), FN(fchmodat), FN(utimensat), FN(futimens),
    FN(ftruncate), FN(truncateFile), FN(fsync), FN(fdatasync), FN(syncfs), FN(fallocate), FN(lseek),
    FN(pread), FN(pwrite), FN(copyFileRange), FN(sendfile), FN(fadvise), FN(ficlone), FN(ioctlBuf),
    FN(lgetxattr), FN(lsetxattr), FN(llistxattr), FN(lremovexattr),
    FN(fgetxattr), FN(fsetxattr), FN(flistxattr), FN(fremovexattr),
    {"_forceXattrFallback", fn_forceXattrFallback},
    FN(fstatfs), FN(mount), FN(umount2), FN(openTree), FN(openTreeAttr), FN(mountSetattr), FN(statxBtime), FN(statxAttributes),
    FN(nameToHandleAt), FN(openByHandleAt), FN(fsUuid),
    FN(openFuseDevice), FN(ioctlClone), FN(backingOpen), FN(backingClose), FN(writeReply),
    FN(startReader), FN(stopReader), FN(readerSpins),
    FN(setNofileLimit), FN(warmTree), FN(readAheadFiles), FN(warmCancel), FN(threadInblock), FN(getuid), FN(getgid), FN(geteuid), FN(umask),
    FN(setfsuid), FN(setfsgid), FN(lowMemory),
};

static napi_value init(napi_env env, napi_value exports) {
  for (size_t i = 0; i < sizeof k_functions / sizeof k_functions[0]; i++) {
    napi_value fn;
    if (napi_create_function(env, k_functions[i].name, NAPI_AUTO_LENGTH, k_functions[i].cb,
                             NULL, &fn) != napi_ok)
      return NULL;
    napi_set_named_property(env, exports, k_functions[i].name, fn);
  }
  napi_value c = make_constants(env, k_constants, sizeof k_constants / sizeof k_constants[0]);
  napi_set_named_property(env, c, "errno",
                          make_constants(env, k_errnos, sizeof k_errnos / sizeof k_errnos[0]));
  napi_set_named_property(env, exports, "constants", c);
  return exports;
}

NAPI_MODULE_INIT() { return init(env, exports); }
