#!/usr/bin/env bash
# One prepared run on a machine with an NVIDIA GPU where nothing can be built and nothing
# outside can be reached. From the repo root, with the binaries of tools/build-gpu-bundle.sh in
# .gpu/ (carried xz-compressed; `bash tools/gpu-tree.sh lean` first, so that the tracked tree
# and the bundle fit the 64 MiB a call carries, and `restore` after):
#
#   bash tools/gpu-check.sh    # the table in $OUT/summary.txt (default /tmp/gpu-check), logs beside it
#
# The steps, each within its own time limit and all within BUDGET seconds (default 540: a
# device call may take 600); a step that no longer fits says so and is skipped:
# 0. our fused engine's f16 forward (portable loops) on the full-width model at growing sizes,
#    up to 512x512 at batch 12; compute-sanitizer on the smallest that fails (on the first
#    H200 run, 2026-12-04, 512x512 at batch 12 ended in an illegal address, 64x64 did not:
#    kernels stopped at a buffer's length, not their own count; tests/bounds.rs since);
# 1. correctness: each engine's (ours first, then Burn's) f32 and f16 outputs against the
#    PyTorch fixtures (f32 <= 1e-4, f16 <= 5e-3; 2e-2 for the ill-conditioned width-4
#    fixture); then the demo slide's map in f16 on the GPU against the f32 CPU map (issue 12:
#    within 2 levels on 99 % of pixels) and against PyTorch's, with each run's Dice;
# 2. our fused engine on the full-width model (w = 64) at batch 12, 1, 32 and 64: ms/patch
#    streamed (one batch in flight, as infer runs it; the upload, kernels and download on
#    streams of their own) and of one forward (the latency), its difference from the CPU path
#    and the streamed batches' from their inputs' first forwards (0 unless the streams
#    overlap wrongly), the main loop and TFLOP/s of each 3x3 layer; f16 with
#    each layer's main loop tuned (the first forward's seconds), then a second process that
#    reads the tuning back from disk; one fixed main loop on every layer (FIXED_CONV, default
#    cubek's specialized_tma_mma) only where the tuned process gave no table; f32 last; then,
#    from cubecl's autotune log, each layer shape's fastest candidate as cubek tiles it against
#    the fastest of the engine's own tilings;
# 3. PyTorch on the same card in the same call (tools/torch_anchor.py), when torch is there:
#    the rows issue 12 compares with (ANCHOR_QUICK=0: every row);
# 4. criterion, the same model: Burn f16 and f32, ours f16;
# 5. infer end to end on a generated 20000x20000 slide with the full-width model, our engine
#    (after step 2, on the tuning it kept): end-to-end patches/s over step 2's model-only
#    patches/s at the same batch (32);
# 6. the host CPU's bf16 path: where it has AMX (which no build machine exposes), the tiles'
#    outputs against the PyTorch fixtures, the full-width model in f32 and bf16, and
#    PyTorch's fp32 and bf16 autocast on the same CPU (issue 14; ~1 min, none without AMX);
# 7. the default, `--engine auto`, on the same slide: unet-core's AUTO_ON_CUDA engines measured
#    on the first batch, the fastest kept.
# They run in STEPS' order, by default what issue 12 must show first: 0 (is it sound), 2 and
# 3 (ours against torch.compile), 5 (end to end), 1 (correctness; its first process tunes the
# narrow fixtures' shapes, ~90 s), then 6 (issue 14's one chance at AMX), 7, 4. A lease of 15
# minutes holds one whole call and a short second one: the last line of the first call's
# summary names the steps the budget cut.
# DEVICE=cpu runs the same script on a machine without a GPU (a smoke test of the script).
# Other knobs: ENGINES (step 1's engines), FUSED_PRECISIONS (step 2's tuned first process,
# default f16), CRITERION (step 4's "engine:precisions" pairs), FIXED_CONV, W64_MODEL.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check}"
DEVICE="${DEVICE:-cuda}"
SIDE="${SIDE:-512}"
BATCHES="${BATCHES:-1,12,32,64}"
# Our fused engine tunes each new batch size's layers on its first forward: batch 12, the one
# compared with torch.compile, goes first, so a first run that runs out of time still has it.
FUSED_BATCHES="${FUSED_BATCHES:-12,1,32,64}"
BUDGET="${BUDGET:-540}"
# The engines to compare: on a GPU Burn's and ours; on the CPU (a smoke test) ours and Burn's.
if [ "$DEVICE" = cuda ]; then ENGINES="${ENGINES:-fused,burn}"; else ENGINES="${ENGINES:-cpu,burn}"; fi
SLIDE_SIDE="${SLIDE_SIDE:-20000}"
STEPS="${STEPS:-0,2,3,5,1,6,7,4}"
export ANCHOR_QUICK="${ANCHOR_QUICK:-1}"
# The summary, and every log in one archive at the end: a device call brings back 8 files.
LOGS="$OUT/logs"
mkdir -p "$OUT" "$LOGS"
# cubecl's autotune logs every candidate's time for each key (ours: a main loop's layer shape)
# into $LOGS/autotune.log, read by step 2's comparison of cubek's tilings with the engine's
# own. cubecl reads cubecl.toml from the working directory; one the tree has is left alone.
own_config=
if [ ! -e cubecl.toml ]; then
  printf '[autotune.logger]\nlevel = "full"\nfile = "%s"\n' "$LOGS/autotune.log" > cubecl.toml
  own_config=1
fi
trap '[ -n "$own_config" ] && rm -f cubecl.toml; tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS"' EXIT
BIN=/tmp/gpu-bin
mkdir -p "$BIN" /tmp/gpu-work
# The bundle is one xz-compressed tar; Python's lzma unpacks it where xz is missing. Once:
# a run before this one (STEPS) may have unpacked it already.
if [ ! "$BIN/.unpacked" -nt .gpu/bin.tar.xz ]; then
  if command -v xz >/dev/null; then xz -dc .gpu/bin.tar.xz | tar -xf - -C "$BIN"
  else python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .gpu/bin.tar.xz "$BIN"
  fi && touch "$BIN/.unpacked"
fi
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
# cubecl compiles its kernels with NVRTC, loaded at run time, and CUDA's headers.
for dir in $(find /usr/local -maxdepth 6 -name 'libnvrtc.so*' -printf '%h\n' 2>/dev/null | sort -u); do
  LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$dir"
done
card=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "no NVIDIA GPU")
# The bundle's commit (tools/build-gpu-bundle.sh), which the tree's may not be.
commit=$(cat .gpu/commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "card: $card; device: $DEVICE; commit: $commit; $(date -u +%FT%TZ)" | tee "$OUT/summary.txt"
say() { echo "$1" | tee -a "$OUT/summary.txt"; }
[ "$DEVICE" = cuda ] && say "NVRTC: $(find /usr/local -maxdepth 6 -name 'libnvrtc.so*' 2>/dev/null | head -n 3 | tr '\n' ' '); CUDA headers: $(ls "$CUDA_PATH/include/cuda_fp16.h" 2>&1)"
# The steps the budget cut short or skipped, one a line: the next call's STEPS.
CUT="$LOGS/cut"
: > "$CUT"
current=
step() { current=$1; say "== $1. $2 ($(( SECONDS ))s)"; }
# `limit N`: N seconds, or what is left of the budget (less a margin), whichever is less;
# fails when under 10 seconds are left.
limit() {
  local left=$(( BUDGET - SECONDS - 5 ))
  [ "$left" -ge 10 ] || { say "(skipped: the ${BUDGET}s budget is spent)" >&2; echo "$current" >> "$CUT"; return 1; }
  echo $(( $1 < left ? $1 : left ))
}

# The full-width model of steps 0, 2, 4, 5 and 7: random weights, made here (no GPU needed).
"$BIN/random_model" /tmp/gpu-work/w64.bpk >/dev/null 2>&1 || true
W64="${W64_MODEL:-/tmp/gpu-work/w64.bpk}"
# The PyTorch fixtures of steps 1 and 6 (tests/fixtures/pytorch), converted once a call.
FIXTURES=tests/fixtures/pytorch
CASES="unet_w8_state_dict unet_w8_checkpoint unet_w4_out1_dataparallel"
for case in $CASES; do
  "$BIN/convert" "$FIXTURES/$case.pth" --out "/tmp/gpu-work/$case.bpk" > /dev/null
done

step_0() {
  step 0 "the fused engine's forward at growing sizes"
  [ -x "$BIN/fused-forward" ] || { say "no fused-forward in this bundle (FEATURES=cuda builds it)"; return; }
  local failing= size t row
  for size in "64 1" "256 1" "512 1" "512 4" "512 12"; do
    set -- $size
    t=$(limit 40) || break
    UNET_FUSED_CONV=portable timeout "$t" "$BIN/fused-forward" "$W64" --side "$1" \
      --batch "$2" --runs 1 --precision f16 > "$LOGS/sizes-$1-$2.log" 2>&1
    row=$(grep -m1 "^ *f16 |" "$LOGS/sizes-$1-$2.log")
    say "| ${1}x$1 batch $2 | ${row:-failed: $(grep -m1 -i "error\|illegal\|status" "$LOGS/sizes-$1-$2.log")} |"
    [ -n "$row" ] || { failing="$1 $2"; break; }
  done
  if [ -n "$failing" ] && command -v compute-sanitizer >/dev/null && t=$(limit 150); then
    set -- $failing
    UNET_FUSED_CONV=portable timeout "$t" compute-sanitizer --tool memcheck --print-limit 10 \
      "$BIN/fused-forward" "$W64" --side "$1" --batch "$2" --runs 1 --precision f16 \
      > "$LOGS/sanitizer.log" 2>&1
    grep -E "^=========" "$LOGS/sanitizer.log" | head -n 30 | tee -a "$OUT/summary.txt"
  fi
}

step_1() {
  step 1 "outputs against PyTorch"
  local fx=$FIXTURES engine precision case t npy
  # Engine by engine, ours first: Burn's first CUDA process compiles for ~100 s.
  for engine in ${ENGINES//,/ }; do
    for case in $CASES; do
      for precision in f32 f16; do
        [ "$engine" = cpu ] && [ "$precision" = f16 ] && continue
        # A process meeting new layer shapes compiles their kernels (ours in f16 tunes each
        # shape: the w8 fixture's cost 87-91 s on 2 cores, tools/cuda-dry-run.sh; Burn's first
        # CUDA process ~105 s); later ones read them back from disk.
        t=$(limit 150) || return
        npy="/tmp/gpu-work/$case.$engine.$precision.npy"
        rm -f "$npy"
        timeout "$t" "$BIN/predict" "/tmp/gpu-work/$case.bpk" "$fx/${case}_input.png" "$npy" \
          --device "$DEVICE" --precision "$precision" --engine "$engine" >> "$LOGS/outputs.log" 2>&1
        python3 - "$case" "$engine" "$precision" "$npy" "$fx/${case}_expected_f64.npy" <<'PY' | tee -a "$OUT/summary.txt"
import sys, numpy as np
case, engine, precision, ours, expected = sys.argv[1:]
try:
    d = float(np.abs(np.load(ours) - np.load(expected)).max())
    # f16: 5e-3, but 2e-2 for the width-4 fixture, ill-conditioned for f16 on any backend
    # (rounding its folded weights to f16 alone moves its output by 4.3e-3; README).
    limit = 1e-4 if precision == "f32" else (2e-2 if "w4" in case else 5e-3)
    print(f"| {case} | {engine} | {precision} | max abs {d:.2e} | {'ok' if d <= limit else 'OVER ' + str(limit)} |")
except Exception as e:
    print(f"| {case} | {engine} | {precision} | failed: {e} |")
PY
      done
    done
    demo_slide "$engine" || return
  done
}

# `demo_slide ENGINE`: the demo slide through the trained demo model (w = 8) with ENGINE at the
# device's low precision (f16 on a GPU, bf16 on the CPU), its map against the f32 CPU map
# (issue 12's bar: within 2 levels on 99 % of pixels) and against PyTorch's (ref_pipeline.py).
demo_slide() {
  local engine=$1 precision=f16 pipeline=tests/fixtures/pipeline run device t
  # On the CPU (a smoke test) our CPU engine's bf16 alone.
  if [ "$DEVICE" = cpu ]; then [ "$engine" = cpu ] || return 0; precision=bf16; fi
  [ -f "$pipeline/demo_vips_jpeg.tif" ] || { say "| demo slide | not here |"; return 0; }
  # The f32 CPU map once a call.
  for run in cpu/f32 "$engine/$precision"; do
    [ "$run" = cpu/f32 ] && [ -n "${demo_reference:-}" ] && continue
    rm -rf "/tmp/gpu-work/demo-${run/\//-}"
    t=$(limit 150) || return 1
    device=$DEVICE
    [ "$run" = cpu/f32 ] && device=cpu
    timeout "$t" "$BIN/infer" "$pipeline/demo_vips_jpeg.tif" --out "/tmp/gpu-work/demo-${run/\//-}" \
      --device "$device" --engine "${run%/*}" --precision "${run#*/}" --overlap 0 --tissue off \
      --blend mean --truth "$pipeline/demo_mask.png" --force --quiet >> "$LOGS/demo.log" 2>&1
    demo_reference=1
  done
  python3 - "$engine" "$precision" /tmp/gpu-work/demo-{"$engine-$precision",cpu-f32} \
    "$pipeline/demo_ref_prob_overlap0.png" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
import numpy as np, tifffile
from PIL import Image
engine, precision, ours, f32, pytorch = sys.argv[1:]
def run(folder):
    summary = json.load(open(f"{folder}/demo_vips_jpeg.summary.json"))
    with tifffile.TiffFile(f"{folder}/demo_vips_jpeg.prob.tif") as tif:
        return summary, tif.pages[0].asarray().astype(np.int16)
def within_2(a, b):
    return float((np.abs(a - b) <= 2).mean())
try:
    (s, map_), (s32, map32) = run(ours), run(f32)
    close = within_2(map_, map32)
    reference = np.asarray(Image.open(pytorch).convert("L"), dtype=np.int16)
    print(f"| demo slide | {engine} {s['device']} {precision} | within 2 levels of the f32 CPU map: "
          f"{100 * close:.2f} % {'ok' if close >= 0.99 else 'UNDER 99 %'} | of PyTorch's: "
          f"{100 * within_2(map_, reference):.2f} % (f32 CPU: {100 * within_2(map32, reference):.2f} %) | "
          f"Dice {s['dice']:.4f} (f32 CPU: {s32['dice']:.4f}) |")
except Exception as e:
    print(f"| demo slide | {engine} {precision} | failed: {e!r} |")
PY
}

step_2() {
  step 2 "our fused engine on the full-width model, against the CPU path"
  [ -x "$BIN/fused-forward" ] || { say "no fused-forward in this bundle (FEATURES=cuda builds it)"; return; }
  # f16 as users get it: each layer shape's main loop tuned on the first forward and kept on
  # disk (target/environment here), then a second process, which must find the results kept
  # (its first forward within seconds); one fixed loop only if tuning gave nothing; f32, whose
  # loop is always the portable one, last.
  # "streamed" is the throughput with one batch in flight, as infer runs: the patches' upload
  # and the maps' download included, where PyTorch's rows (step 3) time the forward alone on
  # input already on the card; "one forward" is the latency of a batch waited for on its own.
  local run conv t
  for run in "tuned-first ${FUSED_PRECISIONS:-f16} 240 10" "tuned-second f16 120 10" "fixed f16 120 10" "f32 f32 120 3"; do
    set -- $run
    [ "$1" = fixed ] && grep -q "^ *f16 |" "$LOGS/fused-tuned-first.log" 2>/dev/null && continue
    t=$(limit "$3") || return
    conv=tuned
    [ "$1" = fixed ] && conv="${FIXED_CONV:-specialized_tma_mma}"
    UNET_FUSED_CONV="$conv" timeout "$t" "$BIN/fused-forward" "$W64" \
      --batch "$FUSED_BATCHES" --side "$SIDE" --runs "$4" --precision "$2" > "$LOGS/fused-$1.log" 2>&1
    say "-- $1 process ($conv)"
    # The table whole (~30 lines a precision: the first forward's seconds come first); an
    # error's dump of kernel source cut short.
    grep -v "^ *$" "$LOGS/fused-$1.log" | head -n 60 | tee -a "$OUT/summary.txt"
  done
  # The rows' last cell: the streamed batches' difference from their inputs' first forwards.
  say "-- streams: $(cat "$LOGS"/fused-*.log 2>/dev/null | awk -F'|' '
    $1 ~ /^ *f(16|32) *$/ && NF >= 7 { rows++; v = $NF; row = $1 " batch" $2; gsub(/ +/, " ", row); gsub(/ /, "", v)
      if (v + 0 != 0 || v ~ /[Nn]a[Nn]/) bad = bad ";" row "(" v ")" }
    END { if (!rows) print "no streamed rows"; else if (bad) print "streamed batches DIFFER from their first forwards:" bad; else print "every streamed batch equal to its first forward (" rows " rows)" }')"
  say "-- the tuner's measurements: each layer shape's fastest, cubek's fastest tiling, our tilings' fastest"
  tuner_rows "$LOGS/autotune.log"
}

# `tuner_rows LOG`: for each of our main loops' keys in cubecl's autotune LOG, the winner and the
# median times of the fastest candidate as cubek tiles it and of the fastest of our tilings.
tuner_rows() {
  python3 - "$1" <<'PY' | tee -a "$OUT/summary.txt"
import re, sys
units = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
ours_name_pattern = re.compile(r"_\d+x\d+x\d+_w\d+x\d+$")
keys = []
try:
    lines = open(sys.argv[1], encoding="utf-8", errors="replace").readlines()
except OSError:
    lines = []
for line in lines:
    m = re.match(r'^Fastest result (\S+)-ConvKey - Op: "(\w+)", Batch: (\d+), Height: (\d+), Width: (\d+), Inputs: (\d+), Outputs: (\d+)', line)
    if m:
        keys.append((m[1], f"{m[2]} {m[3]} x {m[4]} x {m[5]} x {m[6]} -> {m[7]}", {}))
        continue
    t = re.match(r"^Autotune\[\d+\] name (\S+) => BenchmarkComputations \{ mean: [^,]+, median: ([0-9.]+)(\D+),", line)
    if t and keys:
        keys[-1][2][t[1]] = float(t[2]) * units.get(t[3].strip(), float("nan"))
print("| key | fastest | cubek's tiling, median µs | ours, median µs | ours / cubek |")
for fastest, key, times in keys:
    def best(ours_only):
        got = [(us, name) for name, us in times.items() if name != "portable" and bool(ours_name_pattern.search(name)) == ours_only]
        return min(got) if got else (float("nan"), "-")
    (cubek, cubek_name), (ours, ours_name) = best(False), best(True)
    print(f"| {key} | {fastest} | {cubek:.1f} {cubek_name} | {ours:.1f} {ours_name} | {ours / cubek:.2f} |")
if not keys:
    print("(no tuning logged: the tuning was read back from disk, or nothing was tuned)")
PY
}

step_3() {
  step 3 "PyTorch on the same card"
  python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || { say "no CUDA PyTorch here"; return; }
  local t
  t=$(limit 150) || return
  OUT="$LOGS" timeout "$t" python3 tools/torch_anchor.py > "$LOGS/torch.log" 2>&1
  tail -n 20 "$LOGS/torch.log" | tee -a "$OUT/summary.txt"
}

# `criterion_rows LOG`: each benchmark of model-bench's LOG as ms per patch, into the summary.
criterion_rows() {
  python3 - "$1" <<'PY' | tee -a "$OUT/summary.txt"
import re, sys
units = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
name = None
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    m = re.match(r"^(forward_w64/\S+)", line)
    if m:
        name = m.group(1)
    t = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
    if name and t:
        batch = int(re.search(r"batch(\d+)", name).group(1))
        ms = float(t.group(1)) * units[t.group(2)]
        print(f"| {name} | {ms / batch:.2f} ms/patch |")
        name = None
PY
}

step_4() {
  step 4 "the full-width model, criterion"
  # On a GPU: Burn in f16 (the row issue 12 names) and f32, ours in f16 (our f32 is the
  # portable reference loop, step 2).
  local criterion bench t
  if [ "$DEVICE" = cuda ]; then criterion="${CRITERION:-burn:f16,f32 fused:f16}"; else criterion="${CRITERION:-cpu:f32 burn:f32}"; fi
  for bench in $criterion; do
    set -- ${bench/:/ }
    t=$(limit 150) || return
    UNET_BENCH_DEVICE="$DEVICE" UNET_BENCH_ENGINES="$1" UNET_BENCH_PRECISIONS="$2" UNET_BENCH_BATCHES="$BATCHES" \
      UNET_BENCH_SIDE="$SIDE" UNET_BENCH_SECONDS="${BENCH_SECONDS:-3}" timeout "$t" "$BIN/model-bench" --bench forward \
      > "$LOGS/bench-$1.log" 2>&1
    criterion_rows "$LOGS/bench-$1.log"
  done
}

# The generated slide of steps 5 and 7, once a machine.
SLIDE="/tmp/gpu-work/synthetic-$SLIDE_SIDE.tif"
synthetic_slide() {
  [ -f "$SLIDE" ] && return
  local t
  t=$(limit 120) || return
  timeout "$t" "$BIN/synthetic_slide" "$SLIDE" --width "$SLIDE_SIDE" --height "$SLIDE_SIDE" \
    >> "$LOGS/infer.log" 2>&1
}

# `infer_slide ENGINE`: infer on the generated slide with the full-width model (with the demo's
# width 8 a GPU would wait on the CPU, and the end-to-end ratio would measure nothing; on the
# CPU, a smoke test, the demo keeps it short), batch 32, its summary's figures in one row.
infer_slide() {
  local engine=$1 model=models/unet_demo_w8.bpk t
  [ "$DEVICE" = cuda ] && model="$W64"
  synthetic_slide || return
  t=$(limit 150) || return
  rm -rf "/tmp/gpu-work/$engine"
  mkdir -p "/tmp/gpu-work/$engine"
  timeout "$t" "$BIN/infer" "$SLIDE" --model "$model" --out "/tmp/gpu-work/$engine" \
    --device "$DEVICE" --engine "$engine" --batch 32 --force --quiet >> "$LOGS/infer.log" 2>&1
  python3 - "$engine" "/tmp/gpu-work/$engine/synthetic-$SLIDE_SIDE.summary.json" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
try:
    s = json.load(open(sys.argv[2]))
    print(f"| infer --engine {sys.argv[1]} | {s['engine']} {s['device']} {s['precision']} batch {s['batch']} | {s['patches_run']}/{s['patches_in_grid']} patches | "
          f"{s['seconds']:.1f} s | {s['ms_per_patch']:.2f} ms/patch | first batch after {s['seconds_to_first_batch']:.1f} s |")
except Exception as e:
    print(f"| infer --engine {sys.argv[1]} | failed: {e} |")
PY
}

step_5() {
  step 5 "infer on a generated ${SLIDE_SIDE}x${SLIDE_SIDE} slide"
  # On CUDA ours (after step 2 it starts on the tuning kept); on the CPU the default.
  local engine=auto
  [ "$DEVICE" = cuda ] && engine=fused
  infer_slide "$engine" || return
  # The bar: end to end at least 90 % of the model alone, the same engine, precision and batch.
  python3 - "/tmp/gpu-work/fused/synthetic-$SLIDE_SIDE.summary.json" "$LOGS/fused-tuned-second.log" <<'PY' | tee -a "$OUT/summary.txt"
import json, re, sys
try:
    s = json.load(open(sys.argv[1]))
    rows = [l.split("|") for l in open(sys.argv[2]) if re.match(r"^ *f16 \| +32 \|", l)]
    model_ms = float(rows[-1][3])
    print(f"| infer end to end / model only | {s['engine']} {s['precision']} batch 32 | "
          f"{s['ms_per_patch']:.2f} / {model_ms:.2f} ms/patch | {100 * model_ms / s['ms_per_patch']:.0f} % (bar: 90 %) |")
except Exception as e:
    print(f"| infer end to end / model only | not measured: {e!r} |")
PY
}

step_7() {
  step 7 "the default engine on the generated slide"
  # `--engine auto` measures AUTO_ON_CUDA's engines on the first batch and keeps the fastest
  # (the line it prints, where there are several, goes to the summary). Burn's first CUDA
  # process compiles ~100 s.
  [ "$DEVICE" = cuda ] || { say "(on CUDA only)"; return; }
  infer_slide auto || return
  grep -h "engine auto" "$LOGS/infer.log" | sed 's/^/| /; s/$/ |/' | tee -a "$OUT/summary.txt"
}

step_6() {
  step 6 "the host CPU's bf16 path"
  local amx fx=$FIXTURES case npy t
  amx=$(grep -o -w 'amx_bf16\|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')
  say "host CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-); AMX flags: ${amx:-none}"
  [ -n "$amx" ] || return
  for case in $CASES; do
    t=$(limit 30) || return
    npy="/tmp/gpu-work/$case.cpu.bf16.npy"
    rm -f "$npy"
    timeout "$t" "$BIN/predict" "/tmp/gpu-work/$case.bpk" "$fx/${case}_input.png" "$npy" \
      --device cpu --precision bf16 --engine cpu > "/tmp/gpu-work/$case.bf16.log" 2>&1
    cat "/tmp/gpu-work/$case.bf16.log" >> "$LOGS/outputs.log"
    python3 - "$case" "$npy" "$fx/${case}_expected_f64.npy" "/tmp/gpu-work/$case.bf16.log" <<'PY' | tee -a "$OUT/summary.txt"
import sys, numpy as np
case, ours, expected, log = sys.argv[1:]
try:
    kernel = open(log).read().strip().splitlines()[-1].rsplit(", ", 1)[-1].rstrip(")")
    d = float(np.abs(np.load(ours) - np.load(expected)).max())
    # The CPU tests' bars: 5e-3, and PyTorch's own bf16 error on the width-4 fixture.
    limit = 8.6e-2 if "w4" in case else 5e-3
    print(f"| {case} | cpu | bf16 ({kernel}) | max abs {d:.2e} | {'ok' if d <= limit else 'OVER ' + str(limit)} |")
except Exception as e:
    print(f"| {case} | cpu | bf16 | failed: {e} |")
PY
  done
  t=$(limit 120) || return
  UNET_BENCH_DEVICE=cpu UNET_BENCH_ENGINES=cpu UNET_BENCH_PRECISIONS=f32,bf16 UNET_BENCH_BATCHES=1 \
    UNET_BENCH_SIDE="$SIDE" UNET_BENCH_SECONDS="${BENCH_SECONDS:-3}" timeout "$t" "$BIN/model-bench" --bench forward \
    > "$LOGS/bench-cpu-amx.log" 2>&1
  criterion_rows "$LOGS/bench-cpu-amx.log"
  # Issue 14's bar: ours in bf16 at most 0.5x PyTorch's bf16 autocast on the same CPU.
  t=$(limit 90) || return
  timeout "$t" python3 tools/torch_cpu_bench.py --batch 1 --runs 3 > "$LOGS/torch-cpu.log" 2>&1
  tail -n 1 "$LOGS/torch-cpu.log" | tee -a "$OUT/summary.txt"
}

for s in ${STEPS//,/ }; do
  "step_$s"
done
say "== done ($(( SECONDS ))s)"
cut=$(awk '!seen[$0]++' "$CUT" | paste -sd, -)
[ -z "$cut" ] || say "cut short by the budget: steps $cut (a second call: STEPS=$cut BUDGET=200)"
