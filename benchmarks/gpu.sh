#!/usr/bin/env bash
# One prepared GPU run (about 6 minutes, every step under its own timeout): install densreg without
# network, print the GPU and versions, run benchmarks/speed.py on CUDA, train row-lstm for ~1.5 minutes
# on CUDA (bf16 autocast, batch 512) and evaluate it, then time `densreg eval --compile` on CUDA.
# Results land in $OUT (default ./gpu-out): gpu.log (everything, `set -x`), speed-cuda.md, the run's
# checkpoint, log and eval JSON, summary.md; last, if time is left, NADE trained under torchrun with NCCL
# (distributed-cuda.md). Run from the repository root:
#
#     OUT=/some/dir bash benchmarks/gpu.sh
#
# Environment: PYTHON (default python3); DENSREG_GPU_DATA (binarized_mnist.npz; default: the first of
# shared/data/, /work/shared/data/, out/, ./ that has it, else the 8x8 digits dataset);
# DENSREG_GPU_SH_DRYRUN=1 swaps cuda for cpu, uses tiny sizes and skips the compile step (how the script is
# tested on CPU); DENSREG_GPU_SH_NO_INSTALL=1 skips the pip install (densreg already installed).
set -u
OUT="${OUT:-./gpu-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee -a "$OUT/gpu.log") 2>&1
set -x
PYTHON="${PYTHON:-python3}"
DRYRUN="${DENSREG_GPU_SH_DRYRUN:-0}"
START=$(date +%s)
if [ "$DRYRUN" = "1" ]; then
  DEVICE=cpu; SPEED_ARGS=(--quick --models nade,row-lstm --size 4 --reps 1 --no-threads-probe); TRAIN_MINUTES=0.05; TRAIN_EPOCHS=1
  TRAIN_SET=(--set layers=2 --set hidden=8); TRAIN_BATCH=512; SPLIT_LIMIT=1
else
  DEVICE=cuda; SPEED_ARGS=(--reps 3 --eval-batch 1024 --sample-n 64); TRAIN_MINUTES=1.5; TRAIN_EPOCHS=20
  TRAIN_SET=(--set layers=7 --set hidden=16); TRAIN_BATCH=512; SPLIT_LIMIT=0
fi
summary() { echo "$*" | tee -a "$OUT/summary.md"; }
elapsed() { echo $(( $(date +%s) - START )); }
: > "$OUT/summary.md"
summary "# benchmarks/gpu.sh on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC'), device $DEVICE (dry run: $DRYRUN)"

# 1. install without network; if that fails, put the checkout on the path with a minimal dist-info
#    (the entry points register the built-in plugins)
if [ "$DRYRUN" != "1" ] && [ "${DENSREG_GPU_SH_NO_INSTALL:-0}" != "1" ]; then
  timeout 120 "$PYTHON" -m pip install --no-deps --no-build-isolation -e . || echo "pip install failed"
fi
if ! timeout 60 "$PYTHON" -c "import densreg.plugins.nade, densreg.app.cli"; then
  SHIM="$OUT/shim"; rm -rf "$SHIM"; mkdir -p "$SHIM/densreg" "$SHIM/densreg-0.1.0.dist-info"
  cp -r densreg/. "$SHIM/densreg/"
  for sub in registry app plugins export; do ln -s "$(pwd)/$sub" "$SHIM/densreg/$sub"; done
  printf 'Metadata-Version: 2.1\nName: densreg\nVersion: 0.1.0\n' > "$SHIM/densreg-0.1.0.dist-info/METADATA"
  "$PYTHON" - "$SHIM/densreg-0.1.0.dist-info/entry_points.txt" <<'EOF'
import re, sys
text = open("pyproject.toml").read()
section = text.split("[project.entry-points.densreg]", 1)[1].split("\n[", 1)[0]
entries = re.findall(r'^(\w[\w-]*) = "([^"]+)"', section, re.M)
lines = ["[console_scripts]", "densreg = densreg.app.cli:main", "", "[densreg]", *(f"{k} = {v}" for k, v in entries)]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
EOF
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  timeout 60 "$PYTHON" -c "import densreg.plugins.nade, densreg.app.cli" || { summary "densreg does not import; stopping"; exit 3; }
fi

# 2. the machine
timeout 30 nvidia-smi || echo "nvidia-smi not available"
timeout 60 "$PYTHON" - <<'EOF' | tee -a "$OUT/summary.md"
import os, platform, torch
print(f"- python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuda available {torch.cuda.is_available()}, {os.cpu_count()} CPUs")
if torch.cuda.is_available():
    print(f"- GPU {torch.cuda.get_device_name(0)}, bf16 supported {torch.cuda.is_bf16_supported()}")
try:
    import onnxruntime
    print(f"- onnxruntime {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}")
except ImportError:
    print("- onnxruntime not installed")
EOF
if [ "$DEVICE" = "cuda" ] && ! timeout 60 "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  summary "CUDA is not available to torch on this machine: nothing to measure, stopping."
  exit 2
fi

# 3. the speed benchmark on the device
if timeout 200 "$PYTHON" benchmarks/speed.py --device "$DEVICE" --out "$OUT/speed-$DEVICE.md" "${SPEED_ARGS[@]}"; then
  summary "speed benchmark: $OUT/speed-$DEVICE.md ($(elapsed) s so far)"
else
  summary "speed benchmark failed or timed out (exit $?)"
fi

# 4. a short row-lstm training (bf16 autocast, batch 512), then its test NLL
DATA="${DENSREG_GPU_DATA:-}"
for candidate in shared/data/binarized_mnist.npz /work/shared/data/binarized_mnist.npz out/binarized_mnist.npz \
                 binarized_mnist.npz; do
  if [ -z "$DATA" ] && [ -f "$candidate" ]; then DATA="$candidate"; fi
done
if [ -n "$DATA" ]; then
  DATASET=(--dataset binarized-mnist --data "$DATA")
else
  summary "no binarized_mnist.npz found (set DENSREG_GPU_DATA): training on digits instead"
  DATASET=(--dataset digits)
fi
if [ "$SPLIT_LIMIT" = "1" ]; then DATASET=(--dataset digits); fi
RUN="$OUT/row-lstm-gpu.safetensors"
rm -f "$OUT"/row-lstm-gpu.*
if timeout 240 "$PYTHON" -m densreg train row-lstm "${DATASET[@]}" "${TRAIN_SET[@]}" --device "$DEVICE" \
     --precision bf16 --batch-size "$TRAIN_BATCH" --lr 0.002 --lr-decay 0.95 --clip-grad 5 \
     --epochs "$TRAIN_EPOCHS" --max-minutes "$TRAIN_MINUTES" --out "$RUN"; then
  "$PYTHON" - "$OUT/row-lstm-gpu.log.jsonl" <<'EOF' | tee -a "$OUT/summary.md"
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    print(f"- row-lstm epoch {e['epoch']}: train {e['train_nll']:.3f}, valid {e['valid_nll']:.3f} nats, "
          f"{e['images_per_s']:.0f} training images/s, {e['seconds']:.1f} s")
EOF
  timeout 120 "$PYTHON" -m densreg eval "$RUN" "${DATASET[@]}" --device "$DEVICE" --json > "$OUT/row-lstm-gpu.eval.json" \
    && summary "- test: $(tr -d '\n ' < "$OUT/row-lstm-gpu.eval.json")" || summary "- eval failed or timed out"
else
  summary "row-lstm training failed or timed out (exit $?)"
fi

# 5. torch.compile of evaluation (mode reduce-overhead: CUDA graphs for the recurrent models), if time is left
if [ "$DRYRUN" != "1" ] && [ "$(elapsed)" -lt 330 ] && [ -f "$RUN" ]; then
  timeout 120 "$PYTHON" -m densreg eval "$RUN" "${DATASET[@]}" --device "$DEVICE" --compile --json \
    > "$OUT/row-lstm-gpu.eval-compiled.json" \
    && summary "- compiled eval: $(tr -d '\n ' < "$OUT/row-lstm-gpu.eval-compiled.json")" \
    || summary "- compiled eval failed or timed out"
else
  summary "- compiled eval skipped ($(elapsed) s elapsed)"
fi
# 6. distributed training with NCCL (issue 16): NADE under torchrun, one process per GPU
if [ "$DRYRUN" != "1" ] && [ "$(elapsed)" -lt 380 ]; then
  if [ -n "$DATA" ]; then DIST_DATA=(--data "$DATA"); else DIST_DATA=(); fi
  timeout 90 "$PYTHON" benchmarks/distributed.py --backend nccl --device cuda --images 5000 --epochs 2 \
      --batch-size 500 "${DIST_DATA[@]}" --out "$OUT/distributed-cuda.md" \
    && summary "- distributed (NCCL): $OUT/distributed-cuda.md" || summary "- distributed (NCCL) failed or timed out"
else
  summary "- distributed (NCCL) skipped ($(elapsed) s elapsed)"
fi
summary "done in $(elapsed) s"
