#!/usr/bin/env bash
# Figure 7: alpha (the weight of the Q term, ALPHAS, the paper's 0.001 0.01 0.1 1 2) for QP-SFT and
# QP-DPO x medium/expert. alpha 0.1 (the default) reuses Table 1's / Figure 1's runs.
source "$(dirname "$0")/scale.sh"
for env in $ENVS; do ensure_pretrained "$env"; ensure_data "$env"; done
for seed in $SEEDS; do for env in $ENVS; do for quality in medium expert; do for alpha in $ALPHAS; do
  for tuning in $ABL_TUNINGS; do for algo in qp_sft qp_dpo; do
    name=""
    [ "$alpha" = 0.1 ] || name="--run-name ${algo}_${env}_${tuning}_${quality}_n${N_MAIN}_a${alpha}_s${seed}"
    ft "$algo" "$env" "$seed" --tuning "$tuning" --quality "$quality" --num-trajs "$N_MAIN" --alpha "$alpha" $name
  done; done
done; done; done; done | run_and_report fig7
