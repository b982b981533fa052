#!/usr/bin/env bash
# CI's scheduler test (issue #31): start a single-node Slurm cluster (scripts/slurm-cluster.sh),
# run xtask's Slurm test against it, stop the daemons whatever happened. Needs root and the
# Debian registry when Slurm is not installed; says so and fails otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mosa-target}"
if [ "$(id -u)" != 0 ] && ! command -v sbatch >/dev/null; then
    echo "slurm-ci: NOT RUN: Slurm is not installed and installing it needs root" >&2
    exit 1
fi
trap 'scripts/slurm-cluster.sh stop' EXIT
start=$(date +%s)
scripts/slurm-cluster.sh start
# the workspace's debug `mosa` and the test, built exactly as the test command builds them (the
# same packages and dev-dependency features: after `cargo test --workspace` nothing is rebuilt)
cargo test --workspace --locked --no-run
cargo test --workspace --locked --test slurm -- --ignored --nocapture
echo "slurm-ci: passed in $(( $(date +%s) - start )) s"
