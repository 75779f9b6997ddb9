#!/usr/bin/env bash
# Optional checks on a CUDA machine: the GPU tests, then speed measured there side by side.
#
#   benchmarks/gpu_check.sh OUT [PDCR_CHECKPOINT DRIVE_ROOT TRUTH_CACHE]
#
# 1. pytest -m gpu: PdCR on CUDA gives the CPU's ATEs and component ranking; the M3-JEPA
#    predictor's sparse and dense dispatch agree on CUDA; Lightning AGD training learns there.
# 2. benchmarks/m3jepa_speed.py on CUDA (sparse / dense throughput at E = 12, k = 4).
# 3. With a PdCR checkpoint, DRIVE and a truth cache (benchmarks/pdcr_speed.py --truth-cache):
#    pdcr_speed on CUDA and on all CPU cores of the same machine.
# Each step runs even if an earlier one fails; the script exits non-zero if any failed.
set -uo pipefail
out=${1:-bench_out/gpu}
mkdir -p "$out"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
python3 -m pytest -q -m gpu -p no:cacheprovider tests/pdcr/test_pdcr_device.py tests/m3jepa/test_m3jepa_gpu.py \
  2>&1 | tee "$out/gpu_tests.log" || status=1
python3 benchmarks/m3jepa_speed.py --device cuda --rounds 5 --out "$out/m3jepa_speed_cuda" || status=1
if [ $# -ge 4 ]; then
  common=(--checkpoint "$2" --data "drive:$3" --truth-cache "$4")
  python3 benchmarks/pdcr_speed.py "${common[@]}" --device cuda --out "$out/pdcr_speed_cuda" || status=1
  python3 benchmarks/pdcr_speed.py "${common[@]}" --device cpu --threads "$(nproc)" --out "$out/pdcr_speed_cpu" \
    || status=1
fi
exit $status
