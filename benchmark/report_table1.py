"""Table 1 (per env and tuning: zero-shot, selected / final / best with 95% t intervals), its evaluation
precision, which methods beat zero-shot, aggregate statistics over seeds x tasks (IQM, probability of
improvement), the paper's takeaways judged per env and pooled, runtime ratios (Figure 8, the per-task scores,
is in report_ablations.py)."""
from __future__ import annotations

import os
import sys
from collections import defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmark.stats import aggregate, iqm, mean, performance_profile, probability_of_improvement, t_interval  # noqa: E402
from common.flags import ALGOS  # noqa: E402  (the paper's column order)
from common.tuning import TUNINGS  # noqa: E402

from benchmark.report_common import (ELABEL, ENVS, LABEL, PAPER_TABLE1, TLABEL, fmt, main_setting, md_table,  # noqa: E402
                                     normaliser, num, plt_subplots, present, protocol_note, savefig, select, values,
                                     write)


def evaluation_section(runs, envs) -> list[str]:
    """Can an evaluation rank checkpoints? Per env: episodes per evaluation, the median 95% half-width of one
    task's evaluation (from the logged per-episode spread) against the target (10% of expert - random;
    MetaWorld's success: 0.15 at the worst case p = 0.5); how well validation ranks checkpoints: the median over
    tasks of the correlation between validation and reporting scores of all the task's checkpoints after step 0
    (every run's; near 0: selection is a random pick), and how often a run's selected checkpoint is the one its
    reporting episodes rank first (chance: one over the checkpoints per run)."""
    from scipy import stats as st

    from common.rollout import selection_key

    rows, notes = [], []
    for env in envs:
        cell = select(runs, env=env)
        rnd, exp = normaliser(env)
        n = sorted({r["result"]["config"]["eval_episodes"] for r in cell})
        hw, frac, by_task, same, chance = [], [], {}, [], []
        for r in cell:
            k = r["result"]["config"]["eval_episodes"]
            for t in r["result"]["tasks"]:
                pts = [c for c in t["curve"][1:] if "val_return" in c]  # results from before validation episodes: none
                for c in t["curve"]:
                    if "return_sd" in c and k > 1:
                        hw.append(st.t.ppf(0.975, k - 1) * c["return_sd"] / np.sqrt(k))
                        frac.append(hw[-1] / (exp[t["task"]] - rnd[t["task"]]))
                by_task.setdefault(t["task"], []).extend((c["val_return"], c["return"]) for c in pts)
                if len(pts) >= 2:  # the checkpoint selection picks (common/rollout.py summarise) vs reporting's first
                    rep_key = (lambda c: (c["success"], c["return"])) if "success" in pts[0] else (lambda c: c["return"])
                    same.append(int(max(pts, key=selection_key)["step"] == max(pts, key=rep_key)["step"]))
                    chance.append(1 / len(pts))
        corr = [np.corrcoef(*zip(*p))[0, 1] for p in by_task.values()
                if len(p) >= 3 and np.std([a for a, _ in p]) > 0 and np.std([b for _, b in p]) > 0]
        succ_hw = 1.96 * 0.5 / np.sqrt(max(n)) if env == "metaworld" and n else None
        rows.append([ELABEL[env], "/".join(map(str, n)),
                     f"{np.median(hw):.1f} ({np.median(frac):.0%} of the range)" if hw else "not logged",
                     f"{succ_hw:.2f} (at p = 0.5)" if succ_hw is not None else "",
                     f"{np.median(corr):.2f} ({len(corr)} tasks)" if corr else "fewer than 3 checkpoints",
                     f"{np.mean(same):.0%} of {len(same)} (chance {np.mean(chance):.0%})" if same else "-"])
        if corr and np.median(corr) < 0.3:
            notes.append(f"- {ELABEL[env]}: validation cannot rank the checkpoints (correlation {np.median(corr):.2f}): "
                         "their differences are below one evaluation's noise, so the selected checkpoint is close to "
                         "a random one; read selected and final as two draws of the same quantity, and best (the "
                         "maximum of noisy evaluations) as optimistic by about the noise.")
    return ["## Evaluation precision\n",
            "Per env: episodes per evaluation (each of validation and reporting; common/rollout.py EVAL_EPISODES), "
            "the median 95% half-width of one task's evaluation (target: at most 10% of the expert-minus-random "
            "range; MetaWorld success at most 0.15), and how well selection can rank checkpoints: the median over tasks "
            "of the correlation between validation and reporting returns of all the task's checkpoints after step 0 "
            "(every algorithm's and seed's), and how often a run's selected checkpoint (per task) is the one its "
            "reporting episodes rank first.\n",
            md_table(["Env", "Episodes", "Return half-width", "Success half-width", "Validation-reporting correlation",
                      "Selected = reporting's best"], rows), *notes, ""]


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
        if which == "selected" and len(envs) > 1:
            text += ["The **Average** rows average raw returns over envs, as the paper's Table 1 does, so the env with "
                     f"the largest returns{' (MetaWorld)' if 'metaworld' in envs else ''} dominates them; no takeaway below is judged on them (see the "
                     "per-env and pooled normalised statistics).", ""]
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
    against, iqm_above = versus_zero_shot(runs, envs, means)
    text[3:3] = summary_section(runs, envs, means, iqm_above)  # after the title and the protocol note
    text += against
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
    text += ["## The paper's takeaways, checked\n",
             "Each claim is judged per env and pooled over the envs task by task (while the grid runs, over the envs with "
             "the most tunings complete), on normalised scores, in the tunings "
             "of that scope with runs of every algorithm in every env (named above each table): **held** when the 95% "
             "stratified-bootstrap interval of every probability of improvement behind it lies above 0.5, **not held** "
             "when one lies below 0.5, **inconclusive** otherwise (also with one seed, which gives no interval); the "
             "figure shown is the weakest P(X > Y) [interval]. Within-tuning claims must hold in every such tuning. "
             "The paper's column applies the same claims to its own Table 1 means for that env (no intervals).\n",
             *takeaways(runs, envs, means), ""]
    text += runtime_section(runs)
    plot_table1(runs, envs, args.out_dir)
    text += ["![Table 1](table1.png)", "", "Learning curves (step 0 is zero-shot): ![curves](table1_curves.png)", ""]
    return [write(args.out_dir, "table1.md", "\n".join(text)), os.path.join(args.out_dir, "table1.png"),
            os.path.join(args.out_dir, "table1_profiles.png"), os.path.join(args.out_dir, "table1_curves.png")]


def summary_section(runs, envs, means, iqm_above) -> list[str]:
    """The compact table the README carries: per env and tuning, each method's selected mean return, marked by
    how it stands against zero-shot (the details are in the sections below)."""
    rows = []
    for env in envs:
        for tuning in present(runs, "tuning", TUNINGS):
            cell = select(runs, tuning=tuning, env=env)
            if not cell:
                continue
            zs = means["selected", tuning, env, "zero_shot"]
            seeds = sorted({len(select(cell, algo=a)) for a in ALGOS})
            row = [ELABEL[env], TLABEL[tuning], "/".join(map(str, seeds)), num(zs)]
            for a in ALGOS:
                m = means["selected", tuning, env, a]
                row.append("-" if np.isnan(m) else f"**{num(m)}**" if iqm_above.get((env, tuning, a))
                           else f"{num(m)} ↓" if m < zs else num(m))
            rows.append(row)
    return ["## Summary (selected checkpoint)\n",
            "Mean return over seeds and the env's test tasks of the checkpoint chosen on validation episodes. "
            "**Bold**: the 95% stratified-bootstrap interval of the method's normalised IQM lies above zero-shot's "
            "IQM (needs two seeds or more); ↓: mean below zero-shot's. Seeds: seeds per method (0: not run). "
            "Intervals, final and best checkpoints, success rates and the takeaways: below.\n",
            md_table(["Env", "Tuning", "Seeds", "Zero-shot", *[LABEL[a] for a in ALGOS]], rows), ""]


def versus_zero_shot(runs, envs, means) -> tuple[list[str], dict]:
    """Does finetuning help at all? Per env and tuning, at the selected checkpoint: which methods' means are at or
    above zero-shot's, which are below (by how much: their curves are in table1_curves.png), and how many have the
    95% stratified-bootstrap interval of their normalised IQM above zero-shot's IQM. Also returns that last test
    per (env, tuning, algo): True / False, None with one seed."""
    rows, iqm_above = [], {}
    for env in envs:
        for tuning in present(runs, "tuning", TUNINGS):
            cell = select(runs, tuning=tuning, env=env)
            run = [a for a in ALGOS if select(cell, algo=a)]
            if not run:
                continue
            zs = means["selected", tuning, env, "zero_shot"]
            below = [f"{LABEL[a]} ({means['selected', tuning, env, a] - zs:+.1f})" for a in run
                     if means["selected", tuning, env, a] < zs]
            zero = task_scores({r["seed"]: r for r in cell}.values(), "zero_shot")  # one per seed: same model
            keys = sorted(zero)
            z_iqm = aggregate([np.array(zero[k]) for k in keys], iqm)[0]
            lower = {a: aggregate([np.array(task_scores(select(cell, algo=a), "selected").get(k, [])) for k in keys],
                                  iqm)[1] for a in run}
            judged = [a for a in run if not np.isnan(lower[a])]  # an interval needs two seeds
            iqm_above.update({(env, tuning, a): (bool(lower[a] > z_iqm) if a in judged else None) for a in run})
            above = f"{sum(lower[a] > z_iqm for a in judged)} of {len(judged)}" if judged else "n/a (one seed)"
            if judged and len(judged) < len(run):
                above += f" ({len(run) - len(judged)} more with one seed)"
            seeds = sorted({len(select(cell, algo=a)) for a in run})
            rows.append([ELABEL[env], TLABEL[tuning], f"{len(run)} of {len(ALGOS)}", "/".join(map(str, seeds)),
                         f"{len(run) - len(below)} of {len(run)}", ", ".join(below) or "none",
                         above])
    return ["## Against zero-shot (selected checkpoint)\n",
            "Per env and tuning: the methods run and their seeds, how many have a selected mean at or above "
            "zero-shot's, those below it (mean difference in return; their learning curves are in "
            "table1_curves.png), and how many have the 95% stratified-bootstrap interval of their normalised IQM "
            "entirely above zero-shot's IQM (an interval needs at least two seeds).\n",
            md_table(["Env", "Tuning", "Methods run", "Seeds", "At or above zero-shot", "Below zero-shot",
                      "IQM interval above zero-shot"], rows), ""], iqm_above


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
            "algorithms that ran on every task of every env. An interval needs at least two seeds (with one there is "
            "nothing to resample within a task): \"(one seed)\" marks a point estimate. "
            "Performance profiles: table1_profiles.png.\n"]
    panels = [(t, sc, w) for t in tunings for sc in scopes for w in ("selected", "final")  # a tuning not yet run in
              if {r["env"] for r in select(runs, tuning=t)} >= set(sc)]  # every env of the scope: no panel
    fig, axes = plt_subplots(len(panels), ncols=2, w=6, h=3.6)
    ci = lambda m, lo, hi: ("-" if np.isnan(m) else f"{m:.3f} (one seed)" if np.isnan(lo)  # noqa: E731
                            else f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
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
    return f"{v}: P {p:.2f} " + ("(one seed: no interval)" if np.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]")


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


def takeaways(runs, envs, means) -> list[str]:
    """The paper's takeaways judged per env and pooled over envs on normalised scores (never on raw returns
    summed across envs), each held / not held / inconclusive with the probability of improvement behind it,
    in the tunings whose every algorithm has run in every env of the scope (a partial grid still judges what
    it has). The pool leaves out the envs whose grid is behind the others'."""
    def complete(scope):  # the tunings whose every algorithm has run in every env of the scope
        return [t for t in TUNINGS if not any(np.isnan(means[w, t, e, a]) for w in ("selected", "final", "best")
                                              for e in scope for a in ALGOS)]

    # the pool: the envs furthest on (the most complete tunings), so that envs whose grid is still running do not
    # narrow the pooled tunings to theirs
    n_done = {e: len(complete([e])) for e in envs}
    pool = [e for e in envs if n_done[e] == max(n_done.values())]
    text = []
    for scope in [[e] for e in envs] + ([pool] if len(pool) > 1 else []):
        done = complete(scope)
        cols = [judge(runs, scope, done, w) for w in ("selected", "final", "best")]
        paper = paper_verdicts(scope[0], done) if len(scope) == 1 else ["-"] * len(CLAIMS)
        rows = [[claim, paper[i], *(c[i] for c in cols)] for i, (claim, _) in enumerate(CLAIMS)]
        text += [f"**{' + '.join(ELABEL[e] for e in scope)}**" + (" (pooled task by task)" if len(scope) > 1 else "")
                 + f": {', '.join(TLABEL[t] for t in done) or 'no tuning with every algorithm yet'}",
                 "", md_table(["Takeaway", "paper", "ours (selected)", "ours (final)", "ours (best)"], rows), ""]
    return text


def runtime_section(runs) -> list[str]:
    """Table 4 (lower half): wall time and train time per algorithm and tuning relative to SFT."""
    out = ["## Runtime relative to SFT (Table 4, lower half)\n",
           "Mean over the runs of each cell (envs and seeds), divided by SFT's in the same tuning; the runs shared "
           "the machine two at a time with one torch thread each. Wall time is the whole run; train time only the "
           "gradient steps (it leaves out the evaluations and the one-off reference / target tables and critic "
           "warm-ups, whose share shrinks as the number of steps grows). A task's zero-shot evaluation is made by "
           "the first run that reaches it and read from the run dir's cache by the others (common/run.py), so the "
           "wall-time ratios favour the algorithms that ran later; the train-time ratios are the fair ones.\n"]
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
