#!/usr/bin/env bash
# The GPU figures in one command, for a short lease on a CUDA machine:
#   bash benchmarks/gpu.sh OUT_DIR
# 1. the suite's GPU benchmarks (suite.py --device cuda): the stage-3 step at Llama-2-7B's shape (SDPA,
#    checkpointing, eager; tokens/s, peak memory, MFU), stage 1 at the paper's shape (batch 64, bf16
#    autocast, MFU), the encoders in bf16 against unimol-tools, and retrieval ranking (N = 10k);
# 2. the main job (bench run retrieval --encoder unimol) through Lightning Fabric on CUDA, in bf16-mixed
#    and then 32-true, timed. Its text tower starts from random weights (projector.pretrained=false), so
#    the run needs no MiniLM weights on the machine: its metrics are not the CPU main job's.
# Each part has its own time limit (seconds: SUITE_S, JOB_S), so a slow part cannot take the others' time.
# A lease too short for everything runs a share per call: BENCHES (the suite's benchmarks) and PRECISIONS (the main
# job's; empty skips it) choose. JOB_ARGS adds recipe overrides to the main job (e.g. data.num_workers=4, to see
# how much of its step is the host's batch loading).
set -u
out=${1:?usage: benchmarks/gpu.sh OUT_DIR}
python=${PYTHON:-python3}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv >"$out/nvidia-smi.csv"

timeout "${SUITE_S:-330}" "$python" benchmarks/suite.py --device cuda \
    --only ${BENCHES:-stage3-step stage1-paper encoders retrieval} --out "$out/suite"
echo "suite: exit $?"

for precision in ${PRECISIONS-bf16-mixed 32-true}; do
    start=$(date +%s%N)
    timeout "${JOB_S:-150}" "$python" -c "from molbridge.core.cli import entry; entry()" run retrieval \
        --encoder unimol --output "$out/main-job-$precision" tracking.enabled=false projector.pretrained=false \
        train.accelerator=cuda train.precision="$precision" ${JOB_ARGS:-} >"$out/main-job-$precision.log" 2>&1
    status=$?
    echo "main job $precision: exit $status in $((($(date +%s%N) - start) / 1000000)) ms"
    grep -a -E "full_acc|best valid" "$out/main-job-$precision.log"
    rm -rf "$out/main-job-$precision/checkpoints"  # weights of random-text-tower runs: nothing to keep
done
