#!/usr/bin/env bash
# One device call on the lent GPU machine (see ../shared/gpu/README.md): carry [".whl", ".gpudata"].
#   .whl: bash ../shared/gpu/make_wheels.sh .whl && pip wheel . --no-deps -w .whl
#   .gpudata: cp -r ../shared/data/hippocampus .gpudata/
# Runs the semi-supervised benchmark (gpu profile; ARMS below), then the trainer speed benchmark
# with the time left, and leaves its results under $OUT. BUDGET_S: wall-clock seconds for it all.
# The benchmark runs with --continue: when one call's time runs out, a SECOND call of this script
# made at once (the machine stays warm for 30 s, /tmp is kept) keeps the prepared data and the
# finished arms and continues the interrupted ones from their latest checkpoint (every 5 epochs).
# Give that second call BUDGET_S = the device time left minus a minute (status says what is left).
set -uo pipefail
BUDGET_S=${BUDGET_S:-570}
# 2026-11-26 (H100): QG-SSL trained 35 of 40 epochs in one call beside the supervised arm (about
# 12.5 s per epoch, validation and plots included), so three arms need two calls
ARMS=${ARMS:-"supervised pl_mirror qg_ssl"}  # pl_mirror: nnUNetTrainerQGSSL_PLQW, the trainer measured on CPU
# JOB=drift instead: the quality predictor drift / test-case ranking benchmark (gpu profile, six g side
# by side at the reference budget; not run on a GPU yet, so it may need the whole call)
JOB=${JOB:-ssl}
START=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
export nnUNet_extTrainer=/tmp/site/nnunet_qg/_ext_trainers  # .pth hooks do not run from --target folders
LOG=$OUT/benchmark.log
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -c "import torch; print(torch.__version__)"; } > "$LOG" 2>&1
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 5 > "$OUT/gpu_utilisation.csv" &
SMI=$!

if [ "$JOB" = drift ]; then
  timeout $(( $(left) - 20 )) python3 benchmarks/quality_drift_benchmark.py --profile gpu --data .gpudata/hippocampus \
      --reader NibabelIO --work /tmp/drift --out "$OUT/quality_drift_gpu.json" >> "$LOG" 2>&1
  echo "drift benchmark exit code $? after $(( $(date +%s) - START )) s" >> "$LOG"
  kill $SMI 2>/dev/null
  cp /tmp/drift/nnUNet_results/*/*/fold_0/{quality_drift.json,quality_drift.png,training_log_*.txt} "$OUT"/ 2>/dev/null
  exit 0
fi

# SEED=S: paired arms (same initial weights and labelled patches; nnU-Net's labelled loader then runs in
# the training process, which is slower on a GPU); REPEATS=N: N runs per arm (seeds S..S+N-1)
timeout $(( $(left) - ${SPEED_RESERVE_S:-25} )) nnUNetv2_qg_benchmark -i .gpudata/hippocampus --profile gpu --arms $ARMS \
    --n-proc-da "${N_PROC_DA:-3}" --reader NibabelIO -o /tmp/bench --continue ${SEED:+--seed $SEED} \
    ${REPEATS:+--repeats $REPEATS} >> "$LOG" 2>&1
echo "benchmark exit code $? after $(( $(date +%s) - START )) s" >> "$LOG"
pkill -f nnUNetv2_train; pkill -f nnUNetv2_predict; sleep 2  # a timed-out benchmark leaves its children running
cp /tmp/bench/ssl_benchmark.json /tmp/bench/ssl_benchmark.md /tmp/bench/ssl_benchmark.png "$OUT"/ 2>/dev/null

if [ -f /tmp/bench/ssl_benchmark.json ] && [ "$(left)" -gt 75 ]; then
  export nnUNet_raw=/tmp/bench/work/nnUNet_raw nnUNet_preprocessed=/tmp/bench/work/nnUNet_preprocessed \
         nnUNet_results=/tmp/speed_results nnUNet_n_proc_DA=12 nnUNet_compile=f
  timeout $(( $(left) - 25 )) python3 benchmarks/trainer_speed_benchmark.py -d 700 --device cuda --iterations 15 \
      --trainers ${SPEED_TRAINERS:-nnUNetTrainer nnUNetTrainerQGSSL nnUNetTrainerQGSSL_lowMemory nnUNetTrainerMeanTeacher} \
      --out "$OUT/trainer_speed.json" >> "$LOG" 2>&1
  echo "speed benchmark exit code $? after $(( $(date +%s) - START )) s" >> "$LOG"
fi
kill $SMI 2>/dev/null
echo "done after $(( $(date +%s) - START )) s" >> "$LOG"
cp "$LOG" "/tmp/bench/work/logs/gpu_run_call_$START.log" 2>/dev/null  # every call's log, in the archive
# training logs, progress and calibration plots of every arm, in one archive
cd /tmp/bench/work 2>/dev/null && tar czf "$OUT/logs.tar.gz" logs \
    $(find nnUNet_results_r* -name "*.png" -o -name "training_log_*.txt" -o -name "quality_warmup_metrics.json") 2>/dev/null
