#!/usr/bin/env bash
# Local demos on a fresh Debian machine (need root): the node demo
# (scripts/demo-node.sh: one agent warming images ahead of an activation
# window through a real containerd) and then the cluster demo
# (scripts/demo-cluster.sh: the coordinator and two agents on loopback
# against the in-memory API server: a gated pod released onto the warm node
# and a two-member deploy group stepping through its stages). Each checks
# its own outcome and exits non-zero if it did not happen.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-}" in
  "") scripts/demo-node.sh; echo; scripts/demo-cluster.sh ;;
  --node) exec scripts/demo-node.sh ;;
  --cluster) exec scripts/demo-cluster.sh ;;
  *) echo "usage: scripts/demo.sh [--node | --cluster]   (default: both)" >&2; exit 2 ;;
esac
