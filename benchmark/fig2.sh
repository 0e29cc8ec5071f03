#!/usr/bin/env bash
# Figure 2: number of finetuning trajectories (NUM_TRAJS, e.g. 5 10 25 50) x medium/expert, every
# algorithm, averaged over the tunings in ABL_TUNINGS.
source "$(dirname "$0")/scale.sh"
for env in $ENVS; do ensure_pretrained "$env"; ensure_data "$env"; done
for seed in $SEEDS; do for env in $ENVS; do for quality in medium expert; do for n in $NUM_TRAJS; do
  for tuning in $ABL_TUNINGS; do for algo in $ALGOS; do
    ft "$algo" "$env" "$seed" --tuning "$tuning" --quality "$quality" --num-trajs "$n"
  done; done
done; done; done; done | run_and_report fig2
