"""benchmark/tune.py, the validation search: its stages at smoke size write the presets the scripts then take,
the learning-rate grid's extension rule, and that every command it makes names validation tasks only."""
import itertools
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from common.envs import spec as env_spec
from conftest import ROOT, benchmark_script as script


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    """HalfCheetahVel's smoke-scale data (validation tasks included) and checkpoint, made as the benchmark scripts make them."""
    root = tmp_path_factory.mktemp("smoke")
    out = script(None, "-c", "source benchmark/scale.sh && ensure_pretrained halfcheetahvel", SCALE="smoke",
                 ROOT_DIR=str(root), WORKERS="1")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return root


def test_tune_runs_its_stages_on_validation_tasks_and_writes_presets(smoke_root, tmp_path):
    """benchmark/tune.py at smoke size: the learning-rate stage, then QP-SFT's alpha at the chosen rate, on
    validation tasks; each preset is the point with the highest validation score (recomputed here)."""
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
