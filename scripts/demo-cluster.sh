#!/usr/bin/env bash
# The cluster demo (scripts/demo.sh runs it after the node demo; needs root):
# the real `prewarm coordinator` and two real `prewarm agent` processes, each
# agent on its own throwaway containerd, linked over TLS on loopback; the
# coordinator talks through a kubeconfig to the in-memory API server served
# over HTTPS by `prewarm testkit apiserver`, which enforces the shipped RBAC
# and plays the scheduler, kubelet and controllers. It shows a gated pod
# released onto the warm node and a two-member deploy group stepping through
# warm → roll → validate → quiesce → next, with `prewarm status` and
# `prewarm status deploys`, and fails unless both happened.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
RUN="$ROOT/.run/demo-cluster"

bash scripts/setup.sh >/dev/null
echo "== building prewarm"
cargo build --locked --quiet
PREWARM="$ROOT/target/debug/prewarm"

cat <<'TEXT'
== the cluster demo: what is real and what is simulated
   real: the prewarm coordinator and two prewarm agents (node-a, node-b), each
         agent pulling through its own containerd 2.x from a local registry; the
         agents' gRPC link and the cluster view over TLS; TokenReview and
         SubjectAccessReview; RBAC as shipped in daemonset/.
   simulated: there is no kube-apiserver, kubelet, scheduler or controller-manager.
         The API server is prewarm's in-memory one (objects live in memory);
         the demo plays the scheduler (binds a released pod to the node its
         affinity allows), the kubelet (reports pods Running; no container is
         started), the Deployment controller (marks an unpaused Deployment
         rolled out and Ready) and the Job controller (the validation Job
         "succeeds" without running). Nothing scales: KEDA is only a
         ScaledObject whose pause annotation the coordinator sets and removes.
TEXT

rm -rf "$RUN"; mkdir -p "$RUN/tls" "$RUN/api"
PIDS=()
UPS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${UPS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
fail() { echo "demo FAILED: $*"; for l in coordinator node-a node-b apiserver; do echo "--- $l log (tail)"; tail -15 "$RUN/$l.log" 2>/dev/null || true; done; exit 1; }
# Bounded wait for a file: wait_file FILE SECONDS.
wait_file() { for _ in $(seq $(( $2 * 5 ))); do [ -s "$1" ] && return 0; sleep 0.2; done; return 1; }

# A throwaway CA and one serving certificate for 127.0.0.1, used by the API
# server and the coordinator (as cert-manager would issue them).
(
  cd "$RUN/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=prewarm-demo-ca -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=prewarm-coordinator -keyout tls.key -out tls.csr 2>/dev/null
  echo "subjectAltName=IP:127.0.0.1,DNS:localhost" >ext.cnf
  openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out tls.crt 2>/dev/null
)
TLS="$RUN/tls"

echo "== two nodes: a throwaway containerd each (node-a, node-b) and a registry"
for n in a b; do
  "$PREWARM" testkit up --dir "$RUN/$n" --containerd 2 2>"$RUN/up-$n.log" &
  UPS+=($!)
done
for n in a b; do wait_file "$RUN/$n/env" 20 || { cat "$RUN/up-$n.log"; fail "containerd for node-$n did not start"; }; done
envof() { sed -n "s/^$2=//p" "$RUN/$1/env"; }
REGISTRY="$(envof a REGISTRY)"
mapfile -t IMAGES < <("$PREWARM" testkit push --registry "http://$REGISTRY" --corpus demo)
[ "${#IMAGES[@]}" -ge 3 ] || fail "pushing the demo images failed"
GATE_IMAGE="${IMAGES[0]}"
echo "   images at $REGISTRY: ${IMAGES[*]}"

echo "== the in-memory API server on HTTPS (kubeconfig for the coordinator, tokens for the agents and for prewarm status)"
"$PREWARM" testkit apiserver --dir "$RUN/api" --tls-cert "$TLS/tls.crt" --tls-key "$TLS/tls.key" \
  --ca-file "$TLS/ca.crt" --gate-image "$GATE_IMAGE" \
  --deploy-image "${IMAGES[1]}" --deploy-image "${IMAGES[2]}" 2>"$RUN/apiserver.log" &
API=$!
PIDS+=("$API")
wait_file "$RUN/api/env" 20 || fail "the API server did not start"
# shellcheck disable=SC1091
source "$RUN/api/env"
echo "   $APISERVER: nodes node-a and node-b (pool integrations), Deployments demo/orders-api and"
echo "   demo/billing-api (paused), DeployGroup demo/integrations, ScaledObject demo/orders-api"

echo "== the coordinator (TLS link on 127.0.0.1:27443, authenticated view on 127.0.0.1:27444)"
KUBECONFIG="$KUBECONFIG" "$PREWARM" coordinator --grpc-listen 127.0.0.1:27443 \
  --https-listen 127.0.0.1:27444 --http-listen 127.0.0.1:27465 \
  --tls-cert "$TLS/tls.crt" --tls-key "$TLS/tls.key" --tls-ca "$TLS/ca.crt" \
  --http-check-allow-host localhost 2>"$RUN/coordinator.log" &
PIDS+=($!)

echo "== two agents linked to it; only node-a's config keeps $GATE_IMAGE warm"
for n in a b; do
  images="[]"
  [ "$n" = a ] && images="[ { image: $GATE_IMAGE } ]"
  cat >"$RUN/node-$n.yaml" <<YAML
runtime: { socket: $(envof $n SOCKET), root: $(envof $n CTD_ROOT) }
state: { path: $RUN/node-$n.learned.json }
registry: { dockerConfig: [], hostsDir: $(envof $n HOSTS_DIR) }
pacing: { diskFloor: 5%, bandwidth: 8MiB }
resync: 60s
images: $images
coordinator:
  endpoint: https://127.0.0.1:27443
  tokenFile: $RUN/api/node-$n.token
  caFile: $TLS/ca.crt
YAML
done
"$PREWARM" agent --config "$RUN/node-a.yaml" --listen 127.0.0.1:27466 --node-name node-a \
  --node-labels "kubernetes.azure.com/agentpool=integrations,topology.kubernetes.io/zone=zone-1,kubernetes.io/hostname=node-a" 2>"$RUN/node-a.log" &
PIDS+=($!)
"$PREWARM" agent --config "$RUN/node-b.yaml" --listen 127.0.0.1:27467 --node-name node-b \
  --node-labels "kubernetes.azure.com/agentpool=integrations,topology.kubernetes.io/zone=zone-2,kubernetes.io/hostname=node-b" 2>"$RUN/node-b.log" &
PIDS+=($!)

# `prewarm status` and `prewarm status deploys` with the viewer's token
# (a ServiceAccount bound to ClusterRole prewarm-view) and the demo CA.
status() {
  "$PREWARM" status --coordinator https://127.0.0.1:27444 --token-file "$RUN/api/view.token" --ca-file "$TLS/ca.crt"
}
deploys() {
  "$PREWARM" status deploys --coordinator https://127.0.0.1:27444 --token-file "$RUN/api/view.token" --ca-file "$TLS/ca.crt"
}
# Bounded wait until both agents are linked and node-a reports its image warm.
ready=""
for _ in $(seq 120); do
  out="$(status 2>/dev/null || true)"
  if grep -q "^2 of 2 agents connected" <<<"$out" && grep -qE "^$GATE_IMAGE +integrations +1/1 " <<<"$out"; then ready=1; break; fi
  sleep 0.5
done
[ -n "$ready" ] || fail "the agents did not link, or node-a did not warm $GATE_IMAGE: $out"
echo "\$ prewarm status"
status | sed 's/^/   /' | grep -v '^   \(Listed\|WARM/NODES\):'

echo "== a gated pod (scaled up by KEDA, say): eligible on both nodes, its image warm on node-a only"
touch "$RUN/api/go-gate"
wait_file "$RUN/api/gate.result" 130 || fail "no gate result"
grep -q '^ok' "$RUN/api/gate.result" || fail "gate: $(cat "$RUN/api/gate.result")"
echo "   => $(cat "$RUN/api/gate.result")"

echo "== a new release of both members of the deploy group: one at a time, each warmed on the nodes first"
echo "\$ prewarm status deploys"
out="$(deploys)"; sed 's/^/   /' <<<"$out"
last="$(sed -n 2p <<<"$out")"
touch "$RUN/api/go-deploy"
while [ ! -s "$RUN/api/deploy.result" ]; do
  out="$(deploys 2>/dev/null || true)"
  step="$(sed -n 2p <<<"$out")"   # the group's phase: Stepping <member>: <stage>, Idle, Halted
  if [ -n "$out" ] && [ "$step" != "$last" ]; then
    echo "\$ prewarm status deploys"; sed 's/^/   /' <<<"$out"; last="$step"
  fi
  kill -0 "$API" 2>/dev/null || break
  sleep 1
done
wait_file "$RUN/api/deploy.result" 5 || fail "no deploy result"
grep -q '^ok' "$RUN/api/deploy.result" || fail "deploy group: $(cat "$RUN/api/deploy.result")"
echo "   => $(cat "$RUN/api/deploy.result")"
echo "\$ prewarm status deploys"
deploys | sed 's/^/   /'
echo "\$ prewarm status"
status | sed 's/^/   /' | grep -v '^   \(Listed\|WARM/NODES\):'

touch "$RUN/api/go-exit"
rc=0; wait "$API" || rc=$?
[ "$rc" = 0 ] || fail "the API server's checks failed (exit $rc)"
echo "== cluster demo passed: the gated pod went to the warm node only; both members deployed in order"
