#!/usr/bin/env bash
# Beyond the paper (online_grpo.py, online_ppo.py): online GRPO, LUFFY-mixed GRPO and online PPO against
# zero-shot and the best offline method (Table 1's runs: expert data, full tuning, chosen on validation
# scores), at one env-step budget: ONLINE_ITERS iterations of GROUP rollouts per test task. The online
# settings come from the validation search `python benchmark/tune.py --envs ENV --online` (presets).
#   SCALE=cpu ENVS="metaworld antdir" SEEDS="1 2 3" bash benchmark/online.sh
source "$(dirname "$0")/scale.sh"
TUNINGS=full  # the comparison is in full-model tuning
for env in $ENVS; do ensure_pretrained "$env"; ensure_data "$env"; done
online() {  # online ALGO ENV SEED RUN_NAME [flags...]
  local algo=$1 env=$2 seed=$3 name=$4; shift 4
  task_flags "$env"
  echo "python $algo.py --env $env --seed $seed --total-steps $ONLINE_ITERS --eval-every $ONLINE_EVAL" \
       "${EPISODES:+--eval-episodes $EPISODES }--data-dir $DATA_DIR --run-dir $RUN_DIR --pretrained $(ckpt "$env")" \
       "${TASK_FLAGS[$env]} --tuning full --quality expert --num-trajs $N_MAIN --group-size $GROUP" \
       "--run-name ${name}_${env}_full_expert_n${N_MAIN}_s${seed} $*"
}
# offline-to-online: mixed GRPO from an SFT run's saved adapters, made first (adapters stay out of git, so
# the SFT runs go to INIT_DIR, made again on a fresh machine only where the online run is not finished)
init_run() { echo "sft_${1}_full_expert_n${N_MAIN}_s${2}"; }
# mixed GRPO's offline members per group: MEMBERS when set, else the validation search's choice
# (benchmark/tune.py --online, common/presets.json [env][full][online_grpo_mixed]) scaled to GROUP
declare -A MIX=()
for env in $ENVS; do
  if [ -n "${OVERRIDDEN[MEMBERS]+x}" ]; then MIX[$env]=$MEMBERS; else
    MIX[$env]=$($PY -c "from common.flags import preset
p = preset('$env', 'full', 'online_grpo_mixed')[0]
print(max(1, round(p['offline_members'] * $GROUP / p['group_size'])) if p else $MEMBERS)")
  fi
done
for seed in $SEEDS; do for env in $ENVS; do
  [ -f "$RUN_DIR/online_grpo_mixed_from_offline_${env}_full_expert_n${N_MAIN}_s${seed}/result.json" ] && continue
  task_flags "$env"
  echo "python sft.py --env $env --seed $seed --total-steps $STEPS --eval-every $EVAL_EVERY ${EPISODES:+--eval-episodes $EPISODES}" \
       "--data-dir $DATA_DIR --run-dir $INIT_DIR --pretrained $(ckpt "$env") ${TASK_FLAGS[$env]} --tuning full" \
       "--quality expert --num-trajs $N_MAIN --save-model selected --run-name $(init_run "$env" "$seed")"
done; done | $PY benchmark/run.py - --workers "$WORKERS" --log-dir "$LOG_DIR" $RUN_FLAGS $([ "$DRY_RUN" = 1 ] && echo --dry-run)
{
  main_grid  # Table 1's runs (finished ones are skipped), for the best offline method
  for seed in $SEEDS; do for env in $ENVS; do
    online online_grpo "$env" "$seed" online_grpo
    online online_grpo "$env" "$seed" online_grpo_mixed --offline-members "${MIX[$env]}"
    online online_ppo "$env" "$seed" online_ppo
    online online_grpo "$env" "$seed" online_grpo_mixed_from_offline --offline-members "${MIX[$env]}" \
      --init-from "$INIT_DIR/$(init_run "$env" "$seed")"
  done; done
} | run_and_report online
