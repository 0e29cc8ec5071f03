"""Aggregate the result.json files of a run directory into the paper's tables and figures.

    python benchmark/report.py table1 --run-dir benchmark/results/cpu/runs --out-dir benchmark/results/cpu

Experiments: table1 table2 fig1 fig2 fig34 fig5 fig7 table4 table6 fig8 (or `all`), and `runs`: one row
per setting found (any mix of runs, e.g. the quickstart's) with its learning curves. Each writes
<out-dir>/<experiment>.md (tables laid out like the paper's: mean +- half-width of the 95% Student-t interval
over seeds, selected, final and best checkpoints; Table 1 adds IQM, mean and probability of improvement
over seeds x tasks with stratified-bootstrap intervals, see benchmark/stats.py) and a PNG figure. A run is picked by its config (algorithm, env,
tuning, quality, trajectories, sparse, alpha, model size), not by its name, so experiments share runs.
Missing cells print as "-", so a half-finished sweep still reports what it has.
"""
from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import re
import sys
from collections import defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmark.stats import aggregate, iqm, mean, performance_profile, probability_of_improvement, t_interval  # noqa: E402
from common.data import atomic_write, load_behaviour  # noqa: E402
from common.envs import ENV_NAMES  # noqa: E402
from common.finetune import ALGOS  # noqa: E402  (the paper's column order)
from common.tuning import TUNINGS, format_bytes  # noqa: E402

LABEL = {"sft": "SFT", "dpo": "DPO", "grpo": "GRPO", "ppo": "PPO", "cql": "CQL", "qp_dpo": "QP-DPO", "qp_sft": "QP-SFT"}
TLABEL = {"prompt": "Prompt", "lora": "LoRA (adaptor)", "decorator": "Decorator", "full": "Full model"}
ENVS = sorted(ENV_NAMES)  # the paper's row order (alphabetical)
ELABEL = {"antdir": "AntDir", "halfcheetahdir": "HalfCheetahDir", "halfcheetahvel": "HalfCheetahVel",
          "metaworld": "MetaWorld"}
DEFAULT_SIZE, DEFAULT_ALPHA = (3, 128, 1), 0.1
EXPERIMENTS = ["table1", "table2", "fig1", "fig2", "fig34", "fig5", "fig7", "table4", "table6", "fig8", "online", "runs"]
# beyond the paper: benchmark/online.sh; "_from_offline" runs start from an offline SFT run (--init-from)
ONLINE = ("online_grpo", "online_grpo_mixed", "online_ppo", "online_grpo_mixed_from_offline")
LABEL.update(online_grpo="online GRPO", online_grpo_mixed="mixed GRPO (LUFFY)", online_ppo="online PPO",
             online_grpo_mixed_from_offline="SFT, then mixed GRPO")

# The paper's reference numbers (Tables 1, 2 and 6), kept as data beside this file
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_numbers.json")) as _f:
    _PAPER = json.load(_f)
PAPER_TABLE1 = _PAPER["table1"]  # tuning -> env -> [zero-shot, *ALGOS]
PAPER_TABLE2 = {tuple(k.split("/")): tuple(v) for k, v in _PAPER["table2"].items()}  # (env, quality) -> (TQ, SACo)
PAPER_TABLE6 = {k: tuple(v) for k, v in _PAPER["table6"].items()}  # env -> (original, max target)


# ---------------------------------------------------------------- loading and statistics
def load_runs(run_dir: str) -> list[dict]:
    runs = []
    for path in sorted(glob.glob(os.path.join(run_dir, "*", "result.json"))):
        try:
            with open(path) as f:
                r = json.load(f)
            c = r["config"]
            c["env"], r["algo"], r["tasks"]  # noqa: B018 (a result without them is not one)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"error: {path} is not a finished result ({type(e).__name__}: {e}); delete it and "
                             f"rerun its command (benchmark/run.py reruns only what has no result)") from None
        if "model" in r:
            size = (r["model"]["n_layer"], r["model"]["n_embd"], r["model"]["n_head"])
        else:  # the checkpoint name says the size (pretrain_pdt.py's naming)
            m = re.search(r"_l(\d+)_e(\d+)_h(\d+)\.pt$", c.get("pretrained") or "")
            size = tuple(int(x) for x in m.groups()) if m else DEFAULT_SIZE
        runs.append({"algo": r["algo"], "env": c["env"], "tuning": c["tuning"], "quality": c["quality"],
                     "num_trajs": c["num_trajs"], "sparse": bool(c["sparse_reward"]), "seed": c["seed"],
                     # alpha as Figure 7 varies it: QP's Q-term weight (CQL's alpha is another thing)
                     "alpha": c.get("alpha") if r["algo"].startswith("qp") else None, "max_target": bool(c.get("max_target", False)), "size": size,
                     "params": r.get("model", {}).get("params"), "result": r, "path": path})
    return runs


def select(runs: list[dict], **kw) -> list[dict]:
    return [r for r in runs if all(r[k] == v for k, v in kw.items())]


@functools.lru_cache(maxsize=None)  # every run asks; presets.json is read once per report
def main_alpha(env: str, tuning: str, algo: str) -> float:
    """QP's alpha in the main setting: the preset of (env, tuning) (common/presets.json) or the scripts' default."""
    from common.finetune import preset

    return preset(env, tuning, algo)[0].get("alpha", DEFAULT_ALPHA)


def at_main_alpha(r: dict) -> bool:
    """True for a run at its main alpha (or of an algorithm without one): every experiment but Figure 7's
    alpha sweep compares the algorithms there, so a preset alpha counts as the default. A run that recorded
    the preset in force is judged by it, an older one by today's presets."""
    if r["alpha"] is None:
        return True
    rec = r["result"]["config"].get("preset")
    main = rec["flags"].get("alpha", DEFAULT_ALPHA) if rec else main_alpha(r["env"], r["tuning"], r["algo"])
    return r["alpha"] == main


def main_setting(runs: list[dict], n_main: int, algos=ALGOS) -> list[dict]:
    """Table 1's setting: expert, N_MAIN trajectories, dense, main alpha, eq. 16 target, default size; the
    seven offline algorithms unless `algos` says otherwise (online runs share the run folder)."""
    return [r for r in runs if r["algo"] in algos and r["quality"] == "expert" and r["num_trajs"] == n_main
            and not r["sparse"] and at_main_alpha(r) and not r["max_target"] and r["size"] == DEFAULT_SIZE]


def fmt(x, digits: int = 2) -> str:
    """'mean +- half-width of the 95% t interval' over seeds ('mean' for one seed, '-' for none)."""
    m, lo, hi = t_interval(x)
    if np.isnan(m):
        return "-"
    return f"{m:.{digits}f}" if np.isnan(lo) else f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def values(runs: list[dict], key: str) -> list[float]:
    """result[key] of every run that has it (runs made before validation episodes have no "selected")."""
    return [r["result"][key] for r in runs if key in r["result"]]


_NORM: dict = {}


def normaliser(env: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-task random and expert returns of the behaviour policy (behaviour/<env>.pt, in git)."""
    if env not in _NORM:
        beh = load_behaviour(os.path.join(ROOT, "behaviour", f"{env}.pt"))
        _NORM[env] = (np.asarray(beh["random_return"], float), np.asarray(beh["expert_return"], float))
    return _NORM[env]


def normalised(run: dict, key: str) -> float:
    """Mean over the run's tasks of (return - random) / (expert - random)."""
    rnd, exp = normaliser(run["env"])
    return float(np.mean([(t[key] - rnd[t["task"]]) / (exp[t["task"]] - rnd[t["task"]]) for t in run["result"]["tasks"]]))


def num(x: float, digits: int = 1) -> str:
    return "-" if np.isnan(x) else f"{x:.{digits}f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def present(runs, key: str, order: list) -> list:
    have = {r[key] for r in runs}
    return [x for x in order if x in have]


def savefig(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


MADE_BY = ""  # the command that made the runs (--made-by), printed under each title


def write(out_dir: str, name: str, text: str) -> str:
    if MADE_BY:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\nMade by `{MADE_BY}`.\n{rest}"
    path = os.path.join(out_dir, name)
    atomic_write(path, lambda f: f.write(text), "w")
    return path


def plt_subplots(n: int, ncols: int = 4, w: float = 4.2, h: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(ncols, max(n, 1))
    nrows = (max(n, 1) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


SETTING = ("algo", "env", "tuning", "quality", "num_trajs", "sparse", "alpha", "max_target", "size")


def groups(runs) -> dict:
    """runs by setting (everything but the seed)"""
    out = defaultdict(list)
    for r in runs:
        out[tuple(r[k] for k in SETTING)].append(r)
    return out


def seeds_note(runs) -> str:
    n = sorted({len(g) for g in groups(runs).values()})
    return f"seeds per cell: {', '.join(map(str, n)) or 'none'}"


def protocol_note(runs) -> str:
    if not runs:
        return "No runs found."
    c = runs[0]["result"]["config"]
    return (f"{len(runs)} runs; {c['total_steps']} steps per task, evaluation every {c['eval_every']} steps "
            f"with {c['eval_episodes']} episodes per task; {seeds_note(runs)}. Cells: mean ± half-width of the "
            f"95% Student-t interval over seeds (mean alone for one seed; see benchmark/stats.py for why not a bootstrap).")


def evaluation_section(runs, envs) -> list[str]:
    """Can an evaluation rank checkpoints? Per env: episodes per evaluation, the median 95% half-width of one
    task's evaluation (from the logged per-episode spread) against the target (10% of expert - random;
    MetaWorld's success: 0.15 at the worst case p = 0.5), and the median within-task correlation between the
    validation and reporting scores over a run's checkpoints (near 0: selection is a random pick)."""
    from scipy import stats as st

    rows = []
    for env in envs:
        cell = select(runs, env=env)
        rnd, exp = normaliser(env)
        n = sorted({r["result"]["config"]["eval_episodes"] for r in cell})
        hw, frac, corr = [], [], []
        for r in cell:
            k = r["result"]["config"]["eval_episodes"]
            for t in r["result"]["tasks"]:
                pts = t["curve"][1:]
                for c in t["curve"]:
                    if "return_sd" in c and k > 1:
                        hw.append(st.t.ppf(0.975, k - 1) * c["return_sd"] / np.sqrt(k))
                        frac.append(hw[-1] / (exp[t["task"]] - rnd[t["task"]]))
                if len(pts) >= 3:
                    v, rep = [c["val_return"] for c in pts], [c["return"] for c in pts]
                    if np.std(v) > 0 and np.std(rep) > 0:
                        corr.append(np.corrcoef(v, rep)[0, 1])
        succ_hw = 1.96 * 0.5 / np.sqrt(max(n)) if env == "metaworld" and n else None
        rows.append([ELABEL[env], "/".join(map(str, n)),
                     f"{np.median(hw):.1f} ({np.median(frac):.0%} of the range)" if hw else "not logged",
                     f"{succ_hw:.2f} (at p = 0.5)" if succ_hw is not None else "",
                     f"{np.median(corr):.2f} ({len(corr)} task-runs)" if corr else "fewer than 3 checkpoints"])
    return ["## Evaluation precision\n",
            "Per env: episodes per evaluation (each of validation and reporting; common/rollout.py EVAL_EPISODES), "
            "the median 95% half-width of one task's evaluation (target: at most 10% of the expert-minus-random "
            "range; MetaWorld success at most 0.15), and the median within-task correlation of validation and "
            "reporting scores over a run's checkpoints after step 0 (how well selection can rank them).\n",
            md_table(["Env", "Episodes", "Return half-width", "Success half-width", "Validation-reporting correlation"],
                     rows), ""]


# ---------------------------------------------------------------- Table 1 and its takeaways
def table1(runs, args) -> list[str]:
    runs = main_setting(runs, args.n_main)
    envs = present(runs, "env", ENVS)
    text = [f"# Table 1: algorithms x tunings, expert data, {args.n_main} trajectories\n", protocol_note(runs), ""]
    text += evaluation_section(runs, envs)
    means = {}  # (which, tuning, env, algo) -> mean over seeds; algo "zero_shot" for zero-shot
    title = {"selected": "Selected checkpoint (chosen on validation episodes, scored on the reporting episodes)",
             "final": "Final checkpoint",
             "best": "Best checkpoint (the paper's protocol: the maximum of the reported evaluations, optimistic)"}
    for which in ("selected", "final", "best"):
        rows = []
        for tuning in TUNINGS:
            for env in envs:
                cell = select(runs, tuning=tuning, env=env)
                zs = list({r["seed"]: r["result"]["zero_shot"] for r in cell}.values())  # one per seed: same model
                row = [TLABEL[tuning], ELABEL[env], fmt(zs)]
                means[which, tuning, env, "zero_shot"] = np.mean(values(cell, "zero_shot")) if cell else np.nan
                for algo in ALGOS:
                    c = select(cell, algo=algo)
                    row.append(fmt(values(c, which)))
                    means[which, tuning, env, algo] = np.mean(values(c, which)) if c else np.nan
                rows.append(row)
            if len(envs) > 1:
                rows.append([TLABEL[tuning], "**Average**"] + [num(np.mean([means[which, tuning, e, a] for e in envs]), 2)
                                                             for a in ["zero_shot", *ALGOS]])
        text += [f"## {title[which]}: return\n",
                 md_table(["Tuning", "Env", "Zero-shot", *[LABEL[a] for a in ALGOS]], rows), ""]
    if "metaworld" in envs:  # the paper measures MetaWorld by its success rate
        rows = []
        for which in ("selected", "final", "best"):
            for tuning in TUNINGS:
                cell = select(runs, tuning=tuning, env="metaworld")
                zs = list({r["seed"]: r["result"]["zero_shot_success"] for r in cell}.values())
                rows.append([which, TLABEL[tuning], fmt(zs)] + [fmt(values(select(cell, algo=a), f"{which}_success"))
                                                               for a in ALGOS])
        text += ["## MetaWorld success rate\n", md_table(["Checkpoint", "Tuning", "Zero-shot", *[LABEL[a] for a in ALGOS]],
                                                         rows), ""]
    text += aggregate_section(runs, envs, args.out_dir)
    # side by side with the paper
    rows = []
    for env in envs:
        for tuning in TUNINGS:
            p = PAPER_TABLE1[tuning][env]
            rows.append([ELABEL[env], TLABEL[tuning]] + [f"{num(means['best', tuning, env, a])} / {p[i]:.1f}"
                                                         for i, a in enumerate(["zero_shot", *ALGOS])])
    text += ["## Ours vs the paper (best checkpoint, ours / paper)\n",
             "Absolute returns differ: our datasets, behaviour policies, model and step budget are our own "
             "(see the README); the comparison that carries over is the ordering, checked below.\n",
             md_table(["Env", "Tuning", "Zero-shot", *[LABEL[a] for a in ALGOS]], rows), ""]
    done = [t for t in TUNINGS if not any(np.isnan(means[w, t, e, a]) for w in ("selected", "final", "best")
                                          for e in envs for a in ALGOS)]  # tunings with every (env, algorithm)
    text += ["## The paper's takeaways, checked\n",
             f"Each claim is judged per env and pooled over the envs task by task, on normalised scores, in the tunings "
             f"run for every algorithm ({', '.join(TLABEL[t] for t in done) or 'none'}): **held** when the 95% "
             "stratified-bootstrap interval of every probability of improvement behind it lies above 0.5, **not held** "
             "when one lies below 0.5, **inconclusive** otherwise; the figure shown is the weakest P(X > Y) "
             "[interval]. Within-tuning claims must hold in every such tuning. The paper's column applies the same "
             "claims to its own Table 1 means for that env (no intervals).\n", *takeaways(runs, envs, done), ""]
    text += runtime_section(runs)
    plot_table1(runs, envs, args.out_dir)
    text += ["![Table 1](table1.png)", "", "Learning curves (step 0 is zero-shot): ![curves](table1_curves.png)", ""]
    return [write(args.out_dir, "table1.md", "\n".join(text)), os.path.join(args.out_dir, "table1.png"),
            os.path.join(args.out_dir, "table1_profiles.png"), os.path.join(args.out_dir, "table1_curves.png")]


def task_scores(runs, key: str) -> dict:
    """{(env, task): [normalised score of each run]} of key ("selected", "final", "zero_shot", ...)."""
    out = defaultdict(list)
    for r in runs:
        rnd, exp = normaliser(r["env"])
        for t in r["result"]["tasks"]:
            if key in t:
                out[r["env"], t["task"]].append((t[key] - rnd[t["task"]]) / (exp[t["task"]] - rnd[t["task"]]))
    return out


def aggregate_section(runs, envs, out_dir) -> list[str]:
    """Agarwal et al. (2021): IQM and mean of the normalised score over seeds x tasks with stratified-bootstrap
    intervals, the probability of improvement over SFT and over zero-shot, and performance profiles; per env,
    and pooled over the envs where every algorithm shown has run on all of them."""
    tunings = present(runs, "tuning", TUNINGS)
    scopes = [[e] for e in envs] + ([list(envs)] if len(envs) > 1 else [])
    text = ["## Aggregates over seeds x tasks (Agarwal et al., 2021)\n",
            "Normalised score per task: (return - random) / (expert - random), the behaviour policy's per-task returns "
            "(behaviour/<env>.pt). IQM and mean with 95% stratified-bootstrap intervals (seeds resampled within each "
            "task); P(X > SFT) and P(X > zero-shot): the probability that a run of X beats one of the other on a "
            "random task, 95% interval likewise (benchmark/stats.py). n: runs x tasks. Pooled over envs only for the "
            "algorithms that ran on every task of every env. Performance profiles: table1_profiles.png.\n"]
    panels = [(t, sc, w) for t in tunings for sc in scopes for w in ("selected", "final")]
    fig, axes = plt_subplots(len(panels), ncols=2, w=6, h=3.6)
    ci = lambda m, lo, hi: "-" if np.isnan(m) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"  # noqa: E731
    for ax, (tuning, scope, which) in zip(axes, panels):
        cell = [r for r in select(runs, tuning=tuning) if r["env"] in scope]
        zero = task_scores({(r["env"], r["seed"]): r for r in cell}.values(), "zero_shot")  # one per seed: same model
        keys = sorted(zero)  # every task of the scope (any run evaluates zero-shot on its tasks)
        scores = {a: task_scores(select(cell, algo=a), which) for a in ALGOS}
        # pooled over envs: only methods with runs on every task, so that no method is averaged over other tasks
        shown = [a for a in ALGOS if scores[a] and (len(scope) == 1 or set(scores[a]) == set(keys))]
        as_list = lambda s: [np.array(s.get(t, [])) for t in keys]  # noqa: E731
        rows = [["Zero-shot", sum(map(len, zero.values())), ci(*aggregate(as_list(zero), iqm)),
                 ci(*aggregate(as_list(zero), mean)), "-", "-"]]
        for a in shown:
            xs = as_list(scores[a])
            rows.append([LABEL[a], sum(map(len, xs)), ci(*aggregate(xs, iqm)), ci(*aggregate(xs, mean)),
                         "-" if a == "sft" or "sft" not in shown else ci(*probability_of_improvement(xs, as_list(scores["sft"]))),
                         ci(*probability_of_improvement(xs, as_list(zero)))])
        missing = [LABEL[a] for a in ALGOS if a not in shown]
        text += [f"**{TLABEL[tuning]}, {' + '.join(ELABEL[e] for e in scope)}, {which} checkpoint**\n",
                 md_table(["", "n", "IQM", "Mean", "P(X > SFT)", "P(X > zero-shot)"], rows),
                 f"\n(not shown, missing runs: {', '.join(missing)})\n" if missing else ""]
        flat = np.concatenate([np.array(v) for s in [zero, *(scores[a] for a in shown)] for v in s.values()])
        taus = np.linspace(flat.min() - 0.02, flat.max() + 0.02, 101)
        for a in ("zero_shot", *shown):
            p, lo, hi = performance_profile([np.array(v) for v in (zero if a == "zero_shot" else scores[a]).values()], taus)
            style = {"color": "k", "ls": "--"} if a == "zero_shot" else {"color": f"C{ALGOS.index(a)}"}
            ax.plot(taus, p, label=LABEL.get(a, "zero-shot"), lw=1.2, **style)
            ax.fill_between(taus, lo, hi, alpha=0.12, color=style["color"])
        ax.set_title(f"{TLABEL[tuning]}, {' + '.join(ELABEL[e] for e in scope)}, {which}", fontsize=9)
        ax.set_xlabel("normalised score tau")
        ax.set_ylabel("fraction of runs > tau")
        ax.legend(fontsize=6, ncol=2)
    savefig(fig, out_dir, "table1_profiles.png")
    return text + ["![Performance profiles](table1_profiles.png)", ""]


def verdict(p: float, lo: float, hi: float) -> str:
    """A claim 'X beats Y' from P(X > Y) and its 95% interval: held, not held or inconclusive."""
    if np.isnan(p):
        return "n/a"
    return "held" if lo > 0.5 else "not held" if hi < 0.5 else "inconclusive"


def all_of(tests: list[tuple]) -> str:
    """Several 'X beats Y' at once: held if every one is, not held if any is not; with the weakest figure."""
    tests = [t for t in tests if not np.isnan(t[0])]
    if not tests:
        return "n/a (runs missing)"
    vs = [verdict(*t) for t in tests]
    v = "not held" if "not held" in vs else "held" if all(x == "held" for x in vs) else "inconclusive"
    p, lo, hi = min(tests, key=lambda t: t[0])
    return f"{v}: P {p:.2f} [{lo:.2f}, {hi:.2f}]"


CLAIMS = [  # (the paper's takeaway, needs all four tunings)
    ("every algorithm beats zero-shot", False),
    ("QP-SFT or QP-DPO scores highest", False),
    ("QP-SFT beats SFT", False),
    ("QP-DPO beats DPO", False),
    ("full-model tuning is best for QP-SFT and QP-DPO", True),
    ("full-model tuning is best for SFT and DPO", True),
    ("GRPO and CQL do best with a parameter-efficient tuning (LoRA or decorator)", True),
]


def judge(runs, scope: list[str], tunings: list[str], which: str, reps: int = 1000) -> list[str]:
    """Each claim of CLAIMS on the normalised per-task scores of `scope` (one env, or several pooled task by
    task), from probabilities of improvement with stratified-bootstrap intervals; within-tuning claims must
    hold in every tuning of `tunings`."""
    keys = sorted({(r["env"], t["task"]) for r in runs if r["env"] in scope for t in r["result"]["tasks"]})
    cache = {}

    def sc(algo, tuning):
        if (algo, tuning) not in cache:
            cell = [r for r in select(runs, tuning=tuning) if r["env"] in scope]
            if algo == "zero_shot":
                d = task_scores({(r["env"], r["seed"]): r for r in cell}.values(), "zero_shot")
            else:
                d = task_scores(select(cell, algo=algo), which)
            cache[algo, tuning] = [np.array(d.get(k, [])) for k in keys]
        return cache[algo, tuning]

    def poi(x, y):
        xs, ys = sc(*x), sc(*y)
        if any(len(a) == 0 for a in xs) or any(len(b) == 0 for b in ys):  # a method missing a task: no verdict
            return (np.nan, np.nan, np.nan)
        return probability_of_improvement(xs, ys, reps=reps)

    def best_iqm(algos, tuning):
        return max(algos, key=lambda a: iqm(np.concatenate(sc(a, tuning))) if all(map(len, sc(a, tuning))) else -np.inf)

    four = len(tunings) == len(TUNINGS)
    if not tunings:
        return ["n/a (no tuning has runs of every algorithm)"] * len(CLAIMS)
    out = []
    for claim, needs_four in CLAIMS:
        if needs_four and not four:
            out.append("n/a (tunings not run)")
            continue
        if claim.startswith("every algorithm"):
            tests = [poi((a, t), ("zero_shot", t)) for t in tunings for a in ALGOS]
        elif claim.startswith("QP-SFT or QP-DPO"):
            tests = [poi((best_iqm(("qp_sft", "qp_dpo"), t), t), (a, t)) for t in tunings
                     for a in ALGOS if not a.startswith("qp")]
        elif claim == "QP-SFT beats SFT":
            tests = [poi(("qp_sft", t), ("sft", t)) for t in tunings]
        elif claim == "QP-DPO beats DPO":
            tests = [poi(("qp_dpo", t), ("dpo", t)) for t in tunings]
        elif claim.startswith("full-model tuning"):
            algos = ("qp_sft", "qp_dpo") if "QP" in claim else ("sft", "dpo")
            tests = [poi((a, "full"), (a, t)) for a in algos for t in TUNINGS if t != "full"]
        else:
            tests = []
            for a in ("grpo", "cql"):
                pe = max(("lora", "decorator"), key=lambda t: iqm(np.concatenate(sc(a, t))) if all(map(len, sc(a, t)))
                         else -np.inf)
                tests += [poi((a, pe), (a, t)) for t in ("full", "prompt")]
        out.append(all_of(tests))
    return out


def paper_verdicts(env: str, tunings: list[str]) -> list[str]:
    """The same claims on the paper's own Table 1 numbers for one env (its means: no intervals)."""
    col = ["zero_shot", *ALGOS]
    v = lambda t, a: PAPER_TABLE1[t][env][col.index(a)]  # noqa: E731
    best_t = lambda a: max(TUNINGS, key=lambda t: v(t, a))  # noqa: E731
    four = len(tunings) == len(TUNINGS)
    tests = [all(v(t, a) > v(t, "zero_shot") for t in tunings for a in ALGOS),
             all(max(ALGOS, key=lambda a: v(t, a)) in ("qp_sft", "qp_dpo") for t in tunings),
             all(v(t, "qp_sft") > v(t, "sft") for t in tunings), all(v(t, "qp_dpo") > v(t, "dpo") for t in tunings),
             four and all(best_t(a) == "full" for a in ("qp_sft", "qp_dpo")),
             four and all(best_t(a) == "full" for a in ("sft", "dpo")),
             four and all(best_t(a) in ("lora", "decorator") for a in ("grpo", "cql"))]
    return [("n/a (tunings not run)" if needs and not four else "held" if ok else "not held")
            for ok, (_, needs) in zip(tests, CLAIMS)] if tunings else ["n/a"] * len(CLAIMS)


def takeaways(runs, envs, tunings) -> list[str]:
    """The paper's takeaways judged per env and pooled over envs on normalised scores (never on raw returns
    summed across envs), each held / not held / inconclusive with the probability of improvement behind it."""
    text = []
    for scope in [[e] for e in envs] + ([list(envs)] if len(envs) > 1 else []):
        cols = [judge(runs, scope, tunings, w) for w in ("selected", "final", "best")]
        paper = paper_verdicts(scope[0], tunings) if len(scope) == 1 else ["-"] * len(CLAIMS)
        rows = [[claim, paper[i], *(c[i] for c in cols)] for i, (claim, _) in enumerate(CLAIMS)]
        text += [f"**{' + '.join(ELABEL[e] for e in scope)}**" + (" (pooled task by task)" if len(scope) > 1 else ""),
                 "", md_table(["Takeaway", "paper", "ours (selected)", "ours (final)", "ours (best)"], rows), ""]
    return text


def runtime_section(runs) -> list[str]:
    """Table 4 (lower half): wall time and train time per algorithm and tuning relative to SFT."""
    out = ["## Runtime relative to SFT (Table 4, lower half)\n",
           "Mean over the runs of each cell (envs and seeds), divided by SFT's in the same tuning; the runs shared "
           "the machine two at a time with one torch thread each. Wall time is the whole run; train time only the "
           "gradient steps (it leaves out the evaluations and the one-off reference / target tables and critic "
           "warm-ups, whose share shrinks as the number of steps grows).\n"]
    for key, what in (("wall_time_s", "wall time"), ("train_time_s", "train time")):
        rows = []
        for tuning in present(runs, "tuning", TUNINGS):
            base = np.mean(values(select(runs, tuning=tuning, algo="sft"), key) or [np.nan])
            row = [TLABEL[tuning], f"{base / 60:.1f} min" if not np.isnan(base) else "-"]
            for algo in ALGOS:
                w = values(select(runs, tuning=tuning, algo=algo), key)
                row.append(f"{np.mean(w) / base:.2f}" if w and not np.isnan(base) else "-")
            rows.append(row)
        out += [f"**{what.capitalize()}**\n", md_table(["Tuning", f"SFT {what}", *[LABEL[a] for a in ALGOS]], rows), ""]
    return out


def plot_table1(runs, envs, out_dir):
    tunings = [t for t in TUNINGS if select(runs, tuning=t)]  # only the tunings that were run
    fig, axes = plt_subplots(len(envs), ncols=2, w=7, h=3.6)
    width = 0.8 / len(ALGOS)
    for ax, env in zip(axes, envs):
        labelled = set()  # each algorithm and "final" once in the legend
        for i, algo in enumerate(ALGOS):
            for j, tuning in enumerate(tunings):
                c = select(runs, env=env, tuning=tuning, algo=algo)
                if not c:
                    continue
                m, lo, hi = t_interval(values(c, "selected"))
                x = j - 0.4 + width * (i + 0.5)
                # markers, not bars: returns can be negative, where a bar's length would mean nothing
                ax.errorbar(x, m, yerr=None if np.isnan(lo) else [[m - lo], [hi - m]], fmt="o", color=f"C{i}",
                            capsize=2, label=None if algo in labelled else LABEL[algo])
                ax.plot(x, np.mean(values(c, "final")), "x", color=f"C{i}", ms=5,
                        label=None if "final" in labelled else "final")
                labelled |= {algo, "final"}
        zs = values(select(runs, env=env), "zero_shot")
        ax.axhline(np.mean(zs), color="k", ls="--", lw=1, label="zero-shot")
        lo = min([np.mean(zs)] + [np.mean(values(select(runs, env=env, tuning=t, algo=a), k))
                                  for t in tunings for a in ALGOS for k in ("selected", "final")
                                  if select(runs, env=env, tuning=t, algo=a)])
        hi = max(np.mean(values(select(runs, env=env, tuning=t, algo=a), "selected"))
                 for t in tunings for a in ALGOS if select(runs, env=env, tuning=t, algo=a))
        pad = 0.15 * (hi - lo + 1e-9)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(range(len(tunings)), [TLABEL[t] for t in tunings])
        ax.set_title(f"{ELABEL[env]}: selected checkpoint (o, 95% t interval over seeds), final (x)", fontsize=9)
        ax.set_ylabel("return")
        ax.legend(fontsize=7, ncol=3)
    savefig(fig, out_dir, "table1.png")
    # the learning curves behind the table: reporting and validation return against the finetuning step
    fig, axes = plt_subplots(len(envs) * len(tunings), ncols=max(len(tunings), 2), w=5.5, h=3.6)
    for ax, (env, tuning) in zip(axes, [(e, t) for e in envs for t in tunings]):
        for i, algo in enumerate(ALGOS):
            c = select(runs, env=env, tuning=tuning, algo=algo)
            if not c:
                continue
            steps = [pt["step"] for pt in c[0]["result"]["tasks"][0]["curve"]]
            for key, ls in (("return", "-"), ("val_return", ":")):
                if any(key not in pt for r in c for t in r["result"]["tasks"] for pt in t["curve"]):
                    continue  # results from before validation episodes existed
                y = np.mean([[np.mean([t["curve"][k][key] for t in r["result"]["tasks"]]) for k in range(len(steps))]
                             for r in c], 0)
                ax.plot(steps, y, ls, marker="o" if ls == "-" else None, ms=3, color=f"C{i}",
                        label=LABEL[algo] if ls == "-" else None)
        ax.set_title(f"{ELABEL[env]}, {TLABEL[tuning]}: reporting (-) and validation (:) return", fontsize=9)
        ax.set_xlabel("finetuning step (per task)")
        ax.set_ylabel("return, mean over tasks and seeds")
        ax.legend(fontsize=7, ncol=2)
    savefig(fig, out_dir, "table1_curves.png")


# ---------------------------------------------------------------- the other experiments
def fig8(runs, args) -> list[str]:
    runs = main_setting(runs, args.n_main)
    envs = present(runs, "env", ENVS)
    text = ["# Figure 8: normalised score per test task (selected checkpoint)\n", protocol_note(runs),
            "Normalised score: (return - random) / (expert - random), the behaviour policy's per-task returns.\n"]
    panels = [(e, t) for e in envs for t in present(select(runs, env=e), "tuning", TUNINGS)]
    fig, axes = plt_subplots(len(panels), ncols=2, w=7, h=3.2)
    for ax, (env, tuning) in zip(axes, panels):
        cell = select(runs, env=env, tuning=tuning)
        tasks = sorted({t["task"] for r in cell for t in r["result"]["tasks"]})
        rnd, exp = normaliser(env)
        rows, width = [], 0.8 / len(ALGOS)
        for i, algo in enumerate(ALGOS):
            c = select(cell, algo=algo)
            row = [LABEL[algo]]
            for k, task in enumerate(tasks):
                xs = [(t["selected"] - rnd[task]) / (exp[task] - rnd[task]) for r in c for t in r["result"]["tasks"] if "selected" in t
                      if t["task"] == task]
                row.append(fmt(xs, 3))
                if xs:
                    m, lo, hi = t_interval(xs)
                    ax.bar(k - 0.4 + width * (i + 0.5), m, width, color=f"C{i}", label=LABEL[algo] if k == 0 else None,
                           yerr=None if np.isnan(lo) else [[m - lo], [hi - m]], capsize=2)
            rows.append(row)
        zs = [[(t["zero_shot"] - rnd[t["task"]]) / (exp[t["task"]] - rnd[t["task"]]) for t in r["result"]["tasks"]
               if t["task"] == task] for task in tasks for r in cell[:1]]
        rows.insert(0, ["Zero-shot"] + [f"{z[0]:.3f}" if z else "-" for z in zs])
        ax.plot(range(len(tasks)), [z[0] if z else np.nan for z in zs], "k_", ms=20, mew=2, label="zero-shot")
        ax.set_xticks(range(len(tasks)), [f"task {t}" for t in tasks])
        ax.set_title(f"{ELABEL[env]}, {TLABEL[tuning]}")
        ax.set_ylabel("normalised score")
        text += [f"## {ELABEL[env]}, {TLABEL[tuning]}\n", md_table(["Algorithm", *[f"task {t}" for t in tasks]], rows), ""]
    if panels:
        axes[0].legend(fontsize=7, ncol=4)
    savefig(fig, args.out_dir, "fig8.png")
    text += ["![Figure 8](fig8.png)", ""]
    return [write(args.out_dir, "fig8.md", "\n".join(text)), os.path.join(args.out_dir, "fig8.png")]


def table2(runs, args) -> list[str]:
    rows = []
    for env in args.envs:
        path = os.path.join(args.data_dir, env, "summary.json")
        if not os.path.exists(path):
            rows.append([ELABEL[env], "-", f"missing {path}: run python collect_data.py --env {env}", "", "", ""])
            continue
        with open(path) as f:
            s = json.load(f)
        for q in ("expert", "medium"):
            r = s["qualities"][q]
            p = PAPER_TABLE2[env, q]
            rows.append([ELABEL[env], q.capitalize(), f"{r['TQ']:.2f}", f"{r['SACo']:.2f}", f"{p[0]:.2f}", f"{p[1]:.2f}"])
    text = ["# Table 2: TQ and SACo of the finetuning datasets (50 trajectories per test task)\n",
            "TQ and SACo (Schweighofer et al. 2022) averaged over the test tasks, with the task's expert + medium data "
            "as the reference, from <data-dir>/<env>/summary.json (written by collect_data.py).\n",
            md_table(["Env", "Quality", "TQ", "SACo", "TQ (paper)", "SACo (paper)"], rows), ""]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        if row[1] in ("Expert", "Medium"):
            ax.scatter(float(row[3]), float(row[2]), marker="o" if row[1] == "Expert" else "s",
                       label=f"{row[0]} {row[1].lower()}")
    ax.set_xlabel("SACo")
    ax.set_ylabel("TQ")
    ax.legend(fontsize=7)
    savefig(fig, args.out_dir, "table2.png")
    return [write(args.out_dir, "table2.md", "\n".join(text)), os.path.join(args.out_dir, "table2.png")]


def ablation_runs(runs, args, **kw):
    """The setting of an ablation: dense / default alpha / eq. 16 target / default size unless given, and
    only the ablation tunings (--abl-tunings), so that every point averages over the same tunings."""
    base = {"sparse": False, "max_target": False, "size": DEFAULT_SIZE}
    base.update(kw)
    out = [r for r in select(runs, **base) if r["tuning"] in args.abl_tunings and r["algo"] in ALGOS]
    return [r for r in out if "alpha" in kw or at_main_alpha(r)]


def fig1(runs, args) -> list[str]:
    runs = ablation_runs(runs, args, num_trajs=args.n_main)
    envs = [e for e in present(runs, "env", ENVS) if select(runs, env=e, quality="medium")]  # medium vs expert
    runs = [r for r in runs if r["env"] in envs]
    text = [f"# Figure 1: medium vs expert data ({args.n_main} trajectories)\n", protocol_note(runs),
            "Selected checkpoint (chosen on validation episodes), averaged over the tunings run; normalised so the best algorithm of each (env, quality) "
            "is 1 (the paper's normalisation). Raw returns (mean ± 95% t interval over seeds x tunings) in brackets.\n"]
    fig, axes = plt_subplots(len(envs), ncols=2, w=7, h=3.2)
    rows = []
    for ax, env in zip(axes, envs):
        for qi, q in enumerate(("medium", "expert")):
            m = {a: np.mean(values(select(runs, env=env, quality=q, algo=a), "selected") or [np.nan]) for a in ALGOS}
            top = np.nanmax(list(m.values())) if not all(np.isnan(list(m.values()))) else np.nan
            for i, a in enumerate(ALGOS):
                score = m[a] / top if top > 0 else (top / m[a] if m[a] < 0 else np.nan)  # returns can be negative
                ax.bar(i + (qi - 0.5) * 0.4, score, 0.4, color="C0" if q == "medium" else "C1",
                       label=q if i == 0 else None)
            rows.append([ELABEL[env], q] + [f"{(m[a] / top if top > 0 else top / m[a]):.3f} "
                                             f"({fmt(values(select(runs, env=env, quality=q, algo=a), 'selected'), 1)})"
                                             if not np.isnan(m[a]) else "-" for a in ALGOS])
        ax.set_xticks(range(len(ALGOS)), [LABEL[a] for a in ALGOS], fontsize=7)
        ax.set_title(ELABEL[env])
        ax.set_ylabel("normalised (best = 1)")
        ax.legend(fontsize=7)
    text += [md_table(["Env", "Quality", *[LABEL[a] for a in ALGOS]], rows), "",
             "For negative returns (HalfCheetahVel) the normalisation is best / score, so the best is still 1.", "",
             "![Figure 1](fig1.png)", ""]
    savefig(fig, args.out_dir, "fig1.png")
    return [write(args.out_dir, "fig1.md", "\n".join(text)), os.path.join(args.out_dir, "fig1.png")]


def curves_vs(runs, envs, key, xs, out_dir, name, title, logx=False, algos=ALGOS, panel_key="quality",
              panels=("medium", "expert")) -> tuple[list[str], str]:
    """A line per algorithm of the selected checkpoint vs `key`, one panel per (env, panel value)."""
    grid = [(e, p) for e in envs for p in panels]
    fig, axes = plt_subplots(len(grid), ncols=2, w=6, h=3.2)
    rows = []
    for ax, (env, p) in zip(axes, grid):
        for i, a in enumerate(algos):
            ms, row = [], [ELABEL[env], p, LABEL[a]]
            for x in xs:
                c = select(runs, env=env, algo=a, **{panel_key: p, key: x})
                ms.append(np.mean(values(c, "selected")) if c else np.nan)
                row.append(fmt(values(c, "selected"), 1))
            rows.append(row)
            ax.plot(xs, ms, "o-", color=f"C{ALGOS.index(a)}", label=LABEL[a])
        if logx:
            ax.set_xscale("log")
        ax.set_title(f"{ELABEL[env]}, {p}")
        ax.set_xlabel(key.replace("_", " "))
        ax.set_ylabel("return (selected)")
    if grid:
        axes[0].legend(fontsize=7)
    fig.suptitle(title)
    savefig(fig, out_dir, name)
    return rows, os.path.join(out_dir, name)


def fig2(runs, args) -> list[str]:
    runs = ablation_runs(runs, args)
    envs = present(runs, "env", ENVS)
    ns = sorted({r["num_trajs"] for r in runs})
    rows, png = curves_vs(runs, envs, "num_trajs", ns, args.out_dir, "fig2.png", "Figure 2: number of trajectories")
    text = ["# Figure 2: number of finetuning trajectories (dense reward)\n", protocol_note(runs),
            "Best checkpoint, mean ± 95% t interval over seeds x the tunings run.\n",
            md_table(["Env", "Quality", "Algorithm", *[f"N={n}" for n in ns]], rows), "", "![Figure 2](fig2.png)", ""]
    return [write(args.out_dir, "fig2.md", "\n".join(text)), png]


def fig34(runs, args) -> list[str]:
    base = [r for r in runs if not r["max_target"] and r["size"] == DEFAULT_SIZE and at_main_alpha(r)
            and r["tuning"] in args.abl_tunings]
    sparse = select(base, sparse=True)
    envs = present(base, "env", ENVS)
    ns = sorted({r["num_trajs"] for r in sparse})
    rows, png3 = curves_vs(sparse, envs, "num_trajs", ns, args.out_dir, "fig3.png", "Figure 3: sparse reward")
    text = ["# Figures 3 and 4: sparse reward\n", protocol_note(sparse),
            "## Figure 3: number of trajectories, sparse reward (selected checkpoint)\n",
            md_table(["Env", "Quality", "Algorithm", *[f"N={n}" for n in ns]], rows), "", "![Figure 3](fig3.png)", "",
            f"## Figure 4: dense vs sparse at {args.n_main} trajectories\n",
            "Normalised score (per task, (return - random) / (expert - random)), selected checkpoint, averaged over envs, "
            "tunings and seeds; mean ± 95% t interval over runs.\n"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), squeeze=False)
    rows = []
    for ax, q in zip(axes[0], ("medium", "expert")):
        for k, sp in enumerate((False, True)):
            ms = []
            for i, a in enumerate(ALGOS):
                xs = [normalised(r, "selected") for r in select(base, algo=a, quality=q, sparse=sp, num_trajs=args.n_main)]
                m, lo, hi = t_interval(xs)
                ms.append(fmt(xs, 3))
                ax.bar(i + (k - 0.5) * 0.4, m, 0.4, color="C1" if sp else "C0", label=("sparse" if sp else "dense")
                       if i == 0 else None, yerr=None if np.isnan(lo) else [[m - lo], [hi - m]], capsize=2)
            rows.append([q, "sparse" if sp else "dense", *ms])
        ax.set_xticks(range(len(ALGOS)), [LABEL[a] for a in ALGOS], fontsize=7)
        ax.set_title(f"Figure 4: {q} data")
        ax.set_ylabel("normalised score")
        ax.legend(fontsize=7)
    png4 = savefig(fig, args.out_dir, "fig4.png")
    text += [md_table(["Quality", "Reward", *[LABEL[a] for a in ALGOS]], rows), "", "![Figure 4](fig4.png)", ""]
    return [write(args.out_dir, "fig34.md", "\n".join(text)), png3, png4]


def fig5(runs, args) -> list[str]:
    runs = [r for r in select(runs, algo="qp_dpo", num_trajs=args.n_main, sparse=False)
            if at_main_alpha(r)]
    sizes = sorted({r["size"] for r in runs}, key=lambda s: (s[0] * s[1] * s[1], s))
    envs = present(runs, "env", ENVS)
    text = ["# Figure 5 / Table 3: QP-DPO across pretrained model sizes\n", protocol_note(runs)]
    fig, axes = plt_subplots(len(envs) * 2, ncols=2, w=6, h=3.4)
    k = 0
    for env in envs:
        for q in ("medium", "expert"):
            header = ["", *[f"l{s[0]} e{s[1]} h{s[2]}" for s in sizes]]
            rows = [["Model parameters"] + [next((f"{r['params'] / 1e6:.2f}M" for r in select(runs, env=env, size=s)
                                                 if r["params"]), "-") for s in sizes]]
            for tuning in TUNINGS:
                cells = [select(runs, env=env, quality=q, tuning=tuning, size=s) for s in sizes]
                rows.append([f"Size {TLABEL[tuning]}"] + [format_bytes(c[0]["result"]["trainable_bytes"]) if c else "-"
                                                          for c in cells])
                rows.append([f"{TLABEL[tuning]} (selected)"] + [fmt(values(c, "selected")) for c in cells])
                rows.append([f"{TLABEL[tuning]} (final)"] + [fmt(values(c, "final")) for c in cells])
                xs = [next((r["params"] for r in select(runs, env=env, size=s) if r["params"]), np.nan) for s in sizes]
                axes[k].plot(xs, [np.mean(values(c, "selected")) if c else np.nan for c in cells], "o-", label=TLABEL[tuning])
            axes[k].set_xscale("log")
            axes[k].set_title(f"{ELABEL[env]}, {q}")
            axes[k].set_xlabel("pretrained model parameters")
            axes[k].set_ylabel("return (selected)")
            axes[k].legend(fontsize=7)
            k += 1
            text += [f"## {ELABEL[env]}, {q}\n", md_table(header, rows), ""]
    savefig(fig, args.out_dir, "fig5.png")
    text += ["![Figure 5](fig5.png)", ""]
    return [write(args.out_dir, "fig5.md", "\n".join(text)), os.path.join(args.out_dir, "fig5.png")]




def fig7(runs, args) -> list[str]:
    runs = [r for r in select(runs, num_trajs=args.n_main, sparse=False, max_target=False, size=DEFAULT_SIZE)
            if r["algo"] in ("qp_sft", "qp_dpo") and r["tuning"] in args.abl_tunings]
    envs = present(runs, "env", ENVS)
    alphas = sorted({r["alpha"] for r in runs})
    rows, png = curves_vs(runs, envs, "alpha", alphas, args.out_dir, "fig7.png", "Figure 7: alpha", logx=True,
                          algos=["qp_dpo", "qp_sft"])
    text = ["# Figure 7: alpha, the weight of the Q term\n", protocol_note(runs),
            "Best checkpoint, mean ± 95% t interval over seeds x the tunings run.\n",
            md_table(["Env", "Quality", "Algorithm", *[f"alpha={a:g}" for a in alphas]], rows), "",
            "![Figure 7](fig7.png)", ""]
    return [write(args.out_dir, "fig7.md", "\n".join(text)), png]


def table4(runs, args) -> list[str]:
    main = main_setting(runs, args.n_main)
    qp = [r for r in select(runs, algo="qp_dpo", quality="expert", num_trajs=args.n_main, sparse=False)
          if at_main_alpha(r)]
    text = ["# Table 4: runtime\n", protocol_note(main + [r for r in qp if r not in main]), *runtime_section(main)]
    sizes = sorted({r["size"] for r in qp}, key=lambda s: (s[0] * s[1] * s[1], s))
    rows = [[TLABEL[t]] + [(f"{np.mean(values(c, 'wall_time_s')) / 60:.1f} min" if c else "-")
                           for c in (select(qp, tuning=t, size=s) for s in sizes)] for t in TUNINGS]
    header = ["QP-DPO, pretrained size"] + [
        f"l{s[0]} e{s[1]} h{s[2]} ({next((r['params'] / 1e6 for r in select(qp, size=s) if r['params']), np.nan):.2f}M)"
        for s in sizes]
    text += ["## Runtime per pretrained model size (Table 4, upper half): QP-DPO wall time per run\n",
             md_table(header, rows), ""]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for t in TUNINGS:
        base = np.mean(values(select(main, tuning=t, algo="sft"), "wall_time_s") or [np.nan])
        ax.plot([LABEL[a] for a in ALGOS], [np.mean(values(select(main, tuning=t, algo=a), "wall_time_s") or [np.nan]) / base
                                            for a in ALGOS], "o-", label=TLABEL[t])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("wall time / SFT's")
    ax.legend(fontsize=7)
    savefig(fig, args.out_dir, "table4.png")
    return [write(args.out_dir, "table4.md", "\n".join(text)), os.path.join(args.out_dir, "table4.png")]


def table6(runs, args) -> list[str]:
    runs = select(runs, algo="qp_sft", tuning="full", quality="expert", num_trajs=args.n_main, sparse=False,
                  size=DEFAULT_SIZE)
    runs = [r for r in runs if at_main_alpha(r)]
    envs = present(runs, "env", ENVS)
    rows = []
    for env in envs:
        o, m = select(runs, env=env, max_target=False), select(runs, env=env, max_target=True)
        p = PAPER_TABLE6[env]
        rows.append([ELABEL[env], fmt(values(o, "selected")), fmt(values(m, "selected")), fmt(values(o, "final")),
                     fmt(values(m, "final")), f"{p[0]:.2f}", f"{p[1]:.2f}"])
    text = ["# Table 6: QP-SFT's Q target, eq. 16 (original) vs max over sampled actions (eqs. 33-34)\n",
            protocol_note(runs), "Full-model tuning, expert data.\n",
            md_table(["Env", "original (selected)", "max (selected)", "original (final)", "max (final)", "original (paper)",
                      "max (paper)"], rows), ""]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(len(envs), 1), figsize=(3.5 * max(len(envs), 1), 3.2), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for i, mt in enumerate((False, True)):
            xs = values(select(runs, env=env, max_target=mt), "selected")
            m, lo, hi = t_interval(xs)
            ax.errorbar(i, m, yerr=None if np.isnan(lo) else [[m - lo], [hi - m]], fmt="o", color=f"C{i}", capsize=3)
            ax.plot(i, np.mean(values(select(runs, env=env, max_target=mt), "final") or [np.nan]), "x", color=f"C{i}")
        ax.set_xticks([0, 1], ["original", "max"])
        ax.set_xlim(-0.5, 1.5)
        ax.set_title(f"{ELABEL[env]}: selected (o), final (x)")
    savefig(fig, args.out_dir, "table6.png")
    return [write(args.out_dir, "table6.md", "\n".join(text)), os.path.join(args.out_dir, "table6.png")]


def online(runs, args) -> list[str]:
    """Online GRPO, mixed GRPO and online PPO against zero-shot and the best offline method (full tuning,
    expert data): selected and final scores, env steps and wall time, and curves against env steps."""
    runs = [r for r in main_setting(runs, args.n_main, ALGOS + ONLINE) if r["tuning"] == "full"]
    envs = [e for e in present(runs, "env", ENVS) if any(r["algo"] in ONLINE for r in select(runs, env=e))]
    text = ["# Beyond the paper: online finetuning vs the best offline method\n",
            "Full-model tuning, expert data, the test tasks of each env. Online: each iteration rolls out a group of "
            "episodes per task (the env steps used per task are in the table); offline: Table 1's runs, the best "
            "offline method being the one with the highest mean *validation* score at its selected checkpoint. "
            "Cells: mean ± half-width of the 95% Student-t interval over seeds; wall time per run (all its tasks). "
            "'SFT, then mixed GRPO' starts each task from an SFT run's selected checkpoint (--init-from, "
            "offline-to-online): its env steps and wall time are the online part's, to which SFT's offline run "
            "adds its own (Table 1's SFT wall time).\n"]
    fig, axes = plt_subplots(len(envs), ncols=2, w=6, h=3.8)
    for ax, env in zip(axes, envs):
        cell = select(runs, env=env)
        offline = [a for a in ALGOS if select(cell, algo=a)]
        best = max(offline, key=lambda a: np.mean(values(select(cell, algo=a), "selected_val")), default=None)
        rows, mw = [], env == "metaworld"
        # the step-0 score of a run started from an offline run is that run's, not zero-shot
        zs = list({r["seed"]: r["result"] for r in cell if not r["algo"].endswith("_from_offline")}.values())
        if zs:
            rows.append(["Zero-shot", len(zs), fmt([z["zero_shot"] for z in zs], 1), "-"]
                        + ([fmt([z["zero_shot_success"] for z in zs])] if mw else []) + ["0", "-"])
        for a in ([best] if best else []) + [a for a in ONLINE if select(cell, algo=a)]:
            c = select(cell, algo=a)
            steps = values(c, "env_steps")
            rows.append([LABEL[a] + (" (best offline)" if a == best else ""), len(c), fmt(values(c, "selected"), 1),
                         fmt(values(c, "final"), 1)] + ([fmt(values(c, "selected_success"))] if mw else [])
                        + [f"{np.mean(steps) / len(c[0]['result']['tasks']):,.0f}" if steps else "0 (offline data)",
                           f"{np.mean(values(c, 'wall_time_s')) / 60:.1f} min"])
            if a in ONLINE:  # mean over seeds and tasks of the return at each evaluation, against env steps
                pts = [[(pt.get("env_steps", 0), pt["return"]) for pt in t["curve"]] for r in c for t in r["result"]["tasks"]]
                x = np.mean([[p[0] for p in tc] for tc in pts], 0)
                ax.plot(x, np.mean([[p[1] for p in tc] for tc in pts], 0), "o-", color=f"C{ONLINE.index(a)}",
                        label=LABEL[a])
        if zs:
            ax.axhline(np.mean([z["zero_shot"] for z in zs]), color="k", ls="--", lw=1, label="zero-shot")
        if best:
            ax.axhline(np.mean(values(select(cell, algo=best), "selected")), color="gray", ls=":",
                       label=f"{LABEL[best]} (offline, selected)")
        ax.set_title(ELABEL[env])
        ax.set_xlabel("env steps per task")
        ax.set_ylabel("return, mean over tasks and seeds")
        ax.legend(fontsize=7)
        text += [f"## {ELABEL[env]}\n", md_table(["Method", "Seeds", "Selected", "Final"] + (["Selected success"] if mw else [])
                                                 + ["Env steps per task", "Wall time"], rows), ""]
    savefig(fig, args.out_dir, "online.png")
    text += ["![online vs offline](online.png)", ""]
    return [write(args.out_dir, "online.md", "\n".join(text)), os.path.join(args.out_dir, "online.png")]


def runs(all_runs, args) -> list[str]:
    """Every setting in the run directory: zero-shot / selected / final / best over seeds, wall time, curves."""
    rows = []
    fig, axes = plt_subplots(1, ncols=1, w=7, h=4)
    for i, (key, g) in enumerate(sorted(groups(all_runs).items(), key=lambda kv: str(kv[0]))):
        s = dict(zip(SETTING, key))
        label = (f"{LABEL.get(s['algo'], s['algo'])} {s['tuning']}" + (f" {s['quality']}" if s["quality"] != "expert" else "")
                 + (f" N={s['num_trajs']}" if s["num_trajs"] != args.n_main else "") + (" sparse" if s["sparse"] else ""))
        zs = list({r["seed"]: r["result"]["zero_shot"] for r in g}.values())
        rows.append([label, s["env"], len(g), fmt(zs, 1), fmt(values(g, "selected"), 1), fmt(values(g, "final"), 1),
                     fmt(values(g, "best"), 1), f"{np.mean(values(g, 'wall_time_s')) / 60:.1f} min"])
        steps = [c["step"] for c in g[0]["result"]["tasks"][0]["curve"]]
        curve = np.mean([[np.mean([t["curve"][j]["return"] for t in r["result"]["tasks"]]) for j in range(len(steps))]
                         for r in g], axis=0)
        axes[0].plot(steps, curve, "o-", color=f"C{i % 10}", label=label)
    axes[0].set_xlabel("finetuning step (per task)")
    axes[0].set_ylabel("return, mean over test tasks")
    if rows:
        axes[0].legend(fontsize=7)
    savefig(fig, args.out_dir, "runs.png")
    text = ["# Runs\n", protocol_note(all_runs), "",
            "Selected: the checkpoint with the best validation score, scored on the reporting episodes; best: the "
            "maximum of the reporting evaluations (the paper's protocol, optimistic).\n",
            md_table(["Setting", "Env", "Seeds", "Zero-shot", "Selected", "Final", "Best", "Wall time"], rows), "",
            "![curves](runs.png)", ""]
    return [write(args.out_dir, "runs.md", "\n".join(text)), os.path.join(args.out_dir, "runs.png")]


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
    global MADE_BY
    MADE_BY = args.made_by
    exps = EXPERIMENTS if args.experiments == ["all"] else args.experiments
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
    runs = load_runs(args.run_dir) if os.path.isdir(args.run_dir) else []
    for e in exps:
        paths = globals()[e](runs, args)
        print(f"{e}: " + ", ".join(paths))
        if e in ("table1", "runs"):
            with open(paths[0]) as f:
                print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
