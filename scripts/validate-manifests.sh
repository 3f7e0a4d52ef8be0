#!/usr/bin/env bash
# Renders the kustomize base in daemonset/ and, each on top of it, every
# component in daemonset/components/, and validates every object offline
# against the Kubernetes OpenAPI schemas shipped in the PyPI package
# kubernetes-validate, in strict mode (unknown fields are errors).
#
#   scripts/validate-manifests.sh                 # base + components, versions below
#   K8S_VERSIONS="1.35.0" scripts/validate-manifests.sh [KUSTOMIZE_DIR]
#
# Renders with the kustomize scripts/setup.sh unpacks into .tools/ (the one
# the rendering tests use), or `kubectl kustomize` when that is missing.
# cert-manager.io objects (components/cert-manager) and the Prometheus
# Operator's monitoring.coreos.com objects (components/monitoring) have no
# schema offline: they are listed, not validated here; the rendering tests
# in src/cli/manifests_tests.rs check what they reference, and
# scripts/test-monitoring.sh runs the PrometheusRule through promtool. Needs python3; the
# validator is installed into .tools/venv on first use. Exits non-zero on any
# failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PREWARM_VENV:-$ROOT/.tools/venv}"
VALIDATOR_VERSION="1.37.0"
# The oldest AKS-supported minor we care about and the newest the pinned
# validator ships schemas for (`ls <site-packages>/kubernetes_validate/kubernetes-json-schema`).
K8S_VERSIONS="${K8S_VERSIONS:-1.33.0 1.37.0}"
KUSTOMIZE="${KUSTOMIZE:-$ROOT/.tools/kustomize-trixie/usr/bin/kustomize}"

validator="$VENV/bin/kubernetes-validate"
if ! "$validator" --version 2>/dev/null | grep -qx "$VALIDATOR_VERSION"; then
  echo "validate-manifests: installing kubernetes-validate $VALIDATOR_VERSION into $VENV" >&2
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$VALIDATOR_VERSION"
fi
# A CEL evaluator for the pod-write-guard component's policy (below).
CEL_VERSION="0.5.0"
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('cel-python') != '$CEL_VERSION')" 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check "cel-python==$CEL_VERSION"
fi

render() {
  if [ -x "$KUSTOMIZE" ]; then
    "$KUSTOMIZE" build "$1"
  elif command -v kubectl >/dev/null; then
    kubectl kustomize "$1"
  else
    echo "validate-manifests: no kustomize ($KUSTOMIZE) and no kubectl; run scripts/setup.sh" >&2
    return 1
  fi
}

work="$(mktemp -d)"
mkdir -p "$ROOT/target"
overlays="$(mktemp -d "$ROOT/target/validate-manifests.XXXXXX")"
trap 'rm -rf "$work" "$overlays"' EXIT

# name<TAB>directory of each rendering.
targets=()
if [ -n "${1:-}" ]; then
  targets+=("$1	$1")
else
  targets+=("base	$ROOT/daemonset")
  for c in "$ROOT"/daemonset/components/*/; do
    c="$(basename "$c")"
    mkdir -p "$overlays/$c"
    # kustomize takes only relative paths: ../../.. is the repository root.
    printf 'resources: [../../../daemonset]\ncomponents: [../../../daemonset/components/%s]\n' "$c" \
      >"$overlays/$c/kustomization.yaml"
    targets+=("components/$c	$overlays/$c")
  done
fi

status=0
for target in "${targets[@]}"; do
  name="${target%%	*}" dir="${target#*	}"
  rendered="$work/rendered.yaml"
  render "$dir" >"$rendered"
  # The walkthrough's example objects of built-in kinds (its ScaledObjects
  # and DeployGroup are checked by the unit tests instead).
  if [ "$name" = base ]; then
    printf '\n---\n' >>"$rendered"
    "$VENV/bin/python" - "$ROOT/config/integrations-deploygroup.yaml" >>"$rendered" <<'PY'
import sys, yaml
builtin = ("v1", "apps/v1", "rbac.authorization.k8s.io/v1")
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["apiVersion"] in builtin]
print(yaml.safe_dump_all(docs), end="")
PY
  fi
  # Objects of CRDs without an offline schema go aside.
  "$VENV/bin/python" - "$rendered" "$work/builtin.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
no_schema = {"cert-manager.io": "cert-manager", "monitoring.coreos.com": "Prometheus Operator"}
skip = [d for d in docs if d["apiVersion"].split("/")[0] in no_schema]
for d in skip:
    owner = no_schema[d["apiVersion"].split("/")[0]]
    print(f"validate-manifests:   not schema-checked (no {owner} CRD schema offline): {d['kind']} {d['metadata']['name']}")
yaml.safe_dump_all([d for d in docs if d not in skip], open(sys.argv[2], "w"))
PY
  objects="$(grep -c '^kind:' "$work/builtin.yaml" || true)"
  if [ "${objects:-0}" -eq 0 ]; then
    echo "validate-manifests: $name: kustomize rendered no objects" >&2
    status=1
    continue
  fi
  for version in $K8S_VERSIONS; do
    echo "validate-manifests: $name: $objects objects against Kubernetes $version (strict)"
    # Exits non-zero on invalid objects; warnings (e.g. deprecated fields) fail too.
    output="$("$validator" --strict --quiet --kubernetes-version "$version" "$work/builtin.yaml" 2>&1)" || status=1
    [ -z "$output" ] || printf '%s\n' "$output"
    if grep -qiE '^(WARN|ERROR)|warning' <<<"$output"; then
      status=1
    fi
  done
done

# The pod-write-guard policy's expressions, on the gate's own patches and on
# the writes it must refuse.
"$VENV/bin/python" "$ROOT/scripts/test-pod-write-guard.py" || status=1

if [ "$status" -ne 0 ]; then
  echo "validate-manifests: FAILED" >&2
  exit "$status"
fi
echo "validate-manifests: OK"
