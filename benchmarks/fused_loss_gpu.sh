#!/usr/bin/env bash
# One prepared GPU run of benchmarks/fused_loss.py (H100/H200, bf16, generalized JSD beta = 0.5,
# forward + backward). Installs nothing; imports only torch (+ triton / liger_kernel if present)
# and reference_impls.losses (fused, fused_grads). Run from the repository root:
#
#     OUT=/some/folder bash benchmarks/fused_loss_gpu.sh
#
# Cases: the target (N = 8192, student hidden 2048, teacher hidden 4096, V = 128256),
# N = 16384 at V = 151936 (the naive loss is expected to OOM there: recorded as "OOM"), and a
# small grid. The naive baseline runs last in each case so its OOM cannot disturb the others.
# Wall time measured: 84 s on an H200, 96 s on an H100 (most of it torch.compile of the chunk kernel).
set -euo pipefail
OUT="${OUT:?set OUT to an output folder}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/gpu.txt"

IMPLS="fused@512,fused,fused-compiled,fused-compiled@4096"
if python -c "import liger_kernel" 2>/dev/null; then IMPLS="liger,$IMPLS"; fi

# 1. The two target cases (fused chunk budget: 512 MiB, the GPU default 2 GiB, and 4 GiB compiled).
timeout 240 python benchmarks/fused_loss.py --device cuda --dtype bf16 \
  --hidden-student 2048 --hidden-teacher 4096 --beta 0.5 \
  --grid 8192x128256,16384x151936 --impls "$IMPLS,naive" --warmup 2 --repeats 5 \
  --json "$OUT/fused_loss_targets.json" --markdown "$OUT/fused_loss_targets.md" \
  --plot "$OUT/fused_loss_targets.png" 2>&1 | tee "$OUT/targets.log"

# 2. A small grid (eager fused only: no extra compilations).
timeout 120 python benchmarks/fused_loss.py --device cuda --dtype bf16 \
  --hidden-student 2048 --hidden-teacher 4096 --beta 0.5 \
  --grid 2048x32000,4096x65536,8192x32000 --impls "${IMPLS%%,fused-compiled*},naive" --warmup 2 --repeats 5 \
  --json "$OUT/fused_loss_grid.json" --markdown "$OUT/fused_loss_grid.md" \
  --plot "$OUT/fused_loss_grid.png" 2>&1 | tee "$OUT/grid.log"
