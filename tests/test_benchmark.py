"""benchmark/: every experiment script at SCALE=smoke end to end, the command grids at SCALE=paper,
bad settings, and report.py's statistics and takeaway checks against hand-made results."""
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from common.envs import spec as env_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("report", os.path.join(ROOT, "benchmark", "report.py"))
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)
from benchmark import report_common  # noqa: E402

OUTPUTS = {"table1": ["table1.md", "table1.png", "table1_profiles.png", "table1_curves.png"], "table2": ["table2.md", "table2.png"],
           "fig1": ["fig1.md", "fig1.png"], "fig2": ["fig2.md", "fig2.png"],
           "fig34": ["fig34.md", "fig3.png", "fig4.png"], "fig5": ["fig5.md", "fig5.png"],
           "fig7": ["fig7.md", "fig7.png"], "table4": ["table4.md", "table4.png"],
           "table6": ["table6.md", "table6.png"], "fig8": ["fig8.md", "fig8.png"], "online": ["online.md", "online.png"]}


def script(name, **env):
    full = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", os.path.join("benchmark", f"{name}.sh")], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke")


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_smoke_scale_of_every_script_writes_its_table_and_figure(smoke_root, name):
    out = script(name, SCALE="smoke", ROOT_DIR=str(smoke_root), WORKERS="2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for f in OUTPUTS[name]:
        path = smoke_root / "results" / f
        assert path.exists(), f"{name} did not write {f}"
        if f.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (smoke_root / "results" / OUTPUTS[name][0]).read_text()
    number = r"-?\d+\.\d+"
    if name == "table1":  # the smoke grid (SFT, QP-SFT x prompt, full) is filled, the rest is "-"
        row = next(line for line in md.splitlines() if line.startswith("| Prompt | HalfCheetahVel |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.fullmatch(number, cells[3]) and re.fullmatch(number, cells[9]) and cells[4] == "-"
        assert "The paper's takeaways" in md and "Runtime" in md
    elif name == "table2":
        assert re.search(rf"\| HalfCheetahVel \| Expert \| {number} \| {number} \| 0\.99 \| 0\.50 \|", md)
    elif name == "fig5":
        assert "l1 e32 h1" in md and "l3 e128 h1" in md
    elif name == "online":  # zero-shot, the best offline method, and the three online methods with their env steps
        assert "(best offline)" in md and all(m in md for m in ("| online GRPO |", "| mixed GRPO (LUFFY) |", "| online PPO |",
                                                                "| SFT, then mixed GRPO |"))
        assert "| 800 |" in md  # 2 iterations x 2 rollouts x 200 steps on the one smoke task
    elif name == "table6":
        assert re.search(rf"\| HalfCheetahVel \| {number} \| {number} \|", md)
    else:
        assert re.search(number, md)


def commands(name, **env):
    out = script(name, DRY_RUN="1", **env)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.startswith("python ")]


def test_paper_scale_grids_have_every_cell_once(tmp_path):
    cmds = commands("table1", SCALE="paper")
    assert len(cmds) == len(set(cmds)) == 7 * 4 * 4 * 3
    cells = {tuple(re.search(rf"--{k} (\S+)", c).group(1) for k in ("env", "tuning", "seed")) + (c.split()[1],)
             for c in cmds}
    # each env's own episodes per evaluation (common/rollout.py EVAL_EPISODES): no --eval-episodes flag
    assert len(cells) == 336 and all("--total-steps 1000" in c and "--eval-episodes" not in c for c in cmds)
    fig7 = commands("fig7", SCALE="paper")
    assert len(fig7) == 2 * 5 * 2 * 4 * 4 * 3  # algos x alphas x qualities x tunings x envs x seeds
    assert {re.search(r"--alpha (\S+)", c).group(1) for c in fig7} == {"0.001", "0.01", "0.1", "1", "2"}
    fig5 = commands("fig5", SCALE="paper")
    assert len(fig5) == 5 * 2 * 4 * 3 and all("--env metaworld" in c and "qp_dpo.py" in c for c in fig5)
    assert len(commands("table6", SCALE="paper")) == 4 * 2 * 3
    online = commands("online", SCALE="paper")  # SFT runs to start from, Table 1's full tuning, 4 online methods
    init = [c for c in online if "--save-model selected" in c]
    assert len(online) == len(set(online)) == 4 * 3 * (1 + 7 + 4) and len(init) == 4 * 3
    names = [re.search(r"--run-name (\S+)", c).group(1) for c in init]
    assert all(f"--init-from runs/o2o_init/paper/{n}" in " ".join(online) for n in names)
    # overrides narrow the grid (an empty run folder: the committed cpu runs would be skipped as done)
    assert len(commands("table1", SCALE="cpu", ALGOS="sft qp_sft", TUNINGS="full", SEEDS="3",
                        RUN_DIR=str(tmp_path / "runs"))) == 2


@pytest.mark.parametrize("env,msg", [({"SCALE": "huge"}, "SCALE must be smoke, cpu or paper"),
                                     ({"ALGOS": "sft trpo"}, "unknown algorithm 'trpo'"),
                                     ({"TUNINGS": "adapter"}, "unknown tuning 'adapter'"),
                                     ({"WORKERS": "0"}, "WORKERS must be a positive integer")])
def test_bad_settings_give_one_line_errors(env, msg):
    out = script("table1", DRY_RUN="1", **env)
    assert out.returncode == 2 and msg in out.stderr and len(out.stderr.strip().splitlines()) == 1


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


def test_tune_runs_its_stages_on_validation_tasks_and_writes_presets(smoke_root, tmp_path):
    """benchmark/tune.py at smoke size: the learning-rate stage, then QP-SFT's alpha at the chosen rate, on
    validation tasks; each preset is the point with the highest validation score (recomputed here)."""
    assert script("table1", SCALE="smoke", ROOT_DIR=str(smoke_root), WORKERS="2").returncode == 0  # data, checkpoint
    presets = tmp_path / "presets.json"
    cmd = [sys.executable, "benchmark/tune.py", "--envs", "halfcheetahvel", "--tunings", "full", "--algos", "qp_sft",
           "--steps", "2", "--eval-every", "1", "--episodes", "1", "--num-trajs", "3", "--data-dir",
           str(smoke_root / "data"), "--pretrained", str(smoke_root / "pretrained" / "halfcheetahvel.pt"),
           "--run-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path), "--log-dir", str(tmp_path / "logs")]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "RFT_PRESETS": str(presets)}, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    runs = sorted(r for r in (tmp_path / "runs").iterdir() if not r.name.startswith("."))  # not the zero-shot cache
    assert len(runs) == 6  # 3 learning rates (SFT), then qp_sft's 3 alphas
    val, lrs = {}, {}
    for r in runs:
        res = json.loads((r / "result.json").read_text())
        assert {t["task"] for t in res["tasks"]} <= set(env_spec("halfcheetahvel").val_tasks)
        score = np.mean([max(c["val_return"] for c in t["curve"][1:]) for t in res["tasks"]])
        (val if res["algo"] == "qp_sft" else lrs)[res["config"]["alpha"] if res["algo"] == "qp_sft" else res["config"]["lr"]] = score
    chosen = json.loads(presets.read_text())["halfcheetahvel"]["full"]
    assert lrs[chosen["sft"]["lr"]] == max(lrs.values())
    assert val[chosen["qp_sft"]["alpha"]] == max(val.values()) and chosen["qp_sft"]["lr"] == chosen["sft"]["lr"]
    md = (tmp_path / "halfcheetahvel.md").read_text()
    assert md.count("| qp_sft |") == 3 and md.count("| sft |") == 3 and md.count("**chosen**") == 2
    # --weights-from full: lora searches only its learning rate; qp_sft takes full tuning's alpha at that rate
    lora = [*cmd, "--weights-from", "full"]
    lora[lora.index("--tunings") + 1] = "lora"
    out = subprocess.run(lora, cwd=ROOT, env={**os.environ, "RFT_PRESETS": str(presets)}, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    new = [r for r in (tmp_path / "runs").iterdir() if r not in runs and not r.name.startswith(".")]
    assert len(new) == 3 and all("_sft_" in r.name and "_lora_" in r.name for r in new)
    both = json.loads(presets.read_text())["halfcheetahvel"]
    assert both["lora"]["qp_sft"] == {"lr": both["lora"]["sft"]["lr"], "alpha": chosen["qp_sft"]["alpha"]}
    assert both["full"] == chosen and "weights from full tuning" in (tmp_path / "halfcheetahvel.md").read_text()
    # the table of the full-tuning search stays, with the command that made it, beside the new LoRA one
    md = (tmp_path / "halfcheetahvel.md").read_text()
    section = lambda t: md.split(f"## halfcheetahvel, {t} tuning")[1].split("## ")[0]  # noqa: E731
    full_md, lora_md = section("full"), section("lora")
    assert full_md.count("| qp_sft |") == 3 and "--tunings full --steps 2" in full_md
    assert lora_md.count("| qp_sft |") == 1 and "--tunings lora --steps 2 --weights-from full" in lora_md
    # --pick-only --dry-run prints the table and writes nothing
    (tmp_path / "halfcheetahvel.md").unlink()
    presets.unlink()
    out = subprocess.run(cmd + ["--pick-only", "--dry-run"], cwd=ROOT, env={**os.environ, "RFT_PRESETS": str(presets)},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (tmp_path / "halfcheetahvel.md").exists() and not presets.exists()


def test_tune_extends_the_learning_rate_grid_only_past_an_edge_winner_beyond_noise():
    """Stage 1 adds a point a factor of 3 beyond the grid's edge when the edge's rate beats its neighbour by
    more than two standard errors of the difference; not for a middle winner, a win within noise, or a
    third time."""
    sys.path.insert(0, os.path.join(ROOT, "benchmark"))
    import tune

    def point(lr, val, sd=10.0, n=50):  # a result.json with one task whose selected checkpoint scores val
        curve = [{"step": 0, "val_return": 0.0}, {"step": 1, "val_return": val, "val_return_sd": sd}]
        return ("sft", {"lr": lr}, {"config": {"eval_episodes": n}, "tasks": [{"curve": curve}]})

    # SE per point 10/sqrt(50) = 1.41, of the difference 2.0: a gap of 5 is 2.5 SE, of 3 is 1.5 SE
    assert tune.lr_extension([point(1e-3, 100), point(3e-4, 90), point(3e-3, 105)]) == 9e-3
    assert tune.lr_extension([point(1e-3, 100), point(3e-4, 103), point(3e-3, 90)]) is None  # within noise
    assert tune.lr_extension([point(1e-3, 100), point(3e-4, 105), point(3e-3, 90)]) == 1e-4  # the low edge
    assert tune.lr_extension([point(1e-3, 110), point(3e-4, 90), point(3e-3, 90)]) is None  # a middle winner
    assert tune.lr_extension([point(1e-3, 100), point(3e-4, 90), point(3e-3, 105, n=1)]) is None  # no spread
    grid = [point(1e-3, 100), point(3e-4, 90), point(3e-3, 105), point(9e-3, 110)]
    assert tune.lr_extension(grid) == 0.027
    assert tune.lr_extension(grid + [point(0.027, 120)]) is None  # at most MAX_EXTEND = 2 extensions
    # MetaWorld: the score is validation success, its standard error binomial
    mw = lambda lr, p: ("sft", {"lr": lr}, {"config": {"eval_episodes": 46}, "tasks": [{"curve": [
        {"step": 0, "val_return": 0.0, "val_success": 0.0}, {"step": 1, "val_return": 1.0, "val_success": p}]}]})
    assert tune.lr_extension([mw(3e-4, 0.05), mw(9e-5, 0.02), mw(9e-4, 0.4)]) == 0.0027
    assert tune.lr_extension([mw(3e-4, 0.30), mw(9e-5, 0.02), mw(9e-4, 0.35)]) is None


@pytest.mark.parametrize("env", ["halfcheetahvel", "antdir", "metaworld"])
def test_tune_finetunes_only_validation_tasks(env):
    """Every command of every stage of the search, for every tuning, names only validation tasks."""
    import argparse

    sys.path.insert(0, os.path.join(ROOT, "benchmark"))
    import tune

    args = argparse.Namespace(steps=200, eval_every=100, episodes=5, num_trajs=50, data_dir="data", run_dir="r",
                              online_iters=10, online_eval=5, group_size=8,
                              pretrained="")
    chosen = {a: {"lr": 1e-4, "beta": 1.0, "alpha": 0.1} for a in tune.ALGOS}
    for tuning in ("prompt", "lora", "decorator", "full"):
        for stage in (1, 2, 3):
            for algo, pt in tune.stage_points(stage, env, tuning, chosen):
                cmd = shlex.split(tune.command(algo, env, tuning, pt, args))
                i = cmd.index("--tasks")
                tasks = [int(t) for t in itertools.takewhile(lambda x: not x.startswith("--"), cmd[i + 1:])]
                assert tasks and set(tasks) <= set(env_spec(env).val_tasks), cmd
                assert not set(tasks) & set(env_spec(env).test_tasks + env_spec(env).train_tasks)
    for stage in (1, 2):  # --online: the online comparison's settings
        for algo, pt in tune.online_points(stage, env, "full", {"online_grpo": {"lr_factor": 0.1}}):
            cmd = shlex.split(tune.command(algo, env, "full", pt, args))
            i = cmd.index("--tasks")
            tasks = [int(t) for t in itertools.takewhile(lambda x: not x.startswith("--"), cmd[i + 1:])]
            assert tasks and set(tasks) <= set(env_spec(env).val_tasks), cmd
    assert "halfcheetahdir" not in tune.ENVS  # no validation task: it takes halfcheetahvel's presets


def test_tune_online_searches_the_online_settings_and_online_sh_takes_them(smoke_root, tmp_path):
    """--online at smoke size: both online scripts' learning-rate factors, then mixed GRPO's offline members
    at GRPO's factor, on validation tasks; presets merge into the env's full tuning and online.sh reads them."""
    assert script("table1", SCALE="smoke", ROOT_DIR=str(smoke_root), WORKERS="2").returncode == 0  # data, checkpoint
    presets = tmp_path / "presets.json"
    presets.write_text(json.dumps({"halfcheetahvel": {"full": {"sft": {"lr": 1e-4}}}}))
    env = {**os.environ, "RFT_PRESETS": str(presets)}
    cmd = [sys.executable, "benchmark/tune.py", "--envs", "halfcheetahvel", "--online", "--online-iters", "1",
           "--online-eval", "1", "--group-size", "2", "--members", "1", "2", "--episodes", "1", "--num-trajs", "3", "--data-dir",
           str(smoke_root / "data"), "--pretrained", str(smoke_root / "pretrained" / "halfcheetahvel.pt"),
           "--run-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path), "--log-dir", str(tmp_path / "logs")]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    runs = sorted(r.name for r in (tmp_path / "runs").iterdir() if not r.name.startswith("."))
    assert len(runs) == 6 and sum("online_grpo_mixed" in r for r in runs) == 2
    score = {}
    for r in runs:
        res = json.loads((tmp_path / "runs" / r / "result.json").read_text())
        assert {t["task"] for t in res["tasks"]} <= set(env_spec("halfcheetahvel").val_tasks)
        score[r] = np.mean([max(c["val_return"] for c in t["curve"][1:]) for t in res["tasks"]])
    full = json.loads(presets.read_text())["halfcheetahvel"]["full"]
    assert full["sft"] == {"lr": 1e-4}  # the offline presets are kept
    for algo in ("online_grpo", "online_ppo"):
        mine = {r: v for r, v in score.items() if r.startswith(f"tune_{algo}_halfcheetahvel")}
        assert mine[f"tune_{algo}_halfcheetahvel_full_lr_factor{full[algo]['lr_factor']:g}"] == max(mine.values())
    mixed = full["online_grpo_mixed"]
    assert mixed["lr_factor"] == full["online_grpo"]["lr_factor"] and mixed["group_size"] == 2
    assert (tmp_path / "halfcheetahvel_online.md").exists() and not (tmp_path / "halfcheetahvel.md").exists()
    # online.sh scales the chosen members to its group (GROUP=4: twice the searched group of 2)
    dry = script("online", SCALE="smoke", ROOT_DIR=str(smoke_root), DRY_RUN="1", GROUP="4", RFT_PRESETS=str(presets),
                 RUN_DIR=str(tmp_path / "o_runs"), INIT_DIR=str(tmp_path / "o_init"))  # none made: all printed
    assert f"--offline-members {2 * mixed['offline_members']}" in dry.stdout


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
    # a second env (HalfCheetahDir) with prompt tuning only gets its own panel but no pooled one
    full_only = tmp_path / "full_only"
    for algo, b in base.items():
        for seed in (1, 2):
            fake_result(full_only / "runs", algo, "full", seed, best=b + 0.01 * seed, final=b, zero_shot=-6.5)
        fake_result(full_only / "runs", algo, "prompt", 1, best=b, final=b, zero_shot=-6.5, tasks=(0, 1),
                    env="halfcheetahdir")

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
    assert "(pooled task by task): no tuning with every algorithm yet" in md
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


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")), reason="needs the git checkout")
@pytest.mark.parametrize("path", ["benchmark/results/cpu/runs/sft_antdir_full_expert_n50_s1/adapters/task_06_selected.safetensors",
                                  "benchmark/results/paper/runs/sft_antdir_full_expert_n50_s1/videos/task_06_step_0.gif"])
def test_saved_adapters_and_videos_of_benchmark_runs_stay_out_of_git(path):
    # a submission that committed the runs' adapters was too big to land: result.json is what the tables need
    assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0
    assert subprocess.run(["git", "check-ignore", "-q", "benchmark/results/cpu/runs/x/result.json"], cwd=ROOT).returncode == 1
