#!/usr/bin/env bash
# Figure 5 / Table 3: QP-DPO at several pretrained model sizes (SIZES, n_layer/n_embd/n_head) x 4
# tunings x medium/expert. Each size is pretrained first when its checkpoint is missing. The paper
# runs this on MetaWorld (the default at SCALE=paper; FIG5_ENVS overrides).
source "$(dirname "$0")/scale.sh"
[ "$SCALE" = paper ] && ENVS=${FIG5_ENVS:-metaworld}
for env in $ENVS; do ensure_data "$env"; for size in $SIZES; do ensure_pretrained "$env" "$size"; done; done
for seed in $SEEDS; do for env in $ENVS; do for size in $SIZES; do for quality in medium expert; do
  for tuning in $TUNINGS; do
    IFS=/ read -r L E H <<< "$size"
    name=""  # the default size keeps the default run name, so Table 1's QP-DPO runs are reused
    [ "$size" = 3/128/1 ] || name="--run-name qp_dpo_${env}_${tuning}_${quality}_n${N_MAIN}_l${L}_e${E}_h${H}_s${seed}"
    MODEL_SIZE=$size ft qp_dpo "$env" "$seed" --tuning "$tuning" --quality "$quality" --num-trajs "$N_MAIN" $name
  done
done; done; done; done | run_and_report fig5
