# Sourced by every experiment script in benchmark/: the scale's settings and the helpers that
# make data and checkpoints when missing, print finetuning commands, run them and write the report.
#
#   SCALE=smoke  seconds: a fresh tiny dataset and checkpoint under runs/smoke/, 2 steps per run
#                (the test suite runs every script at this scale)
#   SCALE=cpu    (default) one env (halfcheetahvel), 2 seeds, 200 steps per task, an evaluation every 100
#                steps with the env's episodes (EPISODES empty: common/rollout.py EVAL_EPISODES, sized so that
#                an evaluation can rank checkpoints; benchmark/results/eval_noise/)
#   SCALE=paper  the paper's protocol: 4 envs, 3 seeds, 1000 steps per task, an evaluation every 250 steps
#
# Any setting can be overridden from the environment, e.g.
#   SCALE=cpu ENVS="halfcheetahvel antdir" SEEDS="1 2 3" WORKERS=2 bash benchmark/table1.sh
# DRY_RUN=1 prints the commands instead of running them. Runs whose result.json exists are skipped,
# so an interrupted script continues where it stopped when run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCALE=${SCALE:-cpu}
SETTINGS="ENVS SEEDS STEPS EVAL_EVERY EPISODES ALGOS TUNINGS ABL_TUNINGS NUM_TRAJS N_MAIN ALPHAS SIZES TASKS ONLINE_ITERS ONLINE_EVAL GROUP MEMBERS"
declare -A OVERRIDDEN=()  # settings given in the environment: quoted with the command in every table
for v in $SETTINGS; do [ -n "${!v+x}" ] && OVERRIDDEN[$v]=1; done
PY=${PYTHON:-python}
WORKERS=${WORKERS:-2}
RUN_FLAGS=${RUN_FLAGS:-}  # more flags for benchmark/run.py, e.g. "--executor slurm --partition gpu --gpus-per-task 1"
DRY_RUN=${DRY_RUN:-0}
# the lists of algorithms and tunings come from their one source in the Python code
NAMES=$($PY -c "from common.flags import ALGOS; from common.tuning import TUNINGS; print(' '.join(ALGOS) + '|' + ' '.join(TUNINGS))")
ALL_ALGOS=${NAMES%%|*}
ALL_TUNINGS=${NAMES##*|}
case "$SCALE" in
  smoke)
    : "${ENVS:=halfcheetahvel}" "${SEEDS:=1}" "${STEPS:=2}" "${EVAL_EVERY:=2}" "${EPISODES:=1}"
    : "${ALGOS:=sft qp_sft}" "${TUNINGS:=prompt full}" "${NUM_TRAJS:=3}" "${N_MAIN:=3}"
    : "${ALPHAS:=0.1 1}" "${SIZES:=3/128/1 1/32/1}" "${TASKS:=first}" "${ABL_TUNINGS:=full}"
    : "${ONLINE_ITERS:=2}" "${ONLINE_EVAL:=1}" "${GROUP:=2}" "${MEMBERS:=1}"
    : "${ROOT_DIR:=runs/smoke}" "${DATA_DIR:=$ROOT_DIR/data}" "${PRETRAINED_DIR:=$ROOT_DIR/pretrained}"
    : "${RUN_DIR:=$ROOT_DIR/runs}" "${OUT_DIR:=$ROOT_DIR/results}" "${LOG_DIR:=$ROOT_DIR/logs}"
    : "${PRETRAIN_RUN_DIR:=$ROOT_DIR/pretrain_runs}" "${INIT_DIR:=$ROOT_DIR/o2o_init}"
    # 3 trajectories of the test tasks and 2 pretraining tasks; a 20-step pretraining
    : "${COLLECT_FLAGS:=--num-trajs 3}" "${PRETRAIN_FLAGS:=--total-steps 20 --eval-every 20 --eval-episodes 1 --train-tasks 2}"
    ;;
  cpu)
    : "${ENVS:=halfcheetahvel}" "${SEEDS:=1 2}" "${STEPS:=200}" "${EVAL_EVERY:=100}" "${EPISODES:=}"
    : "${ALGOS:=$ALL_ALGOS}" "${TUNINGS:=$ALL_TUNINGS}" "${NUM_TRAJS:=5 10 25 50}" "${N_MAIN:=50}"
    : "${ALPHAS:=0.001 0.01 0.1 1 2}" "${SIZES:=1/64/1 2/96/1 3/128/1}" "${TASKS:=all}"
    : "${ABL_TUNINGS:=full}"  # the ablations (figures 1-4, 7, table 6) use one tuning at this scale
    # online.sh: iterations per task, evaluation every, rollouts per group, offline members of a mixed group
    : "${ONLINE_ITERS:=10}" "${ONLINE_EVAL:=5}" "${GROUP:=8}" "${MEMBERS:=2}"
    : "${ROOT_DIR:=benchmark/results/cpu}" "${DATA_DIR:=data}" "${PRETRAINED_DIR:=pretrained}"
    : "${RUN_DIR:=$ROOT_DIR/runs}" "${OUT_DIR:=$ROOT_DIR}"
    : "${COLLECT_FLAGS:=--workers 2}" "${PRETRAIN_FLAGS:=}"
    ;;
  paper)
    : "${ENVS:=halfcheetahvel halfcheetahdir antdir metaworld}" "${SEEDS:=1 2 3}" "${STEPS:=1000}"
    : "${EVAL_EVERY:=250}" "${EPISODES:=}" "${ALGOS:=$ALL_ALGOS}" "${TUNINGS:=$ALL_TUNINGS}"
    : "${NUM_TRAJS:=5 10 25 50}" "${N_MAIN:=50}" "${ALPHAS:=0.001 0.01 0.1 1 2}" "${TASKS:=all}"
    : "${ABL_TUNINGS:=$ALL_TUNINGS}"
    : "${ONLINE_ITERS:=100}" "${ONLINE_EVAL:=25}" "${GROUP:=16}" "${MEMBERS:=4}"
    : "${SIZES:=3/128/1 6/256/4 12/256/4 12/512/8 16/768/12}"
    : "${ROOT_DIR:=benchmark/results/paper}" "${DATA_DIR:=data}" "${PRETRAINED_DIR:=pretrained}"
    : "${RUN_DIR:=$ROOT_DIR/runs}" "${OUT_DIR:=$ROOT_DIR}"
    : "${COLLECT_FLAGS:=--workers 2}" "${PRETRAIN_FLAGS:=}"
    ;;
  *) echo "error: SCALE must be smoke, cpu or paper (got '$SCALE')" >&2; exit 2 ;;
esac
LOG_DIR=${LOG_DIR:-runs/logs/$SCALE}  # one log per finetuning run
INIT_DIR=${INIT_DIR:-runs/o2o_init/$SCALE}  # online.sh's SFT runs with saved adapters (never in git)
PRETRAIN_RUN_DIR=${PRETRAIN_RUN_DIR:-runs}  # pretraining's resumable state (large, never in git)
[ "$WORKERS" -ge 1 ] 2>/dev/null || { echo "error: WORKERS must be a positive integer (got '$WORKERS')" >&2; exit 2; }
for a in $ALGOS; do [ -f "$a.py" ] || { echo "error: unknown algorithm '$a' in ALGOS; choose from: $ALL_ALGOS" >&2; exit 2; }; done
for t in $TUNINGS $ABL_TUNINGS; do case " $ALL_TUNINGS " in *" $t "*) ;; *) echo "error: unknown tuning '$t' in TUNINGS; choose from: $ALL_TUNINGS" >&2; exit 2 ;; esac; done

# checkpoint path of an env at a model size L/E/H (the naming of pretrain_pdt.py's default --out)
ckpt() {
  local env=$1 size=${2:-3/128/1} L E H
  IFS=/ read -r L E H <<< "$size"
  if [ "$size" = 3/128/1 ]; then echo "$PRETRAINED_DIR/$env.pt"; else echo "$PRETRAINED_DIR/${env}_l${L}_e${E}_h${H}.pt"; fi
}

# the env's datasets, collected when missing (collect_data.py skips complete files)
ensure_data() {
  local env=$1
  [ -f "$DATA_DIR/$env/summary.json" ] && return 0
  if [ "$DRY_RUN" = 1 ]; then echo "# would collect: $PY collect_data.py --env $env --data-dir $DATA_DIR $COLLECT_FLAGS"; return 0; fi
  local tasks=()
  # smoke: only the test tasks, the first 2 validation tasks and the 2 pretraining tasks its pretraining uses
  [ "$SCALE" = smoke ] && read -r -a tasks <<< "--tasks $($PY -c "from common.envs import spec; s = spec('$env')
print(*sorted(set(s.test_tasks) | set(s.val_tasks[:2]) | set(s.train_tasks[:2])))")"
  echo "== collecting $env datasets into $DATA_DIR"
  # shellcheck disable=SC2086
  $PY collect_data.py --env "$env" --data-dir "$DATA_DIR" $COLLECT_FLAGS "${tasks[@]}"
}

# the pretrained checkpoint of an env and model size, pretrained when missing (resumable)
ensure_pretrained() {
  local env=$1 size=${2:-3/128/1} L E H out
  out=$(ckpt "$env" "$size")
  [ -f "$out" ] && return 0
  IFS=/ read -r L E H <<< "$size"
  ensure_data "$env"
  if [ "$DRY_RUN" = 1 ]; then echo "# would pretrain: $out"; return 0; fi
  echo "== pretraining $env at n_layer $L, n_embd $E, n_head $H -> $out"
  # shellcheck disable=SC2086
  $PY pretrain_pdt.py --env "$env" --n-layer "$L" --n-embd "$E" --n-head "$H" --data-dir "$DATA_DIR" \
    --run-dir "$PRETRAIN_RUN_DIR" --out "$out" --num-trajs "$N_MAIN" --threads "$((WORKERS > 1 ? 2 : 1))" $PRETRAIN_FLAGS
}

declare -A TASK_FLAGS=()
task_flags() {  # TASKS=all: every test task; first: only the first (smoke); else a list of task ids
  if [ -z "${TASK_FLAGS[$1]+x}" ]; then
    case "$TASKS" in
      all) TASK_FLAGS[$1]="" ;;
      first) TASK_FLAGS[$1]="--tasks $($PY -c "from common.envs import spec; print(spec('$1').test_tasks[0])")" ;;
      *) TASK_FLAGS[$1]="--tasks $TASKS" ;;
    esac
  fi
}

# one finetuning command: ft ALGO ENV SEED [flags...]; MODEL_SIZE=L/E/H picks the checkpoint
ft() {
  local algo=$1 env=$2 seed=$3; shift 3
  task_flags "$env"
  echo "python $algo.py --env $env --seed $seed --total-steps $STEPS --eval-every $EVAL_EVERY" \
       "${EPISODES:+--eval-episodes $EPISODES }--data-dir $DATA_DIR --run-dir $RUN_DIR" \
       "--pretrained $(ckpt "$env" "${MODEL_SIZE:-3/128/1}") ${TASK_FLAGS[$env]} $*"
}

# run the commands read from stdin with benchmark/run.py, then write the experiment's report
run_and_report() {
  local exp=$1 dry=()
  [ "$DRY_RUN" = 1 ] && dry=(--dry-run)
  # shellcheck disable=SC2086
  $PY benchmark/run.py - --workers "$WORKERS" --log-dir "$LOG_DIR" $RUN_FLAGS "${dry[@]}"
  [ "$DRY_RUN" = 1 ] && return 0
  report "$exp"
}

report() {
  local made="SCALE=$SCALE" v
  for v in $SETTINGS; do [ -z "${OVERRIDDEN[$v]+x}" ] || made+=" $v=\"${!v}\""; done
  $PY benchmark/report.py "$1" --run-dir "$RUN_DIR" --out-dir "$OUT_DIR" --data-dir "$DATA_DIR" --n-main "$N_MAIN" \
    --envs $ENVS --abl-tunings $ABL_TUNINGS --made-by "$made bash benchmark/$1.sh"
}

# Table 1's grid (also Figure 8's and Table 4's): seeds outermost, so one seed's table is complete first
main_grid() {
  local seed env tuning algo
  for seed in $SEEDS; do for env in $ENVS; do for tuning in $TUNINGS; do for algo in $ALGOS; do
    ft "$algo" "$env" "$seed" --tuning "$tuning" --quality expert --num-trajs "$N_MAIN"
  done; done; done; done
}
