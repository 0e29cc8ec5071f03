#!/usr/bin/env bash
# Table 4: wall time per algorithm and tuning (Table 1's runs), relative to SFT, and QP-DPO's wall time
# per pretrained model size and tuning (Figure 5's runs, expert data), on the first env of ENVS.
source "$(dirname "$0")/scale.sh"
ENVS=${ENVS%% *}
ensure_data "$ENVS"
for size in $SIZES; do ensure_pretrained "$ENVS" "$size"; done
{
  main_grid
  for seed in $SEEDS; do for size in $SIZES; do for tuning in $TUNINGS; do
    [ "$size" = 3/128/1 ] && continue  # that one is in Table 1's grid
    IFS=/ read -r L E H <<< "$size"
    MODEL_SIZE=$size ft qp_dpo "$ENVS" "$seed" --tuning "$tuning" --quality expert --num-trajs "$N_MAIN" \
      --run-name "qp_dpo_${ENVS}_${tuning}_expert_n${N_MAIN}_l${L}_e${E}_h${H}_s${seed}"
  done; done; done
} | run_and_report table4
