#!/usr/bin/env bash
# Figures 3 and 4: sparse reward (every trajectory's return moved to its last step, --sparse-reward).
# Figure 3: number of trajectories x medium/expert under sparse reward; Figure 4: sparse vs dense at
# 50 trajectories, averaged over envs (normalised scores) and tunings. The dense runs are Figure 2's.
source "$(dirname "$0")/scale.sh"
for env in $ENVS; do ensure_pretrained "$env"; ensure_data "$env"; done
for seed in $SEEDS; do for env in $ENVS; do for quality in medium expert; do for n in $NUM_TRAJS; do
  for tuning in $ABL_TUNINGS; do for algo in $ALGOS; do for sparse in "" --sparse-reward; do
    [ -z "$sparse" ] && [ "$n" != "$N_MAIN" ] && continue  # dense only where Figure 4 compares
    ft "$algo" "$env" "$seed" --tuning "$tuning" --quality "$quality" --num-trajs "$n" $sparse
  done; done; done
done; done; done; done | run_and_report fig34
