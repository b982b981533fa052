#!/usr/bin/env bash
# Starts `mosa serve` on a free loopback port and drives its page in headless Chromium
# (scripts/check_page.mjs): pick a task, give it an image, check the top 5 shown.
#
#   scripts/check-page.sh <mosa binary> <base weights> <task> <image> <experts…>
#
# Installs what it needs outside the repo on first use: Debian's chromium (apt) and puppeteer-core
# (npm, into $PAGE_CHECK_DIR, default ~/.cache/mosa-page-check).
set -euo pipefail
mosa=$1 base=$2 task=$3 image=$4
shift 4
dir=${PAGE_CHECK_DIR:-$HOME/.cache/mosa-page-check}
if ! command -v chromium > /dev/null; then
  apt-get update -qq && apt-get install -y -qq chromium > /dev/null
fi
if [ ! -d "$dir/node_modules/puppeteer-core" ]; then
  mkdir -p "$dir" && npm install --silent --prefix "$dir" puppeteer-core > /dev/null
fi
log=$(mktemp)
"$mosa" serve --base "$base" --experts "$@" --addr 127.0.0.1:0 > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2> /dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 300); do
  grep -q '^listening on ' "$log" && break
  kill -0 $pid 2> /dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
url=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$log")
PAGE_CHECK_DIR="$dir" node "$(dirname "$0")/check_page.mjs" "$url" "$task" "$image" "$(command -v chromium)"
