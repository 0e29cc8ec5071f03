"""Hyperparameter search on the validation tasks: per env and tuning, the learning rate, then each
method's own weight, then per-env, per-tuning presets.

    python benchmark/tune.py --envs antdir --tunings full lora     # run the search (resumable), then pick
    python benchmark/tune.py --envs antdir --dry-run               # print the first stage's commands
    python benchmark/tune.py --envs antdir --pick-only             # pick from the runs already made

Only validation tasks are finetuned (common/envs.py: never pretrained on, never reported), and only
their validation episodes score a point: no test task enters any choice (tests/test_benchmark.py checks
every command). halfcheetahdir has no validation task: it takes halfcheetahvel's presets.

Per (env, tuning), three stages, each a list of finetuning runs made through benchmark/run.py (so a
killed search continues where it stopped) of --steps steps on the env's first two validation tasks
(TUNE_TASKS), seed 1, expert data, 50 trajectories:
1. the learning rate, with SFT: LR_FACTORS x the tuning's default (common/tuning.py DEFAULT_LR); a winner at
   the grid's edge that beats its neighbour by more than two standard errors gets one more point a factor of 3
   beyond it (up to twice): the grid was too narrow there, and within noise it was not;
2. at that learning rate, each method's own weight (GRID: two or three values, the script's default first);
3. QP-DPO's alpha at the beta DPO chose (QP-DPO is DPO plus the Q term, eq. 14).
Budget: 3 + 4 x 2 + 2 x 3 = 17 points x 2 tasks = 34 task-runs of --steps steps per env and tuning.
--weights-from full runs only stage 1 for the other tunings and gives each method full tuning's weights
(3 points x 2 tasks): MetaWorld's budget, where a point takes ~10 min on one core against AntDir's ~5;
on AntDir the weights whose choice mattered (GRPO's and PPO's bc_weight 10, QP-SFT's alpha <= 0.1) were
the same in all four tunings, and the other choices were within noise (benchmark/results/tune/README.md).

    python benchmark/tune.py --envs metaworld --tunings lora decorator prompt --weights-from full

--online searches the online comparison's settings (benchmark/online.sh) on the same validation tasks and
by the same score: online GRPO's and online PPO's learning-rate factor (0.1, 1), then mixed GRPO's offline
members per group (2, 4) at GRPO's factor; 6 points, tables in <out-dir>/<env>_online.md.

    python benchmark/tune.py --envs metaworld antdir --online
A point's score is its validation score at its selected checkpoint (mean over tasks of the best validation
evaluation; MetaWorld: validation success, then return). The winners go to common/presets.json as
{env: {tuning: {algo: {flag: value}}}}, the finetuning scripts' defaults; each table to <out-dir>/<env>.md.
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

from common.envs import spec  # noqa: E402
from common.flags import PRESETS_PATH, load_presets  # noqa: E402
from common.tuning import DEFAULT_LR  # noqa: E402
from common.rollout import EVAL_EPISODES, selection_key  # noqa: E402
from common.tuning import TUNINGS  # noqa: E402

ENVS = ("halfcheetahvel", "antdir", "metaworld")  # the envs with validation tasks
LR_FACTORS = (1.0, 0.3, 3.0)  # stage 1: times the tuning's default learning rate
# A stage-1 winner at the grid's edge that beats its neighbour by more than EDGE_SE standard errors of the
# difference was still climbing: one more point a factor of 3 beyond it, at most MAX_EXTEND times.
EDGE_SE, MAX_EXTEND = 2.0, 2
# Stage 2: each method's own weight, the script's default first. QP-DPO (stage 3) searches alpha at DPO's beta.
GRID = {
    "dpo": {"beta": [0.1, 1.0]},
    "grpo": {"bc_weight": [1.0, 10.0]},  # 10 > (1 + clip_eps) sqrt(49): no data action is pushed away (grpo.py)
    "ppo": {"bc_weight": [10.0, 1.0]},
    "cql": {"alpha": [5.0, 1.0]},
    "qp_sft": {"alpha": [0.1, 0.01, 1.0]},
    "qp_dpo": {"alpha": [0.1, 0.01, 1.0]},
}
ALGOS = ("sft", *GRID)
# --online: the online comparison's settings (benchmark/online.sh, full tuning), searched the same way: each online
# script's learning-rate factor (stage 1), then mixed GRPO's offline members per group at GRPO's factor (stage 2).
# Presets [env]["full"]: "online_grpo" and "online_ppo" {lr_factor}; "online_grpo_mixed" {lr_factor,
# offline_members}, which benchmark/online.sh passes to its mixed-GRPO runs.
ONLINE_GRID = {"online_grpo": {"lr_factor": [0.1, 1.0]}, "online_ppo": {"lr_factor": [0.1, 1.0]}}
MIXED_MEMBERS = (2, 4)  # of a group of 8 (--members)
# the first two validation tasks of each env: a rule fixed before any result (validation tasks are a seeded draw)
TUNE_TASKS = {env: spec(env).val_tasks[:2] for env in ENVS}


def fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def run_name(algo: str, env: str, tuning: str, point: dict) -> str:
    return f"tune_{algo}_{env}_{tuning}_" + "_".join(f"{k}{fmt(v)}" for k, v in point.items())


def command(algo: str, env: str, tuning: str, point: dict, args) -> str:
    flags = " ".join(f"--{k.replace('_', '-')} {fmt(v)}" for k, v in point.items())
    tasks = " ".join(map(str, TUNE_TASKS[env]))
    if algo.startswith("online"):  # iterations of --group-size rollouts, as benchmark/online.sh runs them
        script, steps = algo.replace("_mixed", ""), (f"--total-steps {args.online_iters} --eval-every {args.online_eval} "
                                                      f"--group-size {args.group_size}")
    else:
        script, steps = algo, f"--total-steps {args.steps} --eval-every {args.eval_every}"
    return (f"python {script}.py --env {env} --tuning {tuning} --seed 1 --tasks {tasks} {steps} "
            f"--eval-episodes {args.episodes or EVAL_EPISODES[env]} --num-trajs {args.num_trajs} "
            f"--data-dir {args.data_dir} --run-dir {args.run_dir} --run-name {run_name(algo, env, tuning, point)} "
            f"--no-presets --save-model none" + (f" --pretrained {args.pretrained}" if args.pretrained else "")
            + f" {flags}")


def selected(res: dict) -> list[dict]:
    """Each task's selected evaluation point (common/rollout.py selection_key, as the run itself selects)."""
    return [max(t["curve"][1:], key=selection_key) for t in res["tasks"]]


def score(res: dict) -> tuple[float, float]:
    """Validation score at the selected checkpoint, averaged over tasks: (success, return) on
    MetaWorld, (return, return) elsewhere; never the reporting episodes."""
    sel = selected(res)
    ret = sum(c["val_return"] for c in sel) / len(sel)
    succ = sum(c.get("val_success", 0.0) for c in sel) / len(sel)
    return (succ, ret) if "val_success" in sel[0] else (ret, ret)


def score_se(res: dict) -> float:
    """Standard error of score()'s first component: the selected checkpoints' validation episodes
    (binomial for MetaWorld's success, the episodes' spread for returns), averaged over tasks."""
    n = res["config"]["eval_episodes"]
    sel = selected(res)
    var = [c["val_success"] * (1 - c["val_success"]) / n if "val_success" in c else c["val_return_sd"] ** 2 / n
           for c in sel]
    return (sum(var) ** 0.5) / len(var)


def lr_extension(done: list[tuple[str, dict, dict]]) -> float | None:
    """The next stage-1 learning rate, or None: when the best of the rates run so far is the highest (lowest)
    and beats the next lower (higher) one by more than EDGE_SE standard errors of the difference, the rate a
    factor of 3 beyond it; at most MAX_EXTEND extensions."""
    if len(done) >= len(LR_FACTORS) + MAX_EXTEND or any(r["config"]["eval_episodes"] < 2 for _, _, r in done):
        return None  # done extending, or one episode per evaluation: no spread to judge by
    pts = sorted(done, key=lambda d: d[1]["lr"])
    best = max(range(len(pts)), key=lambda i: score(pts[i][2]))  # as choose() picks (MetaWorld: success, then return)
    if 0 < best < len(pts) - 1:
        return None
    nb = pts[1] if best == 0 else pts[-2]
    diff = score(pts[best][2])[0] - score(nb[2])[0]
    if diff <= EDGE_SE * (score_se(pts[best][2]) ** 2 + score_se(nb[2]) ** 2) ** 0.5:
        return None
    return float(f"{pts[best][1]['lr'] * (3.0 if best else 1 / 3.0):g}")


def stage_points(stage: int, env: str, tuning: str, chosen: dict, algos=ALGOS) -> list[tuple[str, dict]]:
    """The (algo, point) pairs of a stage, given what earlier stages chose (chosen[algo] = its point);
    algos limits stages 2 and 3 (stage 1, the learning rate, is always SFT's)."""
    if stage == 1:
        return [("sft", {"lr": float(f"{DEFAULT_LR[tuning] * f:g}")}) for f in LR_FACTORS]  # as the command passes it
    lr = chosen["sft"]["lr"]
    if stage == 2:
        return [(a, {"lr": lr, **dict(zip(GRID[a], v))}) for a in GRID if a != "qp_dpo" and a in algos
                for v in itertools.product(*GRID[a].values())]
    if "qp_dpo" not in algos:
        return []
    beta = chosen["dpo"]["beta"] if "dpo" in chosen else GRID["dpo"]["beta"][0]  # DPO's beta, once it is chosen
    return [("qp_dpo", {"lr": lr, "beta": beta, "alpha": v}) for v in GRID["qp_dpo"]["alpha"]]


def online_points(stage: int, env: str, tuning: str, chosen: dict, algos=(), members=MIXED_MEMBERS) -> list[tuple[str, dict]]:
    """--online's (algo, point) pairs: the scripts' learning-rate factors, then mixed GRPO's offline members."""
    if stage == 1:
        return [(a, {k: v}) for a, grid in ONLINE_GRID.items() for k, vals in grid.items() for v in vals]
    return [("online_grpo_mixed", {"lr_factor": chosen["online_grpo"]["lr_factor"], "offline_members": k})
            for k in members]


def results(env: str, tuning: str, pairs: list[tuple[str, dict]], args) -> list[tuple[str, dict, dict]]:
    out = []
    for algo, pt in pairs:
        path = os.path.join(args.run_dir, run_name(algo, env, tuning, pt), "result.json")
        if os.path.exists(path):
            with open(path) as f:
                out.append((algo, pt, json.load(f)))
    return out


def carried_weights(env: str, tuning: str, lr: float, args) -> dict:
    """--weights-from: every method at the learning rate stage 1 chose, with the weights the search of
    tuning args.weights_from chose for it in this env (common/presets.json)."""
    src = load_presets().get(env, {}).get(args.weights_from, {})
    missing = [a for a in GRID if a in args.algos and a not in src]
    if missing:
        raise SystemExit(f"error: --weights-from {args.weights_from}: {env} has no {args.weights_from} presets for "
                         f"{', '.join(missing)}; search them first: python benchmark/tune.py --envs {env} "
                         f"--tunings {args.weights_from}")
    return {a: {"lr": lr, **{k: v for k, v in src[a].items() if k != "lr"}} for a in GRID if a in args.algos}


def choose(env: str, tuning: str, args, run: bool) -> tuple[dict, list]:
    """Run (if `run`) and pick the three stages in order; returns {algo: chosen point} and every scored row.
    A stage whose runs are not all there stops the picking (its later stages need it). With --weights-from
    (and another tuning) only stage 1 runs; the weights are carried over (rows with no result)."""
    chosen, rows = {}, []
    carry = args.weights_from and tuning != args.weights_from
    for stage in (1, 2) if args.online else (1,) if carry else (1, 2, 3):
        pairs = (online_points(stage, env, tuning, chosen, members=args.members) if args.online
                 else stage_points(stage, env, tuning, chosen, args.algos))
        while True:
            if run and pairs:
                cmds = [command(a, env, tuning, pt, args) for a, pt in pairs]
                runner = [sys.executable, os.path.join(ROOT, "benchmark", "run.py"), "-", "--workers",
                          str(args.workers), "--log-dir", args.log_dir] + (["--dry-run"] if args.dry_run else [])
                subprocess.run(runner, input="\n".join(cmds), text=True, cwd=ROOT)
            done = results(env, tuning, pairs, args)
            lr = lr_extension(done) if stage == 1 and not args.online and len(done) == len(pairs) else None
            if lr is None:
                break
            pairs = pairs + [("sft", {"lr": lr})]  # the grid was too narrow: one more point beyond its edge
        for algo in dict.fromkeys(a for a, _ in pairs):
            scored = [(score(res), pt, res) for a, pt, res in done if a == algo]
            if scored:
                best = max(scored, key=lambda x: x[0])[1]  # the first of equals: the script's default
                rows += [(stage, algo, pt, sc, res, pt is best) for sc, pt, res in scored]
                if len(scored) == sum(a == algo for a, _ in pairs):
                    chosen[algo] = best
        if len(done) < len(pairs):
            break
    if carry and "sft" in chosen:
        carried = carried_weights(env, tuning, chosen["sft"]["lr"], args)
        chosen.update(carried)
        rows += [(2, a, pt, None, None, True) for a, pt in carried.items()]
    return chosen, rows


def table(env: str, tuning: str, rows: list, args, made: str) -> list[str]:
    mw = env == "metaworld"
    if not rows:
        return [f"## {env}, {tuning} tuning\n", "Not run yet (the same command runs it).\n"]
    zs = rows[0][4]["zero_shot"]
    out = [f"## {env}, {tuning} tuning\n", made,
           f"Zero-shot on the tuning tasks' reporting episodes: {zs:.1f}\n",
           "| stage | algorithm | point | validation (selected)" + (" success / return" if mw else "")
           + " | reporting: selected | reporting: final | |", "|---|---|---|---|---|---|---|"]
    for stage, algo, pt, sc, res, best in rows:
        if res is None:  # --weights-from
            out.append(f"| {stage} | {algo} | {', '.join(f'{k}={fmt(v)}' for k, v in pt.items())} | weights from "
                       f"{args.weights_from} tuning, not searched | | | **chosen** |")
            continue
        val = f"{sc[0]:.2f} / {sc[1]:.1f}" if mw else f"{sc[1]:.1f}"
        out.append(f"| {stage} | {algo} | {', '.join(f'{k}={fmt(v)}' for k, v in pt.items())} | {val} | "
                   f"{res['selected']:.1f} | {res['final']:.1f} | {'**chosen**' if best else ''} |")
    return out + [""]


def earlier_sections(path: str, env: str) -> dict[str, list[str]]:
    """{tuning: its lines} of the tables an earlier search wrote to path, so that a search of some tunings
    rewrites their sections and keeps the others' (nothing written is silently lost)."""
    sections, current = {}, None
    if os.path.exists(path):
        with open(path) as f:
            for line in f.read().split("\n"):
                if line.startswith(f"## {env}, ") and line.endswith(" tuning"):
                    current = line[len(f"## {env}, "):-len(" tuning")]
                    sections[current] = []
                elif line.startswith("#"):
                    current = None
                if current is not None:
                    sections[current].append(line)
    return sections


def pick(envs: list[str], tunings: list[str], args, run: bool = False) -> dict:
    load_presets()  # a damaged file fails now, before any run
    new = {}  # {env: {tuning: {algo: point}}} chosen here
    if args.online:
        tunings = ["full"]  # the online comparison's tuning
    how = (f"--online --online-iters {args.online_iters} --online-eval {args.online_eval} --group-size {args.group_size}"
           if args.online else f"--tunings {' '.join(tunings)} --steps {args.steps} "
           + (f"--weights-from {args.weights_from} " if args.weights_from else "") + f"--eval-every {args.eval_every}")
    for env in envs:
        md = [f"# Hyperparameter search on {env}{', online comparison' if args.online else ''} (validation tasks "
              f"{', '.join(map(str, TUNE_TASKS[env]))})\n",
              "Expert data, seed 1. Chosen by the validation score at the selected checkpoint"
              + (" (success, then return)" if env == "metaworld" else "")
              + "; the reporting columns (the same validation tasks' reporting episodes) are for information only. "
              "Each tuning's section names the command that made it; a search of other tunings keeps it.\n"]
        made = (f"Made by `python benchmark/tune.py --envs {env} {how}" + (f" --episodes {args.episodes}" if args.episodes else "")
                + f"`: {args.num_trajs} trajectories, {args.episodes or EVAL_EPISODES[env]} validation and as many "
                "reporting episodes per evaluation.\n")
        sections = {}
        for tuning in tunings:
            chosen, rows = choose(env, tuning, args, run)
            if "online_grpo_mixed" in chosen:  # the group its members were searched in: online.sh scales them to its own
                chosen["online_grpo_mixed"] = {**chosen["online_grpo_mixed"], "group_size": args.group_size}
            if chosen:
                new.setdefault(env, {})[tuning] = {a: chosen[a] for a in (*ALGOS, *ONLINE_GRID, "online_grpo_mixed")
                                                   if a in chosen}
            sections[tuning] = table(env, tuning, rows, args, made)
        name = f"{env}_online.md" if args.online else f"{env}.md"
        kept = earlier_sections(os.path.join(args.out_dir, name), env)  # the tunings this command did not search
        md += [line for t in TUNINGS for line in sections.get(t, kept.get(t, []))]
        if args.dry_run:
            continue
        os.makedirs(args.out_dir, exist_ok=True)
        tmp = os.path.join(args.out_dir, f".{name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write("\n".join(md))
        os.replace(tmp, os.path.join(args.out_dir, name))
    presets = load_presets()  # read again: a search of another env may have written meanwhile
    for env, by_tuning in new.items():  # per algorithm: an online search keeps the offline presets and back
        for tuning, by_algo in by_tuning.items():
            presets.setdefault(env, {}).setdefault(tuning, {}).update(by_algo)
    if not args.dry_run:
        tmp = f"{PRESETS_PATH}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(presets, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, PRESETS_PATH)
        print(f"presets -> {PRESETS_PATH}")
    return presets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envs", nargs="+", default=["antdir", "metaworld"], choices=ENVS)
    ap.add_argument("--tunings", nargs="+", default=list(TUNINGS), choices=TUNINGS)
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS,
                    help="limit the search to these algorithms (SFT's learning-rate stage always runs)")
    ap.add_argument("--weights-from", default="", choices=["", *TUNINGS],
                    help="search only the learning rate (stage 1) of the other tunings and give every method the "
                         "weights this tuning's search chose in the env (a third of the budget: 3 points per tuning)")
    ap.add_argument("--online", action="store_true",
                    help="search the online comparison's settings instead (ONLINE_GRID, MIXED_MEMBERS; full tuning)")
    ap.add_argument("--members", type=int, nargs="+", default=list(MIXED_MEMBERS),
                    help="--online: mixed GRPO's offline members per group to try")
    ap.add_argument("--online-iters", type=int, default=10, help="--online: iterations per task (online.sh ONLINE_ITERS)")
    ap.add_argument("--online-eval", type=int, default=5, help="--online: iterations between evaluations")
    ap.add_argument("--group-size", type=int, default=8, help="--online: rollouts per iteration (online.sh GROUP)")
    ap.add_argument("--steps", type=int, default=200, help="gradient steps per task")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--episodes", type=int, default=0,
                    help="validation (and as many reporting) episodes per evaluation (0: the env's, EVAL_EPISODES)")
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
    if args.episodes < 0:
        raise SystemExit("error: --episodes must be 0 (the env's) or at least 1")
    for k in ("steps", "eval_every", "workers", "num_trajs", "online_iters", "online_eval", "group_size"):
        if getattr(args, k) < 1:
            raise SystemExit(f"error: --{k.replace('_', '-')} must be at least 1")
    try:
        pick(args.envs, args.tunings, args, run=not args.pick_only)
    except ValueError as e:  # a damaged presets.json: one line naming it
        raise SystemExit(f"error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
