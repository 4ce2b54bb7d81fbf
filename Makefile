# dockward: `make run` is the quick start, `make test` runs every test. See README.md.

CARGO ?= cargo
ROUTES ?= examples/routes.yml
# More `dockward run` flags for `make run`, e.g. ARGS=--no-docker to serve the routes file only.
ARGS ?=
# Where tests record what they skipped (tests/common/skip.rs); `make test` summarises it.
SKIP_FILE := $(CURDIR)/target/test-skips.log

.PHONY: build run test soak fuzz bench fmt lint

build:
	$(CARGO) build --workspace

# Forwards 127.0.0.1:8022 to dockward's own admin API (127.0.0.1:7031); try
# `curl http://127.0.0.1:8022/healthz` and `./target/debug/dockward routes` from another terminal.
# Also serves the labelled containers of the local Docker engine when one answers;
# `make run ARGS=--no-docker` serves the routes file only.
run:
	$(CARGO) run -p dockward -- run --routes $(ROUTES) $(ARGS)

# Every test: unit and end-to-end (nextest when installed, else cargo test), then doc tests,
# which nextest does not run. Ends with one line naming how many tests skipped for lack of
# Docker, HAProxy, a browser...: nextest hides their SKIP lines. The exit status is the tests'.
test:
	@mkdir -p target; rm -f "$(SKIP_FILE)"; status=0; \
	export DOCKWARD_SKIP_FILE="$(SKIP_FILE)"; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --workspace --no-fail-fast"; $(CARGO) nextest run --workspace --no-fail-fast || status=$$?; \
	else \
		echo "$(CARGO) test --workspace --all-targets --no-fail-fast"; $(CARGO) test --workspace --all-targets --no-fail-fast || status=$$?; \
	fi; \
	if [ $$status -eq 0 ]; then echo "$(CARGO) test --doc --workspace"; $(CARGO) test --doc --workspace || status=$$?; fi; \
	if [ -s "$(SKIP_FILE)" ]; then \
		cut -f1,2 "$(SKIP_FILE)" | sort -u | awk -F'\t' -v file="$(SKIP_FILE)" \
			'{ n++; if (!($$1 in k)) o[++m] = $$1; k[$$1]++ } \
			 END { for (i = 1; i <= m; i++) s = s (i > 1 ? ", " : "") k[o[i]] " " o[i]; \
			       printf "SKIPPED %d test(s) for lack of what they need: %s (names and reasons: %s)\n", n, s, file }'; \
	else \
		echo "SKIPPED none: every test that needs Docker, HAProxy or a browser ran"; \
	fi; \
	exit $$status

# Load without loss and leaks, against a release build (tests/load.rs, tests/docker_faults.rs):
# 10 GiB of checked TCP, 1,000,000 numbered UDP datagrams paced under the lossless rate it
# measures first, then 1,000 start/stop cycles of a labelled container (needs Docker). 5 to 8
# minutes on 2 cores; the normal suite runs short versions of each.
soak:
	$(CARGO) build --release -p dockward
	DOCKWARD_BIN="$$(cd "$${CARGO_TARGET_DIR:-target}" && pwd)/release/dockward" \
		$(CARGO) test --release -p dockward-tests --test load --test docker_faults -- \
		--ignored --test-threads=1 --nocapture

# Fuzz the label parser, the routes-file parser and the PROXY header reader for
# FUZZ_SECONDS each (default 60), outside CI's gate. cargo-fuzz (installed from crates.io when
# missing) runs on the stable toolchain with --sanitizer none; crashes land in
# fuzz/artifacts/<target>/, the growing corpus in fuzz/corpus/<target>/ (both untracked); the
# runs start from fuzz/seeds/<target>/ and, for routes_file, the routes-file fixtures.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= labels routes_file proxy_header
fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$t; seeds=""; \
		if [ -d seeds/$$t ]; then seeds=seeds/$$t; fi; \
		if [ $$t = routes_file ]; then seeds="../tests/fixtures/valid ../tests/fixtures/invalid ../examples"; fi; \
		$(CARGO) fuzz run --sanitizer none $$t corpus/$$t $$seeds -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 || exit 1; \
	done

# Loopback benchmark against direct, HAProxy, nginx stream and socat (bench/README.md); about
# 16 minutes, writes bench/RESULTS.md. BENCH_QUICK=1 for a ~3-minute smoke run. Its wake
# scenario (bench/wake.sh, issue 14) needs Docker and is skipped, saying why, without it; the
# access-log scenario (bench/access-log.sh, issue 16) compares churn with the log on and off.
bench:
	bash bench/run.sh

fmt:
	$(CARGO) fmt --all

# Module cycles: scripts/module_cycles.rs, compiled with plain rustc (no dependency, ~1 s),
# fails when the modules of any crate depend on each other in a cycle.
LINT_DIR = $${CARGO_TARGET_DIR:-target}/lint
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@mkdir -p "$(LINT_DIR)" && rustc --edition 2021 -O scripts/module_cycles.rs -o "$(LINT_DIR)/module_cycles"
	"$(LINT_DIR)/module_cycles" crates/*/src tests/common
