#!/usr/bin/env bash
# The wgpu benchmark set of docs/benchmarks/wgpu-h200.md on a GPU machine, from the binaries
# scripts/device-prepare.sh left in devbin/ and the loader packages in .gl/. JSON lines go to
# $OUT/wgpu.jsonl (or ./wgpu.jsonl), the rest to stdout. `SETS="decode lora 13b tests"` picks;
# `floor` (the dispatch floor) and `sweep` (decode under each tuning knob) are also there.
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" / 2>/dev/null; done
ldconfig
if ! ./devbin/tern info 2>&1 | grep -qi nvidia; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export TERN_WGPU_ADAPTER=${TERN_WGPU_ADAPTER:-NVIDIA}
T=./devbin/tern
J=${OUT:-.}/wgpu.jsonl
B="bench --backend wgpu --quiet --json $J"
SETS=${SETS:-"decode lora 13b tests"}
has() { [[ " $SETS " == *" $1 "* ]]; }
if has floor; then
  echo "== the cost of a near-empty dependent dispatch"
  ./devbin/dispatch_floor 2000
fi
if has sweep; then
  D="--model random:1b --prefill 128 --decode 256 --lora-steps 0 --warmup 2"
  echo "== 1B decode: subgroups off"
  TERN_WGPU_NO_SUBGROUPS=1 $T $B $D
  for k in 32 64; do
    echo "== 1B decode: attention split at $k keys"
    TERN_WGPU_SPLIT_KEYS=$k $T $B $D
  done
  for w in 132 528; do
    echo "== 1B decode: $w workgroups per fused dispatch"
    TERN_WGPU_FUSED_WGS=$w $T $B $D
  done
fi
if has decode; then
  echo "== 1B: decode, prefill, LoRA (fused, f16 head)"
  $T $B --model random:1b --prefill 128 --decode 256 --lora-steps 10 --warmup 2
  echo "== 1B: the plain op sequence and the f32 head (A/B)"
  $T $B --model random:1b --unfused --head f32 --prefill 128 --decode 256 --lora-steps 0 --warmup 2
  echo "== 1B: GPU time per kernel"
  TERN_WGPU_STATS=timestamps $T $B --model random:1b --prefill 16 --decode 64 --lora-steps 0 --warmup 1
fi
if has lora; then
  for nb in 4 8; do
    echo "== 1B LoRA, $nb sequences per step"
    $T $B --model random:1b --prefill 0 --decode 0 --lora-steps 6 --lora-batch "$nb" --warmup 1
  done
  echo "== 1B LoRA, whole-process memory (nvidia-smi every 0.1 s)"
  smi=$(mktemp)
  (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> "$smi"; sleep 0.1; done) &
  pid=$!
  $T $B --model random:1b --prefill 0 --decode 0 --lora-steps 20 --warmup 2
  kill $pid
  echo "nvidia-smi peak MiB: $(sort -n "$smi" | tail -1)"
fi
if has 13b; then
  echo "== 13B"
  timeout 200 $T $B --model random:13b --prefill 128 --decode 64 --lora-steps 3 --warmup 1
fi
if has tests; then
  for i in 1 2 3; do
    for t in conformance model attention_shapes; do
      [ -x "devbin/$t" ] || continue
      timeout 120 "devbin/$t" > "${OUT:-.}/$t-$i.log" 2>&1
      echo "$t run $i: rc=$? $(grep 'test result' "${OUT:-.}/$t-$i.log")"
    done
  done
fi
