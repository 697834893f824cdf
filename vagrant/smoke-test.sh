#!/usr/bin/env bash
# The README's checks on the three VMs: every node sees the two others established, node3 runs
# the TAP datapath and node1 the kernel one, and every node serves metrics naming its peers.
set -euo pipefail
cd "$(dirname "$0")"

on() {
  vagrant ssh "$1" -c "$2" -- -q
}

for node in node1 node2 node3; do
  ok=
  for _ in $(seq 1 30); do
    if [ "$(on "$node" 'sudo meshctl peers --json' | grep -c '"state": *"established"')" -ge 2 ]; then
      ok=1
      break
    fi
    sleep 2
  done
  if [ -z "$ok" ]; then
    echo "$node: not connected to both others" >&2
    on "$node" 'sudo meshctl peers' >&2 || true
    exit 1
  fi
  on "$node" 'curl -sf http://127.0.0.1:9464/metrics' | grep -q '^mesh_peer_up{' \
    || { echo "$node: no per-peer metrics" >&2; exit 1; }
  echo "$node: both peers established, metrics served"
done
on node3 'sudo meshctl status' | grep -q 'tap' || { echo "node3 should run the TAP datapath" >&2; exit 1; }
on node1 'systemctl status meshd --no-pager' | grep -q 'peers connected' \
  || { echo "node1: the service status line is missing" >&2; exit 1; }
echo "smoke test passed"
