"""Bad input ends with one line that names the cause and the fix, no traceback, nothing written or
replaced; a killed run resumes by task; the runner's commands die with it; a run name is taken once."""
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import pretrain_pdt
from common.cli import run as run_cli
from common.data import dataset_path, save_trajectories
from common.files import lock_folder
from common.envs import spec
from common.flags import ALGOS, cli as finetune_cli
from conftest import make_fake_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = "halfcheetahvel"
TASK = spec(ENV).test_tasks[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Fake data, a tiny pretrained model, a finished result made with other flags, a data file of the
    wrong shape, and a file where a folder should be."""
    root = tmp_path_factory.mktemp("bad")
    sp = spec(ENV)
    make_fake_data(root / "data", ENV, list(sp.train_tasks[:2]) + list(sp.test_tasks), n_trajs=6, length=30)
    pretrain_pdt.main(pretrain_pdt.Args(env=ENV, data_dir=str(root / "data"), run_dir=str(root / "pre_runs"),
                                        out=str(root / "pre.pt"), train_tasks=2, num_trajs=6, n_layer=1, n_embd=16,
                                        K=5, batch_size=8, total_steps=4, eval_every=4, eval_episodes=1, threads=1))
    old = root / "done" / f"sft_{ENV}_full_expert_n4_s1"
    old.mkdir(parents=True)
    (old / "result.json").write_text(json.dumps({"config": {"env": ENV, "total_steps": 999}, "tasks": []}))
    rng = np.random.default_rng(0)
    wrong = [{"observations": rng.normal(size=(30, 10)), "next_observations": rng.normal(size=(30, 10)),
              "actions": rng.normal(size=(30, sp.act_dim)), "rewards": np.zeros(30), "terminals": np.zeros(30, bool),
              "timeouts": np.r_[np.zeros(29, bool), True]} for _ in range(6)]
    save_trajectories(dataset_path(str(root / "wrongdim"), ENV, "expert", TASK), wrong, env=ENV, task=TASK)
    (root / "a_file").write_text("")
    (root / "report_trunc" / "x").mkdir(parents=True)
    (root / "report_trunc" / "x" / "result.json").write_text('{"algo": "sft", "con')
    (root / "report_empty" / "x").mkdir(parents=True)
    (root / "report_empty" / "x" / "result.json").write_text("{}")
    # a saved adapter, then damaged copies of it (each with its manifest) for evaluate.py and --init-from
    import sft
    sft.main(sft.Args(env=ENV, tasks=(TASK,), num_trajs=4, total_steps=2, eval_every=2, eval_episodes=1, batch_size=4,
                      data_dir=str(root / "data"), pretrained=str(root / "pre.pt"), run_dir=str(root / "saved"),
                      threads=1, no_presets=True))
    ad = root / "saved" / f"sft_{ENV}_full_expert_n4_s1" / "adapters" / f"task_{TASK:02d}_selected"
    good, manifest = ad.with_suffix(".safetensors").read_bytes(), ad.with_suffix(".json").read_text()
    damaged = {"trunc": good[:1000], "random": np.random.default_rng(1).bytes(5000), "empty": b""}
    for name, data in damaged.items():
        (root / "adapters" / name / "adapters").mkdir(parents=True)
        base = root / "adapters" / name / "adapters" / f"task_{TASK:02d}_selected"
        base.with_suffix(".safetensors").write_bytes(data)
        base.with_suffix(".json").write_text(manifest)
    for name, text in {"nomanifest": "{}", "listmanifest": "[1, 2]", "badjson": '{"config": '}.items():
        (root / "adapters" / name).mkdir(parents=True)
        (root / "adapters" / name / "a.safetensors").write_bytes(good)
        (root / "adapters" / name / "a.json").write_text(text)
    torch_other = pretrain_pdt.Args(env=ENV, data_dir=str(root / "data"), run_dir=str(root / "pre_runs2"),
                                    out=str(root / "other.pt"), train_tasks=2, num_trajs=6, n_layer=1, n_embd=16,
                                    K=5, batch_size=8, total_steps=4, eval_every=4, eval_episodes=1, threads=1, seed=2)
    pretrain_pdt.main(torch_other)  # same shapes, other weights: another SHA-256
    return root


def tree(path) -> dict:
    """Every file under path with its size and modification time: what 'nothing written' compares."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.join(d, f)] = (st.st_size, st.st_mtime_ns)
    return out


def call(script: str, argv: list[str], monkeypatch, capsys) -> str:
    """Run a script's command line in this process; returns its error message (it must exit != 0)."""
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    mod = importlib.import_module(script if script != "report" else "benchmark.report")
    with pytest.raises(SystemExit) as e:
        if script in ALGOS or script.startswith("online_"):
            finetune_cli(mod.main, mod.Args)
        elif script == "report":
            sys.exit(mod.main())
        else:
            run_cli(mod.main, mod.Args)
    assert e.value.code not in (0, None)
    return e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err


F = "{root}"  # replaced by the fixture's folder
FT = ["--data-dir", f"{F}/data", "--pretrained", f"{F}/pre.pt", "--run-dir", f"{F}/runs", "--tasks", str(TASK),
      "--num-trajs", "4", "--total-steps", "2", "--eval-every", "2", "--eval-episodes", "1", "--threads", "1"]
PRE = ["--data-dir", f"{F}/data", "--run-dir", f"{F}/pre_bad", "--train-tasks", "2", "--num-trajs", "6",
       "--n-layer", "1", "--n-embd", "16", "--K", "5", "--batch-size", "8", "--total-steps", "4", "--threads", "1"]
COL = ["--data-dir", f"{F}/col", "--tasks", str(TASK), "--num-trajs", "2", "--threads", "1"]

# (script, flags, what the one-line message must say: the cause, and where it applies the fix)
CASES = [(algo, flags, want) for algo in ALGOS for flags, want in [
    (["--lr", "0"], "--lr must be positive"),
    (["--lr", "-0.5"], "--lr must be positive"),
    (["--total-steps", "0"], "--total-steps must be at least 1"),
    (["--tuning", "lora", "--lora-rank", "0"], "--lora-rank must be at least 1"),
    (["--tasks", str(TASK), str(TASK)], "more than once"),
    (["--pretrained", f"{F}/none.pt"], f"make it with: python pretrain_pdt.py --env {ENV} --out {F}/none.pt"),
    (["--run-dir", f"{F}/a_file/runs"], "choose a writable --run-dir"),
]] + [
    ("sft", ["--eval-every", "0"], "--eval-every must be at least 1"),
    ("sft", ["--batch-size", "0"], "--batch-size must be at least 1"),
    ("sft", ["--eval-episodes", "0"], "--eval-episodes must be at least 1"),
    ("sft", ["--num-trajs", "0"], "--num-trajs must be at least 1"),
    ("sft", ["--num-trajs", "60"], "use at most 6"),
    ("sft", ["--threads", "-2"], "--threads must be 0 or more"),
    ("sft", ["--weight-decay", "-1"], "--weight-decay must be 0 or more"),
    ("sft", ["--grad-clip", "0"], "--grad-clip must be positive"),
    ("sft", ["--tasks", "0"], "neither validation nor test tasks of halfcheetahvel"),
    ("sft", ["--data-dir", f"{F}/nodata"], f"python collect_data.py --env {ENV} --data-dir {F}/nodata"),
    ("sft", ["--data-dir", f"{F}/wrongdim"], "observations (10,) and actions (6,); halfcheetahvel has observations (17,)"),
    ("sft", ["--run-dir", f"{F}/done"], "made with other flags (--total-steps 999 vs 2); choose another --run-name"),
    ("sft", ["--tuning", "lora", "--lora-rank", "-2"], "--lora-rank must be at least 1"),
    ("sft", ["--tuning", "lora", "--lora-alpha", "0"], "--lora-alpha must be positive"),
    ("sft", ["--tuning", "decorator", "--decorator-bound", "-1"], "--decorator-bound must be positive"),
    ("dpo", ["--policy-std", "0"], "--policy-std must be positive"),
    ("dpo", ["--beta", "-1"], "--beta must be positive"),
    ("qp_dpo", ["--policy-std", "-0.1"], "--policy-std must be positive"),
    ("qp_dpo", ["--alpha", "-1"], "--alpha must be 0 or more"),
    ("qp_dpo", ["--tau", "2"], "--tau must be in [0, 1]"),
    ("grpo", ["--update-epochs", "0"], "--update-epochs must be at least 1"),
    ("grpo", ["--clip-eps", "0"], "--clip-eps must be positive"),
    ("grpo", ["--bc-weight", "-1"], "--bc-weight must be 0 or more"),
    ("grpo", ["--policy-std", "0"], "--policy-std must be positive"),
    ("ppo", ["--gae-every", "0"], "--gae-every must be at least 1"),
    ("ppo", ["--gamma", "5"], "--gamma must be in [0, 1]"),
    ("ppo", ["--gae-lambda", "2"], "--gae-lambda must be in [0, 1]"),
    ("ppo", ["--update-epochs", "0"], "--update-epochs must be at least 1"),
    ("ppo", ["--critic-lr", "0"], "--critic-lr must be positive"),
    ("cql", ["--alpha", "-5"], "--alpha must be 0 or more"),
    ("cql", ["--critic-batch", "0"], "--critic-batch must be at least 1"),
    ("cql", ["--num-random", "0"], "--num-random must be at least 1"),
    ("cql", ["--tau", "0"], "--tau must be positive"),
    ("cql", ["--critic-warmup", "-2"], "--critic-warmup must be -1"),
    ("qp_sft", ["--alpha", "-5"], "--alpha must be 0 or more"),
    ("qp_sft", ["--gamma", "5"], "--gamma must be in [0, 1]"),
    ("qp_sft", ["--critic-batch", "0"], "--critic-batch must be at least 1"),
    ("qp_sft", ["--num-target-samples", "0"], "--num-target-samples must be at least 1"),
    ("qp_sft", ["--target-sample-std", "-1"], "--target-sample-std must be 0 or more"),
    ("online_grpo", ["--minibatches", "-1"], "--minibatches must be 0 or more"),
    ("online_grpo", ["--lr-factor", "0"], "--lr-factor must be positive"),
    ("online_grpo", ["--init-from", f"{F}/runs/nothing"], f"no {F}/runs/nothing/adapters/task_{TASK:02d}_selected"
                                                          ".safetensors; finetune task"),
    ("online_ppo", ["--init-from", f"{F}/runs/nothing"], "--save-model selected (the default), e.g. python sft.py"),
    ("pretrain_pdt", ["--total-steps", "0"], "--total-steps must be at least 1"),
    ("pretrain_pdt", ["--batch-size", "0"], "--batch-size must be at least 1"),
    ("pretrain_pdt", ["--eval-every", "0"], "--eval-every must be at least 1"),
    ("pretrain_pdt", ["--warmup-steps", "0"], "--warmup-steps must be at least 1"),
    ("pretrain_pdt", ["--n-embd", "100", "--n-head", "3"], "--n-embd 100 is not a multiple of --n-head 3"),
    ("pretrain_pdt", ["--lr", "0"], "--lr and --grad-clip must be positive"),
    ("pretrain_pdt", ["--dropout", "1"], "--dropout must be in [0, 1)"),
    ("pretrain_pdt", ["--train-tasks", "0"], "--train-tasks must be -1 (all) or at least 1"),
    ("pretrain_pdt", ["--K", "0"], "--K must be at least 1"),
    ("pretrain_pdt", ["--out", f"{F}/pre.pt"], "pre.pt exists; pass --overwrite to replace it"),
    ("pretrain_pdt", ["--data-dir", f"{F}/nodata"], f"python collect_data.py --env {ENV} --data-dir {F}/nodata"),
    ("collect_data", ["--num-trajs", "0"], "--num-trajs must be at least 1"),
    ("collect_data", ["--num-trajs", "-2"], "--num-trajs must be at least 1"),
    ("collect_data", ["--tasks", "99"], "--tasks must be in 0..54"),
    ("collect_data", ["--tasks", "1", "1"], "more than once"),
    ("collect_data", ["--workers", "0"], "--workers must be at least 1"),
    ("collect_data", ["--calib-iters", "0"], "--calib-iters must be at least 1"),
    ("collect_data", ["--num-envs", "0"], "--num-envs must be -1"),
    ("collect_data", ["--threads", "-2"], "--threads must be 0"),
    ("report", ["runs", "--run-dir", f"{F}/report_trunc", "--out-dir", f"{F}/rep"], "is not a finished result"),
    # damaged or mismatched inputs, unwritable or full output locations
    *[("evaluate", [f"{F}/adapters/{d}/adapters/task_{TASK:02d}_selected.safetensors"],
       "is damaged or not a safetensors file") for d in ("trunc", "random", "empty")],
    *[("online_grpo", ["--init-from", f"{F}/adapters/{d}"], "is damaged or not a safetensors file")
      for d in ("trunc", "random", "empty")],
    ("evaluate", [f"{F}/adapters/nomanifest/a.safetensors"], "is not an adapter manifest (no algo, task, checkpoint)"),
    ("evaluate", [f"{F}/adapters/listmanifest/a.safetensors"], "is not an adapter manifest"),
    ("evaluate", [f"{F}/adapters/badjson/a.safetensors"], "a.json is not valid JSON"),
    ("evaluate", [f"{F}/saved/sft_{ENV}_full_expert_n4_s1/adapters/task_{TASK:02d}_selected.safetensors", "--pretrained", f"{F}/other.pt"], "SHA-256 differs"),
    ("evaluate", [f"{F}/saved/sft_{ENV}_full_expert_n4_s1/adapters/task_{TASK:02d}_selected.safetensors", "--out", f"{F}/a_file/x.json"], "choose a writable --out"),
    ("evaluate", [f"{F}/saved/sft_{ENV}_full_expert_n4_s1/adapters/task_{TASK:02d}_selected.safetensors", "--out", f"{F}/saved"], "--out {root}/saved is a folder"),
    ("pretrain_pdt", ["--out", f"{F}/a_file/x.pt"], "choose a writable --out"),
    ("pretrain_pdt", ["--out", f"{F}/saved", "--overwrite"], "is a folder; give the checkpoint's file path"),
    ("pretrain_pdt", ["--run-dir", f"{F}/a_file/pre"], "choose a writable --run-dir"),
    ("collect_data", ["--data-dir", f"{F}/a_file/col"], "choose a writable --data-dir"),
    ("report", ["runs", "--run-dir", f"{F}/report_empty", "--out-dir", f"{F}/rep"], "delete it and rerun"),
]


@pytest.mark.parametrize("script,flags,want", CASES, ids=[f"{s}:{' '.join(f)}" for s, f, _ in CASES])
def test_bad_input_is_one_line_naming_the_fix_and_writes_nothing(root, monkeypatch, capsys, script, flags, want):
    base = {"pretrain_pdt": PRE, "collect_data": COL, "report": [], "evaluate": []}.get(script, FT)
    argv = [a.replace(F, str(root)) for a in base + flags]
    before = tree(root)
    msg = call(script, argv, monkeypatch, capsys).strip()
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert want.replace(F, str(root)) in msg, msg
    assert tree(root) == before  # nothing written, nothing replaced
    assert not os.path.exists(root / "runs") and not os.path.exists(root / "pre_bad")


def test_a_run_name_in_use_is_refused_and_free_again_when_the_other_ends(root, monkeypatch, capsys):
    argv = [a.replace(F, str(root)) for a in FT] + ["--run-dir", str(root / "locked")]
    held = lock_folder(str(root / "locked" / f"sft_{ENV}_full_expert_n4_s1"), "test")
    msg = call("sft", argv, monkeypatch, capsys)
    assert msg.startswith("error: another process is running") and "another --run-name" in msg
    held.close()
    monkeypatch.setattr(sys, "argv", ["sft.py", *argv])
    import sft
    finetune_cli(sft.main, sft.Args)  # the name is free again: the run goes through
    run = root / "locked" / f"sft_{ENV}_full_expert_n4_s1"
    assert json.loads((run / "result.json").read_text())["threads"] == 1 and not (run / ".lock").exists()


def sft_cmd(root, run_dir: str) -> list[str]:
    return [sys.executable, "sft.py", "--env", ENV, "--tasks", "2", "13", "--num-trajs", "4", "--total-steps", "300",
            "--eval-every", "150", "--eval-episodes", "1", "--batch-size", "4", "--threads", "1", "--data-dir",
            str(root / "data"), "--pretrained", str(root / "pre.pt"), "--run-dir", str(root / run_dir)]


def test_a_killed_run_resumes_by_task_with_the_numbers_of_an_uninterrupted_one(root):
    name = f"sft_{ENV}_full_expert_n4_s1"
    proc = subprocess.Popen(sft_cmd(root, "killed"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = root / "killed" / name / "tasks" / "task_02.json"
    t0 = time.time()
    while not first.exists() and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # killed during the second task
    proc.wait()
    assert first.exists() and not (root / "killed" / name / "result.json").exists()
    out = subprocess.run(sft_cmd(root, "killed"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "task 2: finished by an earlier run" in out.stdout and "task 2: zero-shot" not in out.stdout
    resumed = json.loads((root / "killed" / name / "result.json").read_text())
    assert not (root / "killed" / name / "tasks").exists()  # result.json now holds them
    ref = subprocess.run(sft_cmd(root, "whole"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    whole = json.loads((root / "whole" / name / "result.json").read_text())
    assert ref.returncode == 0 and resumed["tasks"] == whole["tasks"]  # bit-identical: same flags and threads
    # a finished run is skipped, not redone or replaced
    again = subprocess.run(sft_cmd(root, "whole"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already finished with these flags" in again.stdout
    assert json.loads((root / "whole" / name / "result.json").read_text()) == whole


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_ends_in_one_line_saying_how_to_resume_and_releases_the_lock(root, sig):
    name = f"sft_{ENV}_full_expert_n4_s1"
    run_dir = f"interrupted_{int(sig)}"
    # a pytest-xdist worker ignores SIGINT and a child inherits that; a terminal's Ctrl-C reaches a default handler
    proc = subprocess.Popen(sft_cmd(root, run_dir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = root / run_dir / name / "tasks" / "task_02.json"
    t0 = time.time()
    while not first.exists() and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)  # during the second task
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: nothing half-written is left; run the same command")
    assert not (root / run_dir / name / ".lock").exists() and first.exists()
    out = subprocess.run(sft_cmd(root, run_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "task 2: finished by an earlier run" in out.stdout, out.stderr[-2000:]


def test_a_run_that_ends_in_an_error_leaves_no_lock_file(tmp_path):
    code = ("import sys; from common.files import lock_folder; lock_folder(sys.argv[1], 'x'); "
            "raise SystemExit('error: loss is nan')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and (tmp_path / "run").is_dir() and not (tmp_path / "run" / ".lock").exists()


def test_a_run_name_cannot_leave_the_run_dir(root, tmp_path):
    for bad in ("../../x", "a/b", "..", ".hidden"):
        out = subprocess.run([sys.executable, "sft.py", *[a.replace(F, str(root)) for a in FT], "--run-dir",
                              str(tmp_path / "runs"), "--run-name", bad], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 1 and out.stderr.strip().count("\n") == 0, out.stderr[-1000:]
        assert "must be a plain folder name inside --run-dir" in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_a_full_disk_is_refused_before_any_training(root, monkeypatch, capsys):
    """Too little free space for what a run writes: one line before the training (finetuning, pretraining)."""
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2_000_000, 2_000_000, 1_000))
    for script, base in (("sft", FT), ("pretrain_pdt", PRE)):
        argv = [a.replace(F, str(root)) for a in base] + ["--run-dir", str(root / "full" / script)]
        before = tree(root)
        msg = call(script, argv, monkeypatch, capsys).strip()
        assert "\n" not in msg and "1.00 KB free" in msg and "free space or choose another --run-dir" in msg, msg
        assert {k: v for k, v in tree(root).items() if ".lock" not in k} == before  # no result, no checkpoint


def test_track_without_a_wandb_login_is_one_line_and_leaves_no_lock(root, monkeypatch, capsys):
    import wandb

    def no_login(**kw):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", no_login)
    argv = [a.replace(F, str(root)) for a in FT] + ["--run-dir", str(root / "tracked"), "--track"]
    msg = call("sft", argv, monkeypatch, capsys).strip()
    assert "\n" not in msg and "--track: wandb did not start (UsageError" in msg and "wandb login" in msg, msg
    assert not (root / "tracked" / f"sft_{ENV}_full_expert_n4_s1" / ".lock").exists()


def test_evaluate_on_another_checkpoint_only_when_forced(root):
    ad = root / "saved" / f"sft_{ENV}_full_expert_n4_s1" / "adapters" / f"task_{TASK:02d}_selected.safetensors"
    cmd = [sys.executable, "evaluate.py", str(ad), "--pretrained", str(root / "other.pt"), "--threads", "1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "SHA-256 differs" in out.stderr and "--force" in out.stderr
    out = subprocess.run(cmd + ["--force"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "val_return" in out.stdout, out.stderr[-2000:]


def test_the_default_checkpoint_is_found_from_another_folder(tmp_path):
    """pretrained/<env>.pt is resolved from the project root when the working folder has none."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import sft; from common.run import Run; "
            "a = sft.Args(env='antdir', tasks=(50,), data_dir=sys.argv[2], lr=1e-4); "
            "Run(a, 'sft')")
    out = subprocess.run([sys.executable, "-c", code, ROOT, str(tmp_path / "nodata")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    # it gets past the checkpoint (found in the project) to the missing dataset
    assert "collect_data.py --env antdir" in out.stderr and "pretrain_pdt.py" not in out.stderr, out.stderr[-2000:]


def test_help_piped_into_head_ends_quietly():
    out = subprocess.run(f"{sys.executable} sft.py --help | head -1", shell=True, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.startswith("usage: sft.py") and "Traceback" not in out.stderr, out.stderr[-2000:]
