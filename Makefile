# dockward: `make run` is the quick start, `make test` runs every test. See README.md.

CARGO ?= cargo
ROUTES ?= examples/routes.yml

.PHONY: build run test bench fmt lint

build:
	$(CARGO) build --workspace

# Forwards 127.0.0.1:8022 to dockward's own admin API (127.0.0.1:7031); try
# `curl http://127.0.0.1:8022/healthz` and `./target/debug/dockward routes` from another terminal.
run:
	$(CARGO) run -p dockward -- run --routes $(ROUTES)

# Every test: unit and end-to-end (nextest when installed, else cargo test), then doc tests,
# which nextest does not run.
test:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --workspace"; $(CARGO) nextest run --workspace; \
	else \
		echo "$(CARGO) test --workspace --all-targets"; $(CARGO) test --workspace --all-targets; \
	fi
	$(CARGO) test --doc --workspace

# Loopback benchmark against direct, HAProxy, nginx stream and socat (bench/README.md); about
# 12 minutes, writes bench/RESULTS.md. BENCH_QUICK=1 for a ~2-minute smoke run.
bench:
	bash bench/run.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
