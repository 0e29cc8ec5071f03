#!/usr/bin/env bash
# Figure 1: medium vs expert finetuning data (50 trajectories), every algorithm, normalised so the best
# algorithm of each (env, quality) is 1. Expert runs are shared with Table 1.
source "$(dirname "$0")/scale.sh"
for env in $ENVS; do ensure_pretrained "$env"; ensure_data "$env"; done
for seed in $SEEDS; do for env in $ENVS; do for quality in medium expert; do for tuning in $ABL_TUNINGS; do
  for algo in $ALGOS; do ft "$algo" "$env" "$seed" --tuning "$tuning" --quality "$quality" --num-trajs "$N_MAIN"; done
done; done; done; done | run_and_report fig1
