#!/usr/bin/env bash
# The whole pipeline at a reduced scale on a fresh machine (about 13 minutes on 2 idle CPU cores):
#   1. collect halfcheetahvel datasets (QS_TRAJS trajectories per task and quality, committed behaviour policy)
#   2. pretrain Prompt-DT on the 45 pretraining tasks (QS_PRETRAIN_STEPS steps)
#   3. finetune with SFT and QP-SFT, full-model tuning, on the 5 test tasks (zero-shot is their step 0)
#   4. print the zero-shot / selected / final / best table and the path of the learning-curve PNG
# Everything goes to runs/quickstart/ (data, checkpoint, runs, report); nothing in data/ or pretrained/
# is touched. Rerunning skips what is done. Usage: bash benchmark/quickstart.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}
QS=${QS_DIR:-runs/quickstart}
QS_TRAJS=${QS_TRAJS:-20}                  # per task and quality (the full datasets have 100)
QS_PRETRAIN_STEPS=${QS_PRETRAIN_STEPS:-2000}
QS_STEPS=${QS_STEPS:-200}                 # finetuning steps per test task
QS_SEED=${QS_SEED:-1}
start=$(date +%s)
stamp() { echo "== [$(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s] $*"; }

stamp "1/4 collecting halfcheetahvel data ($QS_TRAJS trajectories per task and quality) -> $QS/data"
[ -f "$QS/data/halfcheetahvel/summary.json" ] ||
  $PY collect_data.py --env halfcheetahvel --data-dir "$QS/data" --num-trajs "$QS_TRAJS" --workers 2

stamp "2/4 pretraining Prompt-DT ($QS_PRETRAIN_STEPS steps) -> $QS/pretrained.pt"
[ -f "$QS/pretrained.pt" ] ||
  $PY pretrain_pdt.py --env halfcheetahvel --data-dir "$QS/data" --run-dir "$QS/pretrain" --out "$QS/pretrained.pt" \
    --total-steps "$QS_PRETRAIN_STEPS" --warmup-steps 200 --eval-every "$QS_PRETRAIN_STEPS" --eval-episodes 5 \
    --num-trajs "$QS_TRAJS" --threads 2

stamp "3/4 finetuning SFT and QP-SFT (full model, $QS_STEPS steps per test task), two processes at once"
for algo in sft qp_sft; do
  echo "python $algo.py --env halfcheetahvel --tuning full --seed $QS_SEED --num-trajs $QS_TRAJS --total-steps $QS_STEPS" \
       "--eval-every 50 --eval-episodes 5 --data-dir $QS/data --pretrained $QS/pretrained.pt --run-dir $QS/runs"
done | $PY benchmark/run.py - --workers 2 --log-dir "$QS/logs" --status-every 30

stamp "4/4 report"
$PY benchmark/report.py runs --run-dir "$QS/runs" --out-dir "$QS" --n-main "$QS_TRAJS"
stamp "done: table in $QS/runs.md, learning curves in $QS/runs.png"
