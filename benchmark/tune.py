"""Hyperparameter search on validation episodes: each algorithm's small grid, then per-env presets.

    python benchmark/tune.py --envs antdir metaworld              # run the grid (resumable), then pick
    python benchmark/tune.py --envs antdir metaworld --dry-run    # print the commands
    python benchmark/tune.py --envs antdir --pick-only            # pick from the runs already made

Every grid point is one finetuning run (full tuning, expert data, 50 trajectories, --seed 1, two
test tasks, --steps steps per task) made through benchmark/run.py, so a killed search continues
where it stopped. A point is scored by its validation score at its selected checkpoint (mean over
the tasks of the best validation evaluation; MetaWorld: validation success, then return): the
reporting episodes never enter the choice. The winner of each (env, algorithm) becomes its preset
in common/presets.json, which the finetuning scripts use as their defaults for that env (every flag
stays overridable); the table of every point goes to <out-dir>/<env>.md. The search is small
(the paper grid-searched each method on a GPU): 1 seed and 2 tasks at reduced steps, then Table 1
confirms the presets at full size with 3 seeds.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common.finetune import PRESETS_PATH, load_presets  # noqa: E402

# Each algorithm's grid: flag -> values (the first value of each is the script's own default).
GRID = {
    "sft": {},  # the reference: SFT's only hyperparameter is the learning rate, shared by all seven
    "dpo": {"beta": [0.1, 1.0]},
    # bc_weight 10 > (1 + clip_eps) sqrt(49): no data action of 50 trajectories is ever pushed away (grpo.py);
    # update_epochs 1: one gradient step per batch (at 4, three of every four steps reuse a batch)
    "grpo": {"bc_weight": [1.0, 0.0, 10.0], "beta": [0.04, 0.5], "update_epochs": [1, 4]},
    "ppo": {"bc_weight": [10.0, 1.0, 0.0], "update_epochs": [1, 4]},
    "cql": {"alpha": [5.0, 1.0], "bc_weight": [10.0, 1.0]},
    "qp_sft": {"alpha": [0.1, 0.001, 0.01, 1.0]},
    "qp_dpo": {"alpha": [0.1, 0.001, 0.01, 1.0]},
}
# two test tasks per env, those with the most headroom over zero-shot (antdir 35 and 46; metaworld 45 at
# success 0 and 48 at 0.3); chosen by zero-shot score, before any finetuning
TUNE_TASKS = {"halfcheetahvel": (2, 13), "halfcheetahdir": (0, 1), "antdir": (35, 46), "metaworld": (45, 48)}


def points(algo: str) -> list[dict]:
    g = GRID[algo]
    return [dict(zip(g, vals)) for vals in itertools.product(*g.values())]


def run_name(algo: str, env: str, point: dict) -> str:
    return f"tune_{algo}_{env}_" + ("_".join(f"{k}{v:g}" for k, v in point.items()) or "defaults")


def command(algo: str, env: str, point: dict, args) -> str:
    flags = " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in point.items())
    tasks = " ".join(map(str, TUNE_TASKS[env]))
    return (f"python {algo}.py --env {env} --tuning full --seed 1 --tasks {tasks} --total-steps {args.steps} "
            f"--eval-every {args.eval_every} --eval-episodes {args.episodes} --num-trajs {args.num_trajs} "
            f"--data-dir {args.data_dir} --run-dir {args.run_dir} --run-name {run_name(algo, env, point)} --no-presets"
            + (f" --pretrained {args.pretrained}" if args.pretrained else "") + (f" {flags}" if flags else ""))


def score(res: dict) -> tuple[float, float]:
    """Validation score at the selected checkpoint, averaged over tasks: (success, return) on
    MetaWorld, (return, return) elsewhere; never the reporting episodes."""
    sel = [max(t["curve"][1:], key=lambda c: (c.get("val_success", 0.0), c["val_return"])) for t in res["tasks"]]
    ret = sum(c["val_return"] for c in sel) / len(sel)
    succ = sum(c.get("val_success", 0.0) for c in sel) / len(sel)
    return (succ, ret) if "val_success" in sel[0] else (ret, ret)


def pick(envs: list[str], algos: list[str], args) -> dict:
    presets = load_presets()
    for env in envs:
        rows, zs = [], None
        for algo in algos:
            scored = []
            for pt in points(algo):
                path = os.path.join(args.run_dir, run_name(algo, env, pt), "result.json")
                if not os.path.exists(path):
                    continue
                with open(path) as f:
                    res = json.load(f)
                zs = res["zero_shot"]
                scored.append((score(res), pt, res))
            if not scored:
                continue
            best = max(scored, key=lambda x: x[0])
            presets.setdefault(env, {})[algo] = best[1]
            for sc, pt, res in scored:
                rows.append(f"| {algo} | {', '.join(f'{k}={v:g}' for k, v in pt.items()) or '(defaults)'} | "
                            f"{sc[1]:.1f}" + (f" / {sc[0]:.2f}" if env == "metaworld" else "")
                            + f" | {res['selected']:.1f} | {res['final']:.1f} | {'**chosen**' if pt is best[1] else ''} |")
        if not rows:
            continue
        md = [f"# Hyperparameter search on {env} (validation episodes)\n",
              f"Made by `python benchmark/tune.py --envs {env} --steps {args.steps} --eval-every {args.eval_every} "
              f"--episodes {args.episodes}`: full tuning, expert data, {args.num_trajs} trajectories, seed 1, tasks "
              f"{', '.join(map(str, TUNE_TASKS[env]))}. Chosen by the validation score at the selected checkpoint"
              + (" (success, then return)" if env == "metaworld" else "")
              + "; the reporting-episode columns are shown for information only and played no part in the choice.\n",
              f"Zero-shot (reporting episodes): {zs:.1f}\n",
              "| algorithm | point | validation (selected)" + (" return / success" if env == "metaworld" else "")
              + " | reporting: selected | reporting: final | |", "|---|---|---|---|---|---|", *rows, ""]
        if args.dry_run:  # --pick-only --dry-run: print the table, write nothing
            print("\n".join(md))
            continue
        os.makedirs(args.out_dir, exist_ok=True)
        tmp = os.path.join(args.out_dir, f".{env}.md.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write("\n".join(md))
        os.replace(tmp, os.path.join(args.out_dir, f"{env}.md"))
    if not args.dry_run:
        tmp = f"{PRESETS_PATH}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(presets, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, PRESETS_PATH)
        print(f"presets -> {os.path.relpath(PRESETS_PATH, ROOT)}")
    return presets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envs", nargs="+", default=["antdir", "metaworld"], choices=sorted(TUNE_TASKS))
    ap.add_argument("--algos", nargs="+", default=list(GRID), choices=list(GRID))
    ap.add_argument("--steps", type=int, default=200, help="gradient steps per task")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--episodes", type=int, default=5, help="validation (and as many reporting) episodes per evaluation")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--num-trajs", type=int, default=50, help="finetuning trajectories per task")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--pretrained", default="", help="checkpoint (default: the scripts' own, pretrained/<env>.pt)")
    ap.add_argument("--run-dir", default="benchmark/results/tune/runs")
    ap.add_argument("--out-dir", default="benchmark/results/tune")
    ap.add_argument("--log-dir", default="runs/logs/tune")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run and write nothing")
    ap.add_argument("--pick-only", action="store_true", help="only pick the presets from the runs already made")
    args = ap.parse_args()
    for k in ("steps", "eval_every", "episodes", "workers", "num_trajs"):
        if getattr(args, k) < 1:
            raise SystemExit(f"error: --{k.replace('_', '-')} must be at least 1")
    if not args.pick_only:
        # one env's grid after the other, so each env's presets are complete as early as possible
        cmds = [command(a, e, pt, args) for e in args.envs for a in args.algos for pt in points(a)]
        run = [sys.executable, os.path.join(ROOT, "benchmark", "run.py"), "-", "--workers", str(args.workers),
               "--log-dir", args.log_dir] + (["--dry-run"] if args.dry_run else [])
        rc = subprocess.run(run, input="\n".join(cmds), text=True, cwd=ROOT).returncode
        if args.dry_run:
            return rc
    pick(args.envs, list(GRID), args)  # every algorithm's table, from the runs there are: --algos limits only the runs
    return 0


if __name__ == "__main__":
    sys.exit(main())
