# Godwit — the commands a developer and CI use. See README.md.
CARGO ?= cargo
# Light, fast test builds; see [profile.dev] in Cargo.toml.
NEXTEST := $(shell cargo nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: all build run test unit e2e bench lint fmt deps fuzz clean image

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

fmt:
	$(CARGO) fmt --all

## fuzz: a bounded run of every fuzz target (FUZZ_SECONDS each, default 30).
fuzz:
	bash fuzz/run.sh

clean:
	$(CARGO) clean
