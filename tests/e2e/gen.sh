#!/usr/bin/env bash
# vmla-gen end to end: a y4m and (with FFmpeg) an MP4 of the tiny model, decoded back and checked
# (frame count, size, not blank); bad command lines fail with a message and leave no file.
set -uo pipefail
B=${VMLA_BUILD_DIR:-build}
S=${VMLA_SOURCE_DIR:-.}
gen=$B/vmla-gen
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# y4m with the golden weights: 2 s at 16 fps = 32 frames of 48x32
if out=$("$gen" --preset tiny-test --model "$S/tests/golden/tiny-mha.safetensors" --prompt "a red square" \
          --seed 7 --seconds 2 --out "$tmp/a.y4m" 2>&1); then ok "gen y4m"; else bad "gen y4m: $out"; fi
echo "$out"
echo "$out" | grep -q "frames/s" && ok "prints frames/s" || bad "no frames/s"
echo "$out" | grep -q "kv cache" && ok "prints kv bytes" || bad "no kv bytes"
frames=$(grep -c FRAME "$tmp/a.y4m" 2>/dev/null || echo 0)
[ "$frames" = 32 ] && ok "32 frames" || bad "$frames frames in the y4m"
head -c 40 "$tmp/a.y4m" | grep -q "W48 H32 F16:1" && ok "y4m header" || bad "y4m header"
[ ! -e "$tmp/a.y4m.part" ] && ok "no .part left" || bad ".part left"
# same seed -> same bytes; another seed -> other bytes
"$gen" --preset tiny-test --model "$S/tests/golden/tiny-mha.safetensors" --prompt "a red square" --seed 7 \
  --seconds 2 --out "$tmp/b.y4m" >/dev/null 2>&1
cmp -s "$tmp/a.y4m" "$tmp/b.y4m" && ok "deterministic" || bad "same seed, different output"
"$gen" --preset tiny-test --model "$S/tests/golden/tiny-mha.safetensors" --prompt "a red square" --seed 8 \
  --seconds 2 --out "$tmp/c.y4m" >/dev/null 2>&1
cmp -s "$tmp/a.y4m" "$tmp/c.y4m" && bad "other seed, same output" || ok "seed changes the video"

if command -v ffprobe >/dev/null && "$gen" --preset tiny-test-mla --model "$S/tests/golden/tiny-mla.safetensors" --prompt "a blue circle" --seconds 1.5 \
     --out "$tmp/d.mp4" >/dev/null 2>"$tmp/err"; then
  info=$(ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=codec_name,width,height,nb_read_frames \
         -of csv=p=0 "$tmp/d.mp4")
  [ "$info" = "h264,48,32,24" ] && ok "mp4: $info" || bad "mp4 probe: $info"
  # decoded frames are not blank: the luma of frame 5 varies
  ffmpeg -v error -i "$tmp/d.mp4" -vf "select=eq(n\,5)" -vframes 1 -f rawvideo -pix_fmt gray "$tmp/f.gray"
  sd=$(od -An -v -tu1 "$tmp/f.gray" | tr -s ' ' '\n' | awk 'NF{n++; s+=$1; q+=$1*$1} END{m=s/n; print int(sqrt(q/n-m*m))}')
  # (random-weight tiny models give low-contrast frames: a blank frame has std 0)
  [ "${sd:-0}" -ge 1 ] && ok "mp4 frame 5 luma std $sd" || bad "mp4 frame looks blank (std ${sd:-?})"
  ffmpeg -v error -i "$tmp/d.mp4" -vf "select=eq(n\,20)" -vframes 1 -f rawvideo -pix_fmt gray "$tmp/g.gray"
  cmp -s "$tmp/f.gray" "$tmp/g.gray" && bad "frames 5 and 20 are identical" || ok "frames change over time"
elif grep -q "FFmpeg" "$tmp/err" 2>/dev/null; then
  echo "skip: built without FFmpeg"
else
  bad "mp4 generation: $(cat "$tmp/err" 2>/dev/null)"
fi

# bad command lines: non-zero exit, a message, no output file
expect_fail() {
  local name=$1 want=$2; shift 2
  if out=$("$gen" "$@" 2>&1); then bad "$name: exit 0"; return; fi
  echo "$out" | grep -qi -- "$want" && ok "$name: $(echo "$out" | head -1)" || bad "$name: '$out' lacks '$want'"
}
expect_fail "unknown preset" "unknown preset" --preset nope --prompt x --out "$tmp/x.y4m"
expect_fail "missing prompt" "required" --preset tiny-test --out "$tmp/x.y4m"
expect_fail "bad seed" "bad value" --preset tiny-test --prompt x --seed 12abc --out "$tmp/x.y4m"
expect_fail "negative seconds" "bad value" --preset tiny-test --prompt x --seconds -1 --out "$tmp/x.y4m"
expect_fail "unknown option" "unknown option" --preset tiny-test --prompt x --frobnicate 1 --out "$tmp/x.y4m"
expect_fail "missing model" "no such file" --preset tiny-test --model "$tmp/none.safetensors" --prompt x --out "$tmp/x.y4m"
expect_fail "wrong model for preset" "missing" --preset tiny-test-mla --model "$S/tests/golden/tiny-mha.safetensors" --prompt x --out "$tmp/x.y4m"
expect_fail "bad extension" "extension" --preset tiny-test --prompt x --out "$tmp/x.avi"
expect_fail "unwritable dir" "" --preset tiny-test --prompt x --out "$tmp/no/such/dir/x.y4m"
expect_fail "window too small" "window" --preset tiny-test --prompt x --window 2 --out "$tmp/x.y4m"
ls "$tmp"/x.* >/dev/null 2>&1 && bad "an output file was left behind" || ok "no output left by failures"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
