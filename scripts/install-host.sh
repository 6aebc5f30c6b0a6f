#!/usr/bin/env bash
# Install what a slicectl node needs from Debian's packages. Idempotent: packages already
# present are skipped, so a second run costs one dpkg query.
set -euo pipefail
PKGS=(docker.io btrfs-progs debootstrap openssh-server openssh-client sudo iproute2
      iptables procps util-linux iperf3 tcpdump curl e2fsprogs python3-venv wrk
      chromium chromium-driver supervisor postgresql openssl docker-compose crun)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "slicectl: host packages present"
  exit 0
fi
echo "slicectl: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Never let package scripts start services on their own: slicectl starts its own engine and
# sshd. Only a policy-rc.d this script created is removed again.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# slicectl: temporary, during package installation\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "slicectl: host packages installed"
