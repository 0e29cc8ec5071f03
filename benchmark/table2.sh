#!/usr/bin/env bash
# Table 2: TQ and SACo of the finetuning datasets (the test tasks' first 50 trajectories) per env and
# quality, from the summary collect_data.py writes (collected first when missing).
source "$(dirname "$0")/scale.sh"
for env in $ENVS; do ensure_data "$env"; done
[ "$DRY_RUN" = 1 ] || report table2
