#!/usr/bin/env bash
# Run a libFuzzer harness for N seconds over a scratch copy of its seed corpus (the repo's corpus
# is never written). A crash leaves its input in the scratch dir and fails the test.
set -euo pipefail
bin=$1 corpus=$2 secs=${3:-20}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$corpus"/. "$work"/
cd "$work"
"$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$work" 2>&1 | tail -20
