#!/usr/bin/env bash
# The node demo (scripts/demo.sh runs it, then the cluster demo; needs root):
# starts a throwaway containerd 2.x and registry, pushes demo images, warms
# them with progress, then shows the node exactly as a kubelet pull leaves it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
RUN="$ROOT/.run/demo"

bash scripts/setup.sh >/dev/null
# The dev profile: the same binary the test suite builds, so after the tests
# (as in .ci/run) this costs nothing; pulls are paced below anyway.
echo "== building prewarm"
cargo build --locked --quiet
PREWARM="$ROOT/target/debug/prewarm"

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
[ "${#IMAGES[@]}" -ge 3 ] || { echo "pushing the demo images failed"; exit 1; }
printf '   %s\n' "${IMAGES[@]}"

NOW=("${IMAGES[@]:0:2}")
LATER=("${IMAGES[@]:2}")
echo "== warming ${#NOW[@]} of them now through containerd (paced at 8 MiB/s so the progress is visible)"
"$PREWARM" pull --socket "$SOCKET" --root "$CTD_ROOT" --hosts-dir "$HOSTS_DIR" \
  --bandwidth 8MiB --disk-floor 5% --pin "${NOW[@]}"

echo "== the CRI image store now holds them (what the kubelet sees), pinned:"
"$CTR" -a "$SOCKET" -n k8s.io images ls | awk 'NR==1 || /demo\/[a-z]+:1.0/ {printf "%-40s %s\n", $1, $NF}'
echo "== unpacked for the overlayfs snapshotter:"
"$CTR" -a "$SOCKET" -n k8s.io snapshots --snapshotter overlayfs ls | head -5
echo "== a second run moves nothing:"
"$PREWARM" pull --socket "$SOCKET" --root "$CTD_ROOT" --hosts-dir "$HOSTS_DIR" --pin "${NOW[@]}" | tail -1

# An activation window opening 30 s from now (6-field cron, UTC), with a
# 15 s lead time: the agent warms the other images ahead of it.
OPENS=$(( $(date +%s) + 30 ))
SCHEDULE="$(date -u -d "@$OPENS" '+%-S %-M %-H %-d %-m *')"
cat >"$RUN/agent.yaml" <<YAML
runtime: { socket: $SOCKET, root: $CTD_ROOT }
state: { path: $RUN/learned.json }
registry: { dockerConfig: [], hostsDir: $HOSTS_DIR }
pacing: { diskFloor: 5%, bandwidth: 8MiB }
resync: 60s
images:
  - image: ${NOW[0]}
windows:
  - name: demo-window
    schedule: "$SCHEDULE"
    timezone: UTC
    duration: 20s
    leadTime: 15s
    grace: 5s
    nodeSelector: { kubernetes.azure.com/agentpool: integrations }
    images: [ $(IFS=,; echo "${LATER[*]}") ]
YAML
echo "== the agent, with a window opening at $(date -u -d "@$OPENS" +%H:%M:%S) UTC for: ${LATER[*]}"
"$PREWARM" plan --config "$RUN/agent.yaml" --node-labels kubernetes.azure.com/agentpool=integrations | sed -n '4,9p'
"$PREWARM" agent --config "$RUN/agent.yaml" --listen 127.0.0.1:19464 \
  --node-labels kubernetes.azure.com/agentpool=integrations 2>"$RUN/agent.log" &
AGENT=$!
# Metrics are read with awk only: a scrape that fails or lacks a series
# yields "?" instead of failing the pipeline (set -o pipefail).
scrape() { curl -sf --max-time 2 http://127.0.0.1:19464/metrics 2>/dev/null || true; }
metric() { scrape | awk -v m="$1" '$1 == m {v = $2} END {print (v == "" ? "?" : v)}'; }
phase() {
  scrape | awk '$1 ~ /^prewarm_window_phase\{/ && /window="demo-window"/ && $2 == 1 {
    if (match($1, /phase="[a-z]+"/)) p = substr($1, RSTART + 7, RLENGTH - 8)
  } END {print (p == "" ? "?" : p)}'
}
# The agent serves /healthz once it has loaded its config; give it 20 s.
for _ in $(seq 100); do
  curl -sf --max-time 1 http://127.0.0.1:19464/healthz >/dev/null 2>&1 && break
  kill -0 "$AGENT" 2>/dev/null || { echo "the agent exited:"; cat "$RUN/agent.log"; exit 1; }
  sleep 0.2
done
curl -sf --max-time 1 http://127.0.0.1:19464/healthz >/dev/null || { echo "the agent is not serving:"; cat "$RUN/agent.log"; exit 1; }
while :; do
  left=$(( OPENS - $(date +%s) ))
  printf '   t-%3ss  phase=%-8s warm=%s  pulled=%s bytes\n' "$left" "$(phase)" \
    "$(metric 'prewarm_window_warm{window="demo-window"}')" "$(metric prewarm_pulled_bytes_total)"
  [ "$left" -le -3 ] && break
  sleep 3
done
lead="$(metric 'prewarm_window_lead_seconds{window="demo-window"}')"
echo "   lead achieved: $lead s before the window opened"
scrape | awk '/^prewarm_(images_|runtime_|window_late)/'
# The demo is also a check (.ci/run runs it): the window must have been warm
# before it opened.
if [ "$(metric 'prewarm_window_warm{window="demo-window"}')" != 1 ] || ! awk -v l="$lead" 'BEGIN {exit !(l + 0 > 0)}'; then
  echo "demo FAILED: the window's images were not warm before it opened; agent log:"; tail -20 "$RUN/agent.log"; exit 1
fi
echo "== done; everything is torn down on exit"
