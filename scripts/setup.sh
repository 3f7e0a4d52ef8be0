#!/usr/bin/env bash
# Installs everything prewarm's demo and tests need on a fresh Debian machine:
# protoc, the distribution registry, htpasswd, containerd 1.7 (trixie) and
# 2.x (sid), kustomize, and Prometheus and promtool (trixie), unpacked under
# .tools/ without installing them system-wide (so no daemon is started).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${PREWARM_TOOLS:-$ROOT/.tools}"
mkdir -p "$TOOLS"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
[ -x /usr/bin/docker-registry ] || need_apt+=(docker-registry)
command -v htpasswd >/dev/null || need_apt+=(apache2-utils)
command -v pigz >/dev/null || need_apt+=(pigz)
command -v zstd >/dev/null || need_apt+=(zstd)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The registry package starts a system service on :5000; tests run their own.
  $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
  $SUDO pkill -x docker-registry 2>/dev/null || true
fi

# containerd from a newer suite, unpacked (not installed) into .tools/containerd-<suite>.
# The mirror is taken from this machine's own apt configuration.
mirror="$(grep -h -m1 '^URIs:' /etc/apt/sources.list.d/debian.sources 2>/dev/null | awk '{print $2}')"
if [ -z "$mirror" ]; then
  mirror="$(grep -h -m1 -E '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}')"
fi
# Fetches the .deb of PACKAGE from SUITE and unpacks it (not installs it) into
# .tools/<DEST>, then prints its version with VERSION_ARG; skipped when
# .tools/<DEST>/<BINARY> already exists. (containerd takes --version: any
# other word starts the daemon.)
fetch_deb() {
  local suite="$1" package="$2" dest="$TOOLS/$3" binary="$4" version_arg="$5"
  [ -x "$dest/$binary" ] && return 0
  local work="$TOOLS/apt-$suite"
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/etc/preferences.d"
  printf 'deb %s %s main\n' "$mirror" "$suite" >"$work/sources.list"
  local opts=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::Etc::Preferences="$work/etc/preferences" -o Dir::Etc::PreferencesParts="$work/etc/preferences.d"
    -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o APT::Default-Release="$suite")
  apt-get "${opts[@]}" update -qq
  (cd "$work" && rm -f "${package}"_*.deb && apt-get "${opts[@]}" download -qq "$package/$suite")
  rm -rf "$dest"; mkdir -p "$dest"
  dpkg-deb -x "$work"/"${package}"_*.deb "$dest"
  "$dest/$binary" "$version_arg"
}
fetch_deb trixie containerd containerd-trixie usr/bin/containerd --version
fetch_deb sid containerd containerd-sid usr/bin/containerd --version
# kustomize renders daemonset/ (and its components) for the manifest
# validation and the rendering tests; trixie ships 5.6.
fetch_deb trixie kustomize kustomize-trixie usr/bin/kustomize version
# A real Prometheus server (tests/it/prometheus.rs scrapes a real agent and
# coordinator with it) and promtool (checks and unit-tests the alert rules);
# Debian packages promtool separately. Unpacked only: the package's service
# and user are never created.
fetch_deb trixie prometheus prometheus-trixie usr/bin/prometheus --version
fetch_deb trixie promtool promtool-trixie usr/bin/promtool --version
echo "setup: done (tools in $TOOLS)"
