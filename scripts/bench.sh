#!/usr/bin/env bash
# Runs the pull benchmark (benches/pull.rs) with the release profile and saves
# its Markdown tables. Needs root (containerd; the WAN scenario also needs ip
# and tc from iproute2, see scripts/wan-netns.sh). Environment knobs are
# passed through: PREWARM_BENCH_CONTAINERD (2 | 1.7), PREWARM_BENCH_IMAGES,
# PREWARM_BENCH_BYTES, PREWARM_BENCH_RUNS, PREWARM_BENCH_WAN (0 skips WAN).
#
# Results go between the markers in benches/README.md for a default run
# (containerd 2.x, default corpus and runs, WAN scenario on); any other run is
# written to benches/results-<date>[-containerd-1.7].md instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS="${PREWARM_TOOLS:-$ROOT/.tools}"

if [ ! -x "$TOOLS/containerd-sid/usr/bin/containerd" ] ||
  [ ! -x "$TOOLS/containerd-trixie/usr/bin/containerd" ] ||
  [ ! -x "${PREWARM_REGISTRY_BIN:-/usr/bin/docker-registry}" ]; then
  scripts/setup.sh
fi


out="$(mktemp)"
cleanup() {
  rm -f "$out"
  # The bench tears its WAN link down itself; this catches an interrupted
  # run, unless another run holds the link.
  flock -n /run/prewarm-wan.lock scripts/wan-netns.sh down 2>/dev/null || true
}
trap cleanup EXIT
command -v tc >/dev/null ||
  echo "bench: no tc (apt-get install iproute2): the WAN scenario will be skipped" >&2
cargo bench --bench pull | tee "$out"

readme=benches/README.md
start='<!-- bench-results:start -->'
end='<!-- bench-results:end -->'
custom="${PREWARM_BENCH_IMAGES:-}${PREWARM_BENCH_BYTES:-}${PREWARM_BENCH_RUNS:-}"
[ "${PREWARM_BENCH_WAN:-1}" != 0 ] || custom+="nowan"
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
