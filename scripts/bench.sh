#!/usr/bin/env bash
# Runs the pull benchmark (benches/pull.rs) with the release profile and saves
# its Markdown tables. Needs root (containerd). Environment knobs are passed
# through: PREWARM_BENCH_CONTAINERD (2 | 1.7), PREWARM_BENCH_IMAGES,
# PREWARM_BENCH_BYTES, PREWARM_BENCH_RUNS.
#
# Results go between the markers in benches/README.md for a default run
# (containerd 2.x, default corpus and runs); any other run is written to
# benches/results-<date>[-containerd-1.7].md instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS="${PREWARM_TOOLS:-$ROOT/.tools}"

if [ ! -x "$TOOLS/containerd-sid/usr/bin/containerd" ] ||
  [ ! -x "$TOOLS/containerd-trixie/usr/bin/containerd" ] ||
  [ ! -x "${PREWARM_REGISTRY_BIN:-/usr/bin/docker-registry}" ]; then
  scripts/setup.sh
fi

# The agent footprint runs the real binary.
cargo build --release --bin prewarm

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
cargo bench --bench pull | tee "$out"

readme=benches/README.md
start='<!-- bench-results:start -->'
end='<!-- bench-results:end -->'
custom="${PREWARM_BENCH_IMAGES:-}${PREWARM_BENCH_BYTES:-}${PREWARM_BENCH_RUNS:-}"
version="${PREWARM_BENCH_CONTAINERD:-2}"
if [ -z "$custom" ] && [[ "$version" == 2* ]] && grep -qF "$start" "$readme"; then
  {
    awk -v start="$start" '{ print } $0 == start { exit }' "$readme"
    printf '\n_Recorded %s by `scripts/bench.sh`._\n\n' "$(date -u +%Y-%m-%d)"
    cat "$out"
    printf '\n'
    awk -v end="$end" '$0 == end { found = 1 } found { print }' "$readme"
  } >"$readme.new"
  mv "$readme.new" "$readme"
  echo "bench: results written to $readme" >&2
else
  suffix=""
  [[ "$version" == 2* ]] || suffix="-containerd-$version"
  dest="benches/results-$(date -u +%Y-%m-%d)$suffix.md"
  cp "$out" "$dest"
  echo "bench: results written to $dest" >&2
fi
