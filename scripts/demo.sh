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
metric() { curl -s http://127.0.0.1:19464/metrics | awk -v m="$1" '$1 == m {print $2}'; }
while :; do
  left=$(( OPENS - $(date +%s) ))
  phase=$(curl -s http://127.0.0.1:19464/metrics | grep '^prewarm_window_phase{.*demo-window.* 1$' | sed -E 's/.*phase="([a-z]+)".*/\1/')
  printf '   t-%3ss  phase=%-8s warm=%s  pulled=%s bytes\n' "$left" "${phase:-?}" \
    "$(metric 'prewarm_window_warm{window="demo-window"}')" "$(metric prewarm_pulled_bytes_total)"
  [ "$left" -le -3 ] && break
  sleep 3
done
echo "   lead achieved: $(metric 'prewarm_window_lead_seconds{window="demo-window"}') s before the window opened"
curl -s http://127.0.0.1:19464/metrics | grep -E '^prewarm_(images_|runtime_|window_late)'
echo "== done; everything is torn down on exit"
