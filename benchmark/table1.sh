#!/usr/bin/env bash
# Table 1: the 7 algorithms (and zero-shot, every run's step-0 evaluation) x 4 tunings x envs,
# expert data, 50 trajectories (N_MAIN), mean +- 95% bootstrap CI over seeds, best AND final.
# Writes $OUT_DIR/table1.md (with the paper's Table 1 side by side and its takeaways checked) and
# table1.png. The same runs give Figure 8 (fig8.sh) and Table 4's runtime per algorithm (table4.sh).
#   SCALE=cpu bash benchmark/table1.sh        (56 runs on halfcheetahvel, about 2.5 h on 2 cores)
source "$(dirname "$0")/scale.sh"
for env in $ENVS; do ensure_pretrained "$env"; done
main_grid | run_and_report table1
