"""The other experiments: Table 2 (data quality), Figures 1-5 and 7 (ablations), Tables 4 and 6, the online
comparison, and `runs` (one row per setting found)."""
from __future__ import annotations

import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmark.stats import t_interval  # noqa: E402
from common.flags import ALGOS  # noqa: E402  (the paper's column order)
from common.files import format_bytes  # noqa: E402
from common.tuning import TUNINGS  # noqa: E402

from benchmark.report_common import (DEFAULT_SIZE, ELABEL, ENVS, LABEL, ONLINE, PAPER_TABLE2, PAPER_TABLE6,  # noqa: E402
                                     SETTING, TLABEL, at_main_alpha, fmt, groups, main_setting, md_table, normalised,
                                     normaliser, plt_subplots, present, protocol_note, savefig, select, values, write)
from benchmark.report_table1 import runtime_section  # noqa: E402


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
