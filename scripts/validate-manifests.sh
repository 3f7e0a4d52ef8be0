#!/usr/bin/env bash
# Renders the kustomize base in daemonset/ and validates every object offline
# against the Kubernetes OpenAPI schemas shipped in the PyPI package
# kubernetes-validate, in strict mode (unknown fields are errors).
#
#   scripts/validate-manifests.sh                 # daemonset/, versions below
#   K8S_VERSIONS="1.35.0" scripts/validate-manifests.sh [KUSTOMIZE_DIR]
#
# Needs kubectl (for `kubectl kustomize`) and python3; the validator is
# installed into .tools/venv on first use. Exits non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PREWARM_VENV:-$ROOT/.tools/venv}"
VALIDATOR_VERSION="1.37.0"
# The oldest AKS-supported minor we care about and the newest the pinned
# validator ships schemas for (`ls <site-packages>/kubernetes_validate/kubernetes-json-schema`).
K8S_VERSIONS="${K8S_VERSIONS:-1.33.0 1.37.0}"
KUBECTL="${KUBECTL:-kubectl}"


validator="$VENV/bin/kubernetes-validate"
if ! "$validator" --version 2>/dev/null | grep -qx "$VALIDATOR_VERSION"; then
  echo "validate-manifests: installing kubernetes-validate $VALIDATOR_VERSION into $VENV" >&2
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$VALIDATOR_VERSION"
fi

rendered="$(mktemp --suffix=.yaml)"
trap 'rm -f "$rendered"' EXIT

dir="${1:-$ROOT/daemonset}"
if command -v "$KUBECTL" >/dev/null; then
  "$KUBECTL" kustomize "$dir" >"$rendered"
else
  # No kubectl on this machine (none of its package registries ships one):
  # validate the listed resource files as they are, without kustomize's
  # namespace and label transforms.
  echo "validate-manifests: kubectl not found; validating the raw resources of $dir" >&2
  awk '/^resources:/ {on = 1; next} on && /^  - / {print $2; next} on && !/^ / {on = 0}' "$dir/kustomization.yaml" |
    while read -r f; do cat "$dir/$f"; printf '\n---\n'; done >"$rendered"
fi
# The walkthrough's example objects of built-in kinds (its ScaledObjects and
# DeployGroup are checked by the unit tests instead).
if [ -z "${1:-}" ]; then
  printf '\n---\n' >>"$rendered"
  "$VENV/bin/python" - "$ROOT/config/integrations-deploygroup.yaml" >>"$rendered" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and "/" not in d["apiVersion"].replace("apps/v1", "v1")]
print(yaml.safe_dump_all(docs), end="")
PY
fi
objects="$(grep -c '^kind:' "$rendered" || true)"
if [ "${objects:-0}" -eq 0 ]; then
  echo "validate-manifests: kustomize rendered no objects" >&2
  exit 1
fi

status=0
for version in $K8S_VERSIONS; do
  echo "validate-manifests: $objects objects against Kubernetes $version (strict)"
  # Exits non-zero on invalid objects; warnings (e.g. deprecated fields) fail too.
  output="$("$validator" --strict --kubernetes-version "$version" "$rendered" 2>&1)" || status=1
  printf '%s\n' "$output"
  if grep -qiE '^(WARN|ERROR)|warning' <<<"$output"; then
    status=1
  fi
done

if [ "$status" -ne 0 ]; then
  echo "validate-manifests: FAILED" >&2
  exit "$status"
fi
echo "validate-manifests: OK"
