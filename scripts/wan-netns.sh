#!/usr/bin/env bash
# The emulated WAN link of the pull benchmark (benches/pull.rs): a network
# namespace that holds the registry, reached from the host through a pair of
# TUN devices with kernel `tbf` rate shaping on both.
#
#   host 10.211.0.1  pwan-h ──(bench: 20 ms delay line each way)── pwan-n  10.211.0.2  netns prewarm-wan
#
# The kernels this was written for lack sch_netem (CONFIG_NET_SCH_NETEM is
# not set), so the delay cannot be a qdisc. Instead the bench process opens
# both TUN devices and copies every packet from one to the other 20 ms after
# it arrived (TUN_F_TSO offload, so it mostly moves 64 KB segments). Real
# kernel TCP on both ends sees the RTT: handshakes, slow start and window
# growth behave as over a WAN. Without that process attached, nothing passes.
#
#   scripts/wan-netns.sh up     # (re)create; tolerates leftovers of a crashed run
#   scripts/wan-netns.sh down   # remove; idempotent
#
# Env: PREWARM_WAN_RATE (tc rate, default 400mbit) caps each direction, the
# bench sets it; PREWARM_WAN_LIMIT (tbf queue, default 2mb: one
# bandwidth-delay product at 400 Mbit/s and 40 ms) bounds the queue at the
# bottleneck, where packets wait (and are dropped) as at a real one.
set -euo pipefail

NS=prewarm-wan
HOST_IF=pwan-h
NS_IF=pwan-n
HOST_ADDR=10.211.0.1
NS_ADDR=10.211.0.2
RATE="${PREWARM_WAN_RATE:-400mbit}"
LIMIT="${PREWARM_WAN_LIMIT:-2mb}"

down() {
  if ip netns list 2>/dev/null | grep -qw "^$NS"; then
    # Only the bench's registry runs in there; a crashed run may leave it.
    for pid in $(ip netns pids "$NS" 2>/dev/null); do
      kill "$pid" 2>/dev/null || true
    done
    # Delete the device first: an attached TUN fd pins the namespace.
    ip -n "$NS" link del "$NS_IF" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
  fi
  ip link del "$HOST_IF" 2>/dev/null || true
}

up() {
  for tool in ip tc; do
    command -v "$tool" >/dev/null || {
      echo "wan-netns: $tool not found (apt-get install iproute2)" >&2
      exit 1
    }
  done
  [ -c /dev/net/tun ] || {
    echo "wan-netns: /dev/net/tun missing (CONFIG_TUN)" >&2
    exit 1
  }
  down
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  ip tuntap add dev "$HOST_IF" mode tun
  ip -n "$NS" tuntap add dev "$NS_IF" mode tun
  ip addr add "$HOST_ADDR/30" dev "$HOST_IF"
  ip -n "$NS" addr add "$NS_ADDR/30" dev "$NS_IF"
  ip link set "$HOST_IF" up
  ip -n "$NS" link set "$NS_IF" up
  # Egress of each TUN is the direction towards the other side. A burst of
  # 128kb lets a whole TSO segment (up to 64 KiB) through: tbf would split
  # larger packets, and the delay line would copy 40x as many.
  tc qdisc replace dev "$HOST_IF" root tbf rate "$RATE" burst 128kb limit "$LIMIT"
  tc -n "$NS" qdisc replace dev "$NS_IF" root tbf rate "$RATE" burst 128kb limit "$LIMIT"
  echo "wan-netns: $HOST_ADDR ($HOST_IF) <-> $NS_ADDR ($NS_IF in netns $NS), tbf $RATE" >&2
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
