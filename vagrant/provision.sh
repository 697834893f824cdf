#!/usr/bin/env bash
# Provisions one VM from mesh's Debian package, the way the README's "Run it on real machines"
# does it by hand. Arguments: ROLE (cloud: kernel datapath where it loads; pi: TAP datapath),
# the address of a peer to dial, the mesh password. Idempotent.
set -euo pipefail
role=$1
seed=$2
password=$3
export DEBIAN_FRONTEND=noninteractive

deb=
for f in /mesh-package/mesh_*.deb; do
  [ -e "$f" ] && deb=$f
done
if [ -z "$deb" ]; then
  echo "no package in /mesh-package: run 'cargo xtask package' before 'vagrant up'" >&2
  exit 1
fi
apt-get update -qq
apt-get install -y -qq curl "$deb"

install -d -m 0755 /etc/mesh
printf '%s\n' "$password" | install -m 0600 /dev/stdin /etc/mesh/password
# The private network is eth1 (eth0 is Vagrant's NAT).
sed -i \
  -e "s/^peers = \[\]/peers = [\"$seed\"]/" \
  -e 's/^# underlay = .*/underlay = "eth1"/' \
  -e 's/^# metrics-listen = .*/metrics-listen = "127.0.0.1:9464"/' \
  /etc/mesh/meshd.toml

if [ "$role" = "pi" ]; then
  install -d /etc/systemd/system/meshd.service.d
  install -m 0644 /usr/share/doc/mesh/examples/meshd-tap.conf \
    /etc/systemd/system/meshd.service.d/tap.conf
fi
systemctl daemon-reload
systemctl enable meshd
systemctl restart meshd
echo "meshd ($role) running: meshctl peers"
