#!/usr/bin/env bash
# vmla-bench kv: the paper's figure (224 of 3072 values, ratio 0.0729) from real pool allocations.
set -uo pipefail
B=${VMLA_BUILD_DIR:-build}
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
j=$("$B/vmla-bench" kv --preset wan-1.3b --window 6 --sink 1 --json) || bad "bench kv failed"
echo "$j"
field() { echo "$j" | sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
[ "$(field mha_bytes_per_token_layer)" = "6144.0" ] && ok "mha 6144 bytes a token a layer (3072 bf16)" || bad "mha bytes"
[ "$(field mla_bytes_per_token_layer)" = "448.0" ] && ok "mla 448 bytes (224 bf16)" || bad "mla bytes"
[ "$(field ratio)" = "0.0729" ] && ok "ratio 0.0729" || bad "ratio $(field ratio)"
# a 7-frame cache (1 sink + 6 window) at 480x832: 7*1560 tokens * 30 layers * 6144 bytes
[ "$(field mha_stream_bytes)" = "$((7 * 1560 * 30 * 6144))" ] && ok "mha stream bytes" || bad "mha stream bytes $(field mha_stream_bytes)"
j21=$("$B/vmla-bench" kv --preset wan-1.3b-mla --window 21 --sink 0 --json)
echo "$j21"
j=$j21
[ "$(field mha_stream_bytes)" = "$((21 * 1560 * 30 * 6144))" ] && ok "21 frames per-head: 6.04 GB (DESIGN.md)" || bad "21-frame per-head bytes $(field mha_stream_bytes)"
[ "$(field mla_stream_bytes)" = "$((21 * 1560 * 30 * 448))" ] && ok "21 frames latent: 0.44 GB" || bad "21-frame latent bytes $(field mla_stream_bytes)"
"$B/vmla-bench" kv --preset wan-1.3b --window 2 >/dev/null 2>&1 && bad "window 2 accepted" || ok "window under a chunk refused"
"$B/vmla-bench" kv --preset nope >/dev/null 2>&1 && bad "unknown preset accepted" || ok "unknown preset refused"
"$B/vmla-bench" kv >/dev/null 2>&1 && bad "missing preset accepted" || ok "missing preset refused"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
