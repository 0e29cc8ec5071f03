#!/usr/bin/env bash
# Table 6: QP-SFT with the paper's Q target (eq. 16) vs the max over sampled actions (eqs. 33-34,
# --max-target), full-model tuning, expert data, 50 trajectories. The eq. 16 runs are Table 1's.
source "$(dirname "$0")/scale.sh"
for env in $ENVS; do ensure_pretrained "$env"; done
for seed in $SEEDS; do for env in $ENVS; do for maxq in "" --max-target; do
  ft qp_sft "$env" "$seed" --tuning full --quality expert --num-trajs "$N_MAIN" $maxq
done; done; done | run_and_report table6
