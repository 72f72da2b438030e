#!/bin/sh
# GPU check: the KD-overhead and time-to-accuracy benchmarks on CUDA, plus the zoo latency,
# in one short run (about 3 minutes on an H100). Needs the venv (make setup) or an
# environment with torch + this package, and Fashion-MNIST (the IDX files: set
# KDW_DATA_DIR, or apt-get install dataset-fashion-mnist).
#
#   sh benchmarks/gpu_check.sh            # writes benchmarks/out/*.json and prints the tables
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONUNBUFFERED=1
"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__,
      "| bf16:", torch.cuda.is_bf16_supported())
PYEOF
echo "== KD overhead (cuda) =="
"$PY" benchmarks/kd_overhead.py --device cuda --epochs 4
echo "== time to accuracy (cuda) =="
"$PY" benchmarks/time_to_accuracy.py --device cuda
echo "== zoo latency (cuda) =="
"$PY" benchmarks/zoo_latency.py --device cuda || true
