#!/usr/bin/env bash
# Local demo of prewarm's main job on a fresh Debian machine (needs root):
# starts a throwaway containerd 2.x and registry, pushes demo images, warms
# them with progress, then shows the node exactly as a kubelet pull leaves it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
RUN="$ROOT/.run/demo"

bash scripts/setup.sh >/dev/null
echo "== building prewarm (release)"
cargo build --release --locked --quiet
PREWARM="$ROOT/target/release/prewarm"

rm -rf "$RUN"; mkdir -p "$RUN"
"$PREWARM" testkit up --dir "$RUN" --containerd 2 2>"$RUN/up.log" &
UP=$!
AGENT=""
cleanup() { [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null; kill -INT "$UP" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do [ -f "$RUN/env" ] && break; sleep 0.2; done
[ -f "$RUN/env" ] || { cat "$RUN/up.log"; exit 1; }
# shellcheck disable=SC1091
source "$RUN/env"

echo "== pushing demo images to the registry at $REGISTRY"
mapfile -t IMAGES < <("$PREWARM" testkit push --registry "http://$REGISTRY" --corpus demo)
printf '   %s\n' "${IMAGES[@]}"

echo "== warming them through containerd (paced at 8 MiB/s so the progress is visible)"
"$PREWARM" pull --socket "$SOCKET" --root "$ROOT/.run" --hosts-dir "$HOSTS_DIR" \
  --bandwidth 8MiB --disk-floor 5% --pin "${IMAGES[@]}"

echo "== the CRI image store now holds them (what the kubelet sees), pinned:"
"$CTR" -a "$SOCKET" -n k8s.io images ls | awk 'NR==1 || /demo\/[a-z]+:1.0/ {print $1, $NF}' | column -t
echo "== unpacked for the overlayfs snapshotter:"
"$CTR" -a "$SOCKET" -n k8s.io snapshots --snapshotter overlayfs ls | head -5
echo "== a second run moves nothing:"
"$PREWARM" pull --socket "$SOCKET" --root "$ROOT/.run" --hosts-dir "$HOSTS_DIR" --pin "${IMAGES[@]}" | tail -1

echo "== the agent keeps a config's images warm and exports metrics"
cat >"$RUN/agent.yaml" <<YAML
runtime: { socket: $SOCKET, root: $ROOT/.run }
registry: { dockerConfig: [], hostsDir: $HOSTS_DIR }
pacing: { diskFloor: 5% }
resync: 2s
images:
  - image: ${IMAGES[0]}
  - image: ${IMAGES[1]}
YAML
"$PREWARM" agent --config "$RUN/agent.yaml" --listen 127.0.0.1:19464 2>"$RUN/agent.log" &
AGENT=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:19464/metrics 2>/dev/null | grep -q '^prewarm_images_warm 2' && break; sleep 0.2; done
curl -s http://127.0.0.1:19464/metrics | grep -E '^prewarm_(images_|runtime_|pulls_in_flight)'
echo "== done; everything is torn down on exit"
