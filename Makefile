# strata: build, test, demo, install. `make test` installs everything it needs.
SHELL := /bin/bash
NODE ?= $(shell command -v node)
PREFIX ?= /usr/local
SBINDIR ?= /sbin
ROOT := $(abspath .)
ADDON := native-bindings/build/Release/strata_native.node
# Node's own headers (installed with node): node-gyp then needs no download.
NODE_PREFIX := $(shell $(NODE) -p "require('path').resolve(process.execPath, '../..')")
APT_PACKAGES := attr acl e2fsprogs zstd fuse3 python3 python3-venv git kmod podman runc busybox-static debootstrap skopeo umoci strace util-linux-extra docker-registry apache2-utils

.PHONY: all deps system-deps build native ts demo test soak bench bench-cache bench-images longrun rootfs install uninstall clean

all: build

# npm packages (lockfile-exact when a lockfile exists).
node_modules/.package-lock.json: package.json
	npm install --no-audit --no-fund
	@touch $@
deps: node_modules/.package-lock.json

# Debian packages the tests use (setfattr/getfattr for fixtures, fusermount3, python3 for readdir checks,
# git and python3-venv for the real-program tests, podman/runc/busybox-static for the podman test,
# debootstrap for the Debian rootfs, strace to see when a copy-up syncs, fincore (util-linux-extra)
# to see what the page cache holds), zstd for zstd-compressed image layers).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null; fi
	@modprobe fuse 2>/dev/null || true; modprobe overlay 2>/dev/null || true

$(ADDON): native-bindings/strata_native.c native-bindings/low_memory.cc native-bindings/binding.gyp | deps
	cd native-bindings && ../node_modules/.bin/node-gyp rebuild --nodedir=$(NODE_PREFIX) >/dev/null
native: $(ADDON)

# The compiled modules (dist/src, dist/test: the tests import them), then the command bundled from
# them into one CommonJS file, dist/src/bundle/strata.cjs, which scripts/load.cjs runs with V8's
# code cache (the daemon's start reads two files instead of some forty modules, and a later start
# skips compiling what earlier commands compiled). External dynamic imports become require();
# import.meta.url becomes the bundle's URL. A new build starts without a code cache.
# Packages left out of the bundle (worker files, ES-module-only ones, those loaded only by other
# commands). yargs is bundled: required from node_modules it is an ES module graph that took 90-130 ms
# to load on every command; so is LevelDB's JavaScript (scripts/bundle.mjs).
BUNDLE_EXTERNAL = pino tar-stream cli-progress vega vega-lite @resvg/resvg-js
ts: deps
	./node_modules/.bin/tsc -p tsconfig.json
	rm -rf dist/src/bundle
	node scripts/bundle.mjs $(BUNDLE_EXTERNAL)
	cp scripts/load.cjs dist/src/bundle/load.cjs

# The command: a small C launcher that runs node on the compiled CLI (one Node.js process for a
# background mount: see scripts/launcher.c).
CC ?= cc
bin/strata: scripts/launcher.c Makefile
	@mkdir -p bin
	$(CC) -O2 -Wall -o $@ -DSTRATA_NODE='"$(NODE)"' -DSTRATA_MAIN='"$(ROOT)/dist/src/bundle/load.cjs"' $<

# What `strata run` execs as the container's pid 1: chroot, working directory, groups, gid, uid,
# then the command (see scripts/run-exec.c).
bin/strata-run-exec: scripts/run-exec.c scripts/join_cgroup.h
	@mkdir -p bin
	$(CC) -O2 -Wall -o $@ $<

# The container's namespaces for `strata run`: pid 1 in a child, its status passed on (see scripts/run-ns.c).
bin/strata-run-ns: scripts/run-ns.c scripts/join_cgroup.h
	@mkdir -p bin
	$(CC) -O2 -Wall -o $@ $<

bin/mount.fuse.strata: scripts/mount.fuse.strata.sh
	@mkdir -p bin
	sed -e 's|@ROOT@|$(ROOT)|' scripts/mount.fuse.strata.sh > $@
	chmod 755 $@

build: native ts bin/strata bin/strata-run-exec bin/strata-run-ns bin/mount.fuse.strata

demo: build
	bash scripts/demo.sh

# (the Debian rootfs first: the image tests take its bottom layer, and may start before rootfs.test.ts builds it)
test: system-deps build
	-@bash scripts/build-rootfs.sh >/dev/null
	bash scripts/test-run.sh

# The seeded random-operation test (with descriptors, users, the kernel over strata's upper) over many
# seeds: 200 seeds x 1000 ops by default (hours), e.g. make soak SOAK_LAST=20 SOAK_OPS=300.
# Failing seeds and their repro commands are listed at the end (logs in .cache/soak).
SOAK_FIRST ?= 1
SOAK_LAST ?= 200
SOAK_OPS ?= 1000
soak: system-deps build
	NO_BUILD=1 STRATA_OPS=$(SOAK_OPS) bash scripts/soak.sh $(SOAK_FIRST) $(SOAK_LAST)

# strata against the kernel's overlayfs and fuse-overlayfs: `strata bench` (see README), e.g.
# make bench BENCH_ARGS="--runs 5 --out docs/bench"
# (fuse-overlayfs, the peer, is installed for it)
bench: build
	@dpkg -s fuse-overlayfs >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse-overlayfs) >/dev/null
	node dist/src/cli/main.js bench $(BENCH_ARGS)

# The metadata cache against the kernel and fuse-overlayfs, medians and spreads, e.g.
# make bench-cache BENCH_ARGS="--runs 3 --rootfs L2:L1:L0" (the lowerdir string that `make rootfs` prints)
bench-cache: build
	node dist/scripts/bench-cache.js $(BENCH_ARGS)

# strata image load / commit (100 MiB) / save / export against podman's, same image, same run (needs
# make rootfs and podman), e.g. make bench-images BENCH_ARGS="--runs 5"
bench-images: system-deps build
	node dist/scripts/bench-images.js $(BENCH_ARGS)

# Daemon memory and descriptors over a long run of parallel clients (a measurement, not a test).
longrun: build
	node dist/scripts/longrun.js $(LONGRUN_ARGS)

# A three-layer Debian bookworm rootfs for tests and benchmarks, cached in /var/cache/strata/rootfs
# (STRATA_ROOTFS_DIR); prints its lowerdir string.
rootfs:
	bash scripts/build-rootfs.sh

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SBINDIR)
	ln -sf $(ROOT)/bin/strata $(DESTDIR)$(PREFIX)/bin/strata
	ln -sf $(ROOT)/bin/mount.fuse.strata $(DESTDIR)$(SBINDIR)/mount.fuse.strata

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/strata $(DESTDIR)$(SBINDIR)/mount.fuse.strata

clean:
	rm -rf dist native-bindings/build bin
