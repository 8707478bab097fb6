#!/usr/bin/env bash
# One setup for the README, CI and the Vagrant VM: system packages, then a venv holding the project.
# Idempotent: a second run installs nothing new. Needs root for apt (skipped when not root).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

# Mininet from Debian (LinuxBridge switches, no Open vSwitch needed), its helpers, the traffic tools,
# libnetfilter-queue for the NFQUEUE delay line used where the kernel has no netem, the baselines'
# BitTorrent tracker and clients (opentracker, libtorrent, aria2), and libfaketime for the clock-step drill.
packages=(python3 python3-venv python3-dev gcc iproute2 iptables procps ethtool
          mininet bridge-utils iperf3 tcpdump libnetfilter-queue-dev
          opentracker python3-libtorrent aria2 faketime)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# The distribution's python3, so Debian's python3-mininet is importable from the venv.
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,testbed]'
echo "setup: ready (.venv/bin/scaledist, .venv/bin/python -m pytest)" >&2
