#!/usr/bin/env bash
# Provisions one VM: a Rust toolchain (stable + nightly), then the project's own setup and a
# release build. Idempotent: re-running only checks.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends build-essential curl ca-certificates git
if ! command -v rustup >/dev/null && [ ! -x /root/.cargo/bin/rustup ]; then
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
fi
export PATH=/root/.cargo/bin:$PATH
rustup toolchain install nightly --profile minimal
cd /mesh
cargo xtask setup
cargo build --release --bins
echo "mesh built: /mesh/target/release/{meshd,meshctl}"
