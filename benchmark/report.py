"""Aggregate the result.json files of a run directory into the paper's tables and figures.

    python benchmark/report.py table1 --run-dir benchmark/results/cpu/runs --out-dir benchmark/results/cpu

Experiments: table1 table2 fig1 fig2 fig34 fig5 fig7 table4 table6 fig8 (or `all`), and `runs`: one row
per setting found (any mix of runs, e.g. the quickstart's) with its learning curves. Each writes
<out-dir>/<experiment>.md (tables laid out like the paper's: mean +- half-width of the 95% Student-t interval
over seeds, selected, final and best checkpoints; Table 1 adds IQM, mean and probability of improvement
over seeds x tasks with stratified-bootstrap intervals, see benchmark/stats.py) and a PNG figure. A run is
picked by its config (algorithm, env, tuning, quality, trajectories, sparse, alpha, model size), not by its name, so experiments share runs.
Missing cells print as "-", so a half-finished sweep still reports what it has.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmark import report_common  # noqa: E402
from benchmark.report_ablations import (fig1, fig2, fig5, fig7, fig8, fig34, online, runs, table2,  # noqa: E402
                                        table4, table6)
from benchmark.report_common import ENVS, load_runs  # noqa: E402
from benchmark.report_table1 import table1  # noqa: E402
from common.tuning import TUNINGS  # noqa: E402

# each experiment's writer: (runs, args) -> the paths it wrote
EXPERIMENTS = {"table1": table1, "table2": table2, "fig1": fig1, "fig2": fig2, "fig34": fig34, "fig5": fig5,
               "fig7": fig7, "table4": table4, "table6": table6, "fig8": fig8, "online": online, "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiments", nargs="+", help=f"which to write: {' '.join(EXPERIMENTS)} or all")
    ap.add_argument("--run-dir", default="benchmark/results/cpu/runs", help="where the runs' <name>/result.json are")
    ap.add_argument("--out-dir", default="benchmark/results/cpu", help="where the .md and .png files go")
    ap.add_argument("--data-dir", default="data", help="dataset root (Table 2 reads <data-dir>/<env>/summary.json)")
    ap.add_argument("--n-main", type=int, default=50, help="trajectories of the main setting (Table 1's)")
    ap.add_argument("--envs", nargs="+", default=ENVS, help="envs of Table 2")
    ap.add_argument("--abl-tunings", nargs="+", default=TUNINGS, help="tunings the ablations (figures 1-4, 7) average")
    ap.add_argument("--made-by", default="", help="the command that made the runs, quoted in every table")
    args = ap.parse_args()
    report_common.MADE_BY = args.made_by  # quoted under each table's title
    exps = list(EXPERIMENTS) if args.experiments == ["all"] else args.experiments
    bad = [e for e in exps if e not in EXPERIMENTS]
    if bad:
        print(f"error: unknown experiment {bad[0]!r}; choose from {' '.join(EXPERIMENTS)} or all", file=sys.stderr)
        return 2
    bad = [e for e in args.envs if e not in ENVS]
    if bad:
        print(f"error: unknown env {bad[0]!r}; choose from {' '.join(ENVS)}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.run_dir) and exps != ["table2"]:
        print(f"error: no run directory {args.run_dir}; run the experiment first, e.g. bash benchmark/table1.sh",
              file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    all_runs = load_runs(args.run_dir) if os.path.isdir(args.run_dir) else []
    for e in exps:
        paths = EXPERIMENTS[e](all_runs, args)
        print(f"{e}: " + ", ".join(paths))
        if e in ("table1", "runs"):
            with open(paths[0]) as f:
                print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
