#!/usr/bin/env bash
# Figure 8: per-task normalised score, (return - random) / (expert - random) with the behaviour
# policy's per-task random and expert returns, of every algorithm and tuning. Same runs as Table 1.
source "$(dirname "$0")/scale.sh"
for env in $ENVS; do ensure_pretrained "$env"; done
main_grid | run_and_report fig8
