#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md in one call (fits a 10-minute window):
#   bash benchmarks/device_check.sh [OUT_DIR]      (default outputs/bench)
# 0. DINOv2's patch targets (Sinkhorn-Knopp) and patch loss alone, at the protocol's size (seconds);
# 1. the step table and the speed switches (python -m benchmarks.step --suite all), starting no new row
#    after STEP_BUDGET_S seconds (default 300: with the last row and the data part, the call stays
#    under ~9 minutes of a 10-minute limit);
# 2. the data pipeline on 2,048 synthetic 500 x 375 JPEGs with 4, 8 and 15 workers: the full CPU recipe
#    (uint8 crops, normalised on the device), the photometric ops on the device, and the crops on the
#    device (each also times its device stage and the copy of one batch to the GPU).
# Every result is written as JSON into OUT_DIR as soon as it exists, so a cut-off run keeps what it has.
# STEP_ARGS, PATCH_LOSS_ARGS, DATA_ARGS, N_JPEGS and WORKERS change the settings (a CPU smoke run uses tiny ones).
set -euo pipefail
out=${1:-outputs/bench}
mkdir -p "$out"
read -r -a step_args <<< "${STEP_ARGS:---suite all --budget-s ${STEP_BUDGET_S:-300}}"
read -r -a data_args <<< "--workers ${WORKERS:-4,8,15} --batches 10 ${DATA_ARGS:-}"
read -r -a patch_loss_args <<< "${PATCH_LOSS_ARGS:-}"
python3 -m benchmarks.patch_loss "${patch_loss_args[@]}" | tee "$out/patch_loss.txt"
python3 -m benchmarks.step "${step_args[@]}" --json "$out/step.json"
jpegs=$(mktemp -d)
trap 'rm -rf "$jpegs"' EXIT
python3 -m benchmarks.data --synthetic "${N_JPEGS:-2048}" --folder "$jpegs" "${data_args[@]}" --json "$out/data.json"
python3 -m benchmarks.data --folder "$jpegs" "${data_args[@]}" --device-stage photometric --json "$out/data_photometric.json"
python3 -m benchmarks.data --folder "$jpegs" "${data_args[@]}" --device-stage crops --json "$out/data_crops.json"
# The tables of docs/benchmarks.md from what was written (python -m benchmarks.report OUT_DIR --readme docs/benchmarks.md fills them).
python3 -m benchmarks.report "$out" | tee "$out/report.md"
