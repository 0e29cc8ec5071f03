"""benchmark/report.py: its statistics by hand, its evaluation section, and Table 1's takeaways, runtime and
summary on hand-made results."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT

spec = importlib.util.spec_from_file_location("report", os.path.join(ROOT, "benchmark", "report.py"))
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)
from benchmark import report_common  # noqa: E402


def test_report_rejects_unknown_experiment_and_missing_run_dir(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "benchmark/report.py", *a], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
    out = run("table9", "--run-dir", str(tmp_path))
    assert out.returncode == 2 and "unknown experiment 'table9'" in out.stderr
    out = run("table1", "--run-dir", str(tmp_path / "nope"))
    assert out.returncode == 2 and "bash benchmark/table1.sh" in out.stderr


def test_statistics_by_hand():
    from benchmark import stats

    m, lo, hi = stats.t_interval([1.0, 2.0, 3.0, 6.0])  # sd sqrt(14/3), t(0.975, 3) = 3.1824
    assert m == 3.0 and np.isclose(hi - m, 3.18245 * np.sqrt(14 / 3) / 2, rtol=1e-4) and np.isclose(m - lo, hi - m)
    assert stats.t_interval([5.0, 5.0]) == (5.0, 5.0, 5.0)
    m, lo, hi = stats.t_interval([4.0])
    assert m == 4.0 and np.isnan(lo) and np.isnan(hi)
    assert report_common.fmt([4.0]) == "4.00" and report_common.fmt([]) == "-" and report_common.fmt([5.0, 5.0]) == "5.00 ± 0.00"
    assert stats.iqm([1, 2, 3, 4]) == 2.5  # middle two
    assert stats.iqm([100, 1, 2, 3, 4, 5, 6, -100]) == 3.5  # outliers trimmed: mean of 2..5
    # P(X > Y), ties one half: task 1 beats 2 of 3 pairs, task 2 a tie
    assert np.isclose(stats.probability_of_improvement([[3.0], [0.0]], [[1.0, 2.0, 4.0], [0.0]])[0], (2 / 3 + 0.5) / 2)
    p, lo, hi = stats.probability_of_improvement([[1.0, 3.0]], [[2.0, 2.0]])
    assert p == 0.5 and 0 <= lo <= p <= hi <= 1
    # stratified: each task keeps its runs' share, so two constant tasks give a zero-width interval
    assert stats.aggregate([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]], stats.mean) == (5.0, 5.0, 5.0)
    m, lo, hi = stats.aggregate([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], stats.iqm)
    assert m == 2.5 and lo < m < hi
    assert stats.aggregate([[0.0, 1.0, 2.0]], stats.iqm, seed=3) == stats.aggregate([[0.0, 1.0, 2.0]], stats.iqm, seed=3)
    p, lo, hi = stats.performance_profile([[0.1, 0.5], [0.9]], [0.0, 0.3, 1.0])
    assert np.allclose(p, [1.0, 0.75, 0.0]) and np.all(lo <= p) and np.all(p <= hi)


def fake_result(run_dir, algo, tuning, seed, best, final, zero_shot=0.0, wall=60.0, tasks=(2, 13), env="halfcheetahvel"):
    name = f"{algo}_{env}_{tuning}_expert_n50_s{seed}"
    cfg = {"env": env, "tuning": tuning, "quality": "expert", "num_trajs": 50, "sparse_reward": False,
           "seed": seed, "total_steps": 10, "eval_every": 5, "eval_episodes": 1, "pretrained": ""}
    if algo.startswith("qp"):
        cfg["alpha"] = 0.1
    if algo == "cql":
        cfg["alpha"] = 5.0  # CQL's own alpha must not make report.py take it for a Figure 7 run
    ts = [{"task": t, "zero_shot": zero_shot, "selected": best, "best": best, "final": final,
           "curve": [{"step": 0, "return": zero_shot}, {"step": 10, "return": final}]} for t in tasks]
    res = {"algo": algo, "config": cfg, "zero_shot": zero_shot, "selected": best, "best": best, "final": final, "tasks": ts,
           "wall_time_s": wall, "train_time_s": wall, "trainable_params": 1, "trainable_bytes": 4,
           "model": {"n_layer": 3, "n_embd": 128, "n_head": 1, "params": 654214}}
    os.makedirs(run_dir / name)
    (run_dir / name / "result.json").write_text(json.dumps(res))


def test_evaluation_precision_section_by_hand():
    """The report's evaluation section: the 95% half-width of one evaluation from its logged spread, the
    within-task correlation of validation and reporting scores over every run's checkpoints, and how often
    selection picks the checkpoint the reporting episodes rank first."""
    sys.path.insert(0, ROOT)
    from benchmark.report_table1 import evaluation_section

    def run(pairs):  # one AntDir task-run: (validation, reporting) return at each checkpoint after step 0
        curve = [{"step": 0, "return": 0.0, "val_return": 0.0}] + [
            {"step": 100 * (i + 1), "val_return": v, "return": r, "return_sd": 10.0} for i, (v, r) in enumerate(pairs)]
        return {"env": "antdir", "result": {"config": {"eval_episodes": 50}, "tasks": [{"task": 6, "curve": curve}]}}

    agree = [run([(1.0, 2.0), (3.0, 4.0)]), run([(5.0, 7.0), (2.0, 1.0)])]  # selection picks reporting's best twice
    row = next(line for line in "\n".join(evaluation_section(agree, ["antdir"])).splitlines() if "| AntDir |" in line)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    hw = 2.0096 * 10.0 / np.sqrt(50)  # t(0.975, 49) * sd / sqrt(n)
    assert cells[1] == "50" and cells[2].startswith(f"{hw:.1f} (")
    r = np.corrcoef([1, 3, 5, 2], [2, 4, 7, 1])[0, 1]
    assert cells[4] == f"{r:.2f} (1 tasks)" and cells[5] == "100% of 2 (chance 50%)"
    row = next(line for line in "\n".join(evaluation_section([run([(1.0, 4.0), (3.0, 2.0)])] * 2, ["antdir"])).splitlines()
               if "| AntDir |" in line)
    assert row.split("|")[5].strip() == "-1.00 (1 tasks)" and row.split("|")[6].strip() == "0% of 2 (chance 50%)"
    assert "AntDir: validation cannot rank the checkpoints" in "\n".join(evaluation_section([run([(1.0, 4.0), (3.0, 2.0)])] * 2, ["antdir"]))
    assert "cannot rank" not in "\n".join(evaluation_section(agree, ["antdir"]))


def test_table1_report_takeaways_and_runtime_on_hand_made_results(tmp_path):
    # best = algo base + 2 with full tuning; QP-SFT the highest everywhere; final below zero-shot
    base = {"sft": -5, "dpo": -6, "grpo": -7, "ppo": -8, "cql": -9, "qp_dpo": -4, "qp_sft": -3}
    run_dir = tmp_path / "runs"
    for algo, b in base.items():
        for tuning in report.TUNINGS:
            for seed in (1, 2):
                fake_result(run_dir, algo, tuning, seed, best=b + (2 if tuning == "full" else 0) + 0.1 * seed,
                            final=-20.0, zero_shot=-10.0, wall=60.0 * (1.5 if algo == "cql" else 1.0))
    # the QP runs (alpha 0.1, the scripts' default) are the main setting under no presets, whatever the shipped ones say
    no_presets = {**os.environ, "RFT_PRESETS": str(tmp_path / "no_presets.json")}
    out = subprocess.run([sys.executable, "benchmark/report.py", "table1", "--run-dir", str(run_dir), "--out-dir",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, env=no_presets)
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "table1.md").read_text()
    verdict = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:6]]
               for line in md.splitlines() if line.startswith("| ") and line.count("|") == 6}
    # columns: paper, ours (selected), ours (final), ours (best); a verdict, then the weakest P(X > Y) [interval]
    v = lambda claim, i: verdict[claim][i].split(":")[0]  # noqa: E731
    assert [v("every algorithm beats zero-shot", i) for i in (1, 2, 3)] == ["held", "not held", "held"]
    assert verdict["every algorithm beats zero-shot"][1] == "held: P 1.00 [1.00, 1.00]"
    assert v("QP-SFT beats SFT", 1) == "held" and v("QP-SFT or QP-DPO scores highest", 1) == "held"
    assert v("full-model tuning is best for QP-SFT and QP-DPO", 1) == "held"
    assert v("GRPO and CQL do best with a parameter-efficient tuning (LoRA or decorator)", 1) == "not held"
    # the paper's own numbers for HalfCheetahVel: QP-SFT beats SFT in every tuning
    assert verdict["QP-SFT beats SFT"][0] == "held"
    # cells: mean +- 95% t interval over the 2 seeds (-0.9, -0.8): 12.706 * 0.05; QP-SFT full = -3 + 2 + 0.15
    row = next(line for line in md.splitlines() if line.startswith("| Full model | HalfCheetahVel |"))
    assert "-0.85 ± 0.64" in row and "-10.00" in row
    # aggregates: QP-SFT beats SFT and zero-shot in every run; every final is below zero-shot
    agg = md.split("## Aggregates over seeds x tasks")[1]
    sel = agg.split("**Full model, HalfCheetahVel, selected checkpoint**")[1]
    fin = agg.split("**Full model, HalfCheetahVel, final checkpoint**")[1]
    qp = next(line for line in sel.splitlines() if line.startswith("| QP-SFT | 4 |")).split("|")
    assert qp[5].strip() == qp[6].strip() == "1.000 [1.000, 1.000]"
    assert next(line for line in fin.splitlines() if line.startswith("| QP-SFT |")).split("|")[6].strip() == "0.000 [0.000, 0.000]"
    assert (tmp_path / "table1_profiles.png").stat().st_size > 0
    runtime = [line for line in md.splitlines() if line.startswith("| Prompt | 1.0 min |")]
    assert len(runtime) == 2 and all("| 1.50 |" in line for line in runtime)  # wall and train time
    assert "| HalfCheetahVel | Full model | 7 of 7 | 2 | 7 of 7 | none | 7 of 7 |" in md
    # with only full-model tuning run, the within-tuning claims are checked there, the across-tuning ones are not;
    # a second env (HalfCheetahDir) with prompt tuning only gets its own panel but no pooled one; a third (AntDir)
    # whose grid is behind theirs (SFT alone) gets its panel and stays out of the pool
    full_only = tmp_path / "full_only"
    for algo, b in base.items():
        for seed in (1, 2):
            fake_result(full_only / "runs", algo, "full", seed, best=b + 0.01 * seed, final=b, zero_shot=-6.5)
        fake_result(full_only / "runs", algo, "prompt", 1, best=b, final=b, zero_shot=-6.5, tasks=(0, 1),
                    env="halfcheetahdir")
    fake_result(full_only / "runs", "sft", "full", 1, best=5.0, final=5.0, zero_shot=4.0, tasks=(6, 14), env="antdir")

    def report_md(name):
        out = subprocess.run([sys.executable, "benchmark/report.py", "table1", "--run-dir", str(tmp_path / name / "runs"),
                              "--out-dir", str(tmp_path / name)], cwd=ROOT, capture_output=True, text=True,
                             env=no_presets)
        assert out.returncode == 0, out.stderr
        md = (tmp_path / name / "table1.md").read_text()
        return md, {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:6]]
                    for line in md.splitlines() if line.startswith("| ") and line.count("|") == 6}

    md, verdict = report_md("full_only")
    # takeaways per scope in the tunings complete there: HalfCheetahVel full, HalfCheetahDir prompt, pooled none
    hcv = md.split("**HalfCheetahVel**: Full model")[1].split("**")[0]
    assert "| QP-SFT beats SFT | held | held: P 1.00 [1.00, 1.00] |" in hcv
    hcd = md.split("**HalfCheetahDir**: Prompt")[1].split("**")[0]
    assert "| QP-SFT beats SFT | held | inconclusive: P 1.00 (one seed: no interval) |" in hcd
    assert "**HalfCheetahDir + HalfCheetahVel** (pooled task by task): no tuning with every algorithm yet" in md
    assert "**AntDir**: no tuning with every algorithm yet" in md and "AntDir + " not in md
    assert "| full-model tuning is best for SFT and DPO |" + " n/a (tunings not run) |" * 4 in hcv
    assert "**Full model, HalfCheetahVel, selected checkpoint**" in md
    assert "**Prompt, HalfCheetahDir, selected checkpoint**" in md
    assert "HalfCheetahVel + HalfCheetahDir, selected checkpoint**" not in md  # no tuning ran in both envs
    assert "**Full model, HalfCheetahDir" not in md and "**Prompt, HalfCheetahVel" not in md
    # against zero-shot (-6.5): GRPO (-7), PPO (-8) and CQL (-9) below, and their IQM intervals too
    assert ("| HalfCheetahVel | Full model | 7 of 7 | 2 | 4 of 7 | GRPO (-0.5), PPO (-1.5), CQL (-2.5) | 4 of 7 |"
            in md)
    # one seed gives no interval: no claim held or not held, no IQM interval counted above zero-shot
    assert ("| HalfCheetahDir | Prompt | 7 of 7 | 1 | 4 of 7 | GRPO (-0.5), PPO (-1.5), CQL (-2.5) | n/a (one seed) |"
            in md)
    # the README's summary: bold where the IQM interval is above zero-shot's (two seeds needed), a down arrow below it
    summary = md.split("## Summary (selected checkpoint)")[1].split("\n## ")[0].splitlines()
    for prefix, bold in (("| HalfCheetahVel | Full model | 2 | -6.5 |", [1, 1, 0, 0, 0, 1, 1]),
                         ("| HalfCheetahDir | Prompt | 1 | -6.5 |", [0] * 7)):
        cells = [c.strip() for c in next(line for line in summary if line.startswith(prefix)).split("|")[5:12]]
        assert [int(c.startswith("**")) for c in cells] == bold
        assert [int(c.endswith("↓")) for c in cells] == [0, 0, 1, 1, 1, 0, 0]
    one = tmp_path / "one_seed"
    for algo, b in base.items():
        fake_result(one / "runs", algo, "full", 1, best=b, final=b, zero_shot=-6.5)
    md, verdict = report_md("one_seed")
    assert verdict["QP-SFT beats SFT"][1:] == ["inconclusive: P 1.00 (one seed: no interval)"] * 3
    assert "| 1.000 (one seed) | 1.000 (one seed) |" in next(
        line for line in md.splitlines() if line.startswith("| QP-SFT | 2 |"))  # P(X > SFT), P(X > zero-shot)
