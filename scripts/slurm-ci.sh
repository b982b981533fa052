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
# the test uses the workspace's debug `mosa` (built by the test command before this script)
cargo build --locked -p mosa-cli
cargo test --locked -p xtask --test slurm -- --ignored --nocapture
echo "slurm-ci: passed in $(( $(date +%s) - start )) s"
