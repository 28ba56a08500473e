# Godwit — the commands a developer and CI use. See README.md.
CARGO ?= cargo
# Light, fast test builds; see [profile.dev] in Cargo.toml.
NEXTEST := $(shell cargo nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: all build run test unit e2e bench lint deny fmt deps fuzz fuzz-ci clean image

all: build

build:
	$(CARGO) build --workspace --bins

## run: the service with a local staging server and ./var as its data directory.
run:
	$(CARGO) build --release -p godwit-appliance
	./tests/run-dev.sh

## deps: system and Python packages the tests need (idempotent).
deps:
	bash tests/deps/install.sh

## test: every test, against the real peers (installs them first).
test: deps build
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace --no-fail-fast --profile ci
else
	$(CARGO) test --workspace --no-fail-fast
endif

## bench: ours and the reference side by side, printed as ratios.
bench: deps
	$(CARGO) build --release --workspace --bins
	@for b in tests/bench/*.sh; do echo "== $$b"; bash "$$b" || exit 1; done

## image: the appliance (godwit.ova, godwit.vhdx, SHA256SUMS) in target/image, from a static
## glibc release build of godwit; reproducible (SOURCE_DATE_EPOCH = the last commit's time).
IMAGE_TARGET := x86_64-unknown-linux-gnu
image: deps
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p godwit-appliance --target $(IMAGE_TARGET) --target-dir target/static
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct) target/static/$(IMAGE_TARGET)/release/godwit image build \
	  --out target/image --godwit-bin target/static/$(IMAGE_TARGET)/release/godwit --version $$(git describe --always --dirty)
	cat target/image/SHA256SUMS

## lint: formatting and clippy with warnings denied.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## deny: cargo-deny (deny.toml): licences, duplicate versions, crate sources, and RustSec
## advisories when the advisory database (a git repository on github) can be fetched; when it
## cannot, the other checks still run and the skip is printed.
deny:
	$(CARGO) deny check bans licenses sources
	@if $(CARGO) deny fetch db >/dev/null 2>&1; then $(CARGO) deny --offline check advisories; \
	else echo "deny: advisories NOT checked: the RustSec advisory database could not be fetched"; fi

fmt:
	$(CARGO) fmt --all

## fuzz: a bounded run of every fuzz target (FUZZ_SECONDS each, default 30).
fuzz:
	bash fuzz/run.sh

## fuzz-ci: what CI runs: one coverage-guided build of every target, unoptimised and without
## AddressSanitizer (the optimised sanitizer build is `make fuzz`), then each target for
## FUZZ_CI_SECONDS (default 2) from its committed corpus; a crash or a broken round trip fails CI.
FUZZ_CI_SECONDS ?= 2
fuzz-ci:
	FUZZ_SECONDS=$(FUZZ_CI_SECONDS) FUZZ_BUILD_FLAGS="--dev --sanitizer none" bash fuzz/run.sh

clean:
	$(CARGO) clean
