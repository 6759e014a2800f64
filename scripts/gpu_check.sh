#!/usr/bin/env bash
# GPU check, for a machine with CUDA (one GPU is enough; about 5-8 minutes):
#   1. the architecture matrix on CUDA in bfloat16 with sdpa (tests/test_architectures.py, marker `gpu`),
#      QLoRA 4-bit on CUDA (conf/llama2-7b-qlora.yaml, bitsandbytes) and a 1-GPU NCCL (DDP) fit of conf/tiny.yaml;
#   2. benchmarks/gated_generation.py on CUDA, SmolLM2-135M at batch 1 and 16.
# Skips cleanly (exit 0) without CUDA. Logs under ${OUT:-runs/gpu_check}.
#   bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
LOG_DIR=${OUT:-runs/gpu_check}
mkdir -p "$LOG_DIR"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False): skipped"
    exit 0
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__, "CUDA", torch.version.cuda)' \
    | tee "$LOG_DIR/device.txt"
# warm the converted SmolLM2 cache once (GGUF -> safetensors, ~20 s) so the timed parts do not pay for it
"$PY" -c 'from safety_signal.model import resolve_model_path; resolve_model_path("smollm2-135m-instruct")'

status=0
start=$(date +%s)
timeout 420 "$PY" -m pytest -q -m gpu tests/test_architectures.py -p no:randomly --durations=10 2>&1 \
    | tee "$LOG_DIR/pytest_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check: pytest -m gpu took $(( $(date +%s) - start )) s"

start=$(date +%s)
timeout 240 "$PY" benchmarks/gated_generation.py --device cuda --batch-sizes 1 16 --max-new-tokens 128 \
    --variants annealing each 2>&1 | tee "$LOG_DIR/gated_generation_cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check: benchmark took $(( $(date +%s) - start )) s"

echo "gpu_check: $([ $status -eq 0 ] && echo PASSED || echo FAILED) (logs in $LOG_DIR)"
exit $status
