"""pretrain_pdt.py at a seconds-long scale, and the batched evaluation of common/rollout.py."""
import numpy as np
import pytest
import torch

import pretrain_pdt
from common.envs import make_env, spec
from common.model import load_pretrained
from common.rollout import eval_seeds, evaluate, random_rollout_time, task_prompt_and_target
from conftest import make_fake_data

ENV = "halfcheetahvel"


def tiny_args(tmp_path, **kw):
    sp = spec(ENV)
    make_fake_data(tmp_path / "data", ENV, list(sp.train_tasks[:2]) + list(sp.test_tasks), n_trajs=4)
    base = dict(env=ENV, data_dir=str(tmp_path / "data"), run_dir=str(tmp_path / "runs"),
                out=str(tmp_path / "pre.pt"), train_tasks=2, num_trajs=4, n_layer=1, n_embd=32, K=8,
                batch_size=16, lr=3e-3, warmup_steps=5, total_steps=60, eval_every=30, eval_episodes=1, threads=1)
    base.update(kw)
    return pretrain_pdt.Args(**base)


def test_tiny_pretrain_lowers_the_loss_and_saves_a_loadable_checkpoint(tmp_path):
    args = tiny_args(tmp_path)
    ck = pretrain_pdt.main(args)
    losses = [e["loss"] for e in ck["log"]]
    assert len(losses) == 2 and losses[1] < 0.5 * losses[0], losses
    m = load_pretrained(args.out, ENV, spec(ENV).obs_dim, spec(ENV).act_dim, n_layer=1)
    assert m.cfg.n_embd == 32 and float(m.rtg_scale) > 0
    assert set(ck["zero_shot"]["per_task"]) == set(spec(ENV).test_tasks)


def test_pretrain_resumes_after_a_kill_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    ref = pretrain_pdt.main(tiny_args(tmp_path / "a"))
    calls = {"n": 0}
    real = pretrain_pdt.evaluate

    def dies_at_second_eval(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed after the step-30 state was saved
        return real(*a, **kw)

    monkeypatch.setattr(pretrain_pdt, "evaluate", dies_at_second_eval)
    args = tiny_args(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        pretrain_pdt.main(args)
    monkeypatch.setattr(pretrain_pdt, "evaluate", real)
    import os
    assert not os.path.exists(args.out)  # no checkpoint from a killed run
    out = pretrain_pdt.main(args)
    assert [e["step"] for e in out["log"]] == [30, 60]
    for k, v in ref["state_dict"].items():
        torch.testing.assert_close(out["state_dict"][k], v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pre.pt exists; pass --overwrite"):  # a finished checkpoint is kept
        pretrain_pdt.main(args)
    with pytest.raises(ValueError, match="made with other flags"):
        pretrain_pdt.main(tiny_args(tmp_path / "b", lr=1e-3, out=str(tmp_path / "other.pt")))


def test_missing_data_names_the_collect_command(tmp_path):
    args = pretrain_pdt.Args(env="antdir", data_dir=str(tmp_path / "nodata"), run_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python collect_data.py --env antdir --data-dir"):
        pretrain_pdt.main(args)


def test_evaluate_matches_a_plain_env_loop_and_feeds_the_right_returns_to_go():
    tasks, episodes, K = [spec(ENV).test_tasks[0], spec(ENV).test_tasks[3]], 2, 4
    rng = np.random.default_rng(0)
    w = torch.as_tensor(rng.normal(size=(spec(ENV).obs_dim, spec(ENV).act_dim)) * 0.3, dtype=torch.float32)
    seen = []

    def act(s, a, r, t, m):
        out = torch.tanh(s[:, -1] @ w)
        seen.append({"s": s.clone(), "a": a.clone(), "r": r.clone(), "t": t.clone(), "m": m.clone(), "out": out})
        return out

    out = evaluate(act, ENV, tasks, episodes, targets=[-10.0, -20.0], K=K)
    assert out["returns"].shape == (2, 2)
    for j, task in enumerate(tasks):
        for i, seed in enumerate(eval_seeds(task, episodes)):
            row = j * episodes + i
            env = make_env(ENV, task)
            obs, _ = env.reset(seed=int(seed))
            ret, rtg, hist = 0.0, [-10.0, -20.0][j], []
            for t in range(spec(ENV).horizon):
                x = seen[t]
                n = min(t + 1, K)
                assert int(x["t"][row, -1]) == t and x["m"][row].sum() == n and (x["m"][row, :K - n] == 0).all()
                np.testing.assert_allclose(x["s"][row, -1].numpy(), obs, rtol=1e-5, atol=1e-5)
                assert x["r"][row, -1].item() == pytest.approx(rtg, abs=1e-3)
                if t >= 1:  # the previous step's executed action sits in the history
                    np.testing.assert_allclose(x["a"][row, -2].numpy(), hist[-1], rtol=1e-6)
                a = x["out"][row].numpy().astype(np.float64)  # replay what the policy chose
                hist.append(a)
                obs, r, term, trunc, _ = env.step(a)
                ret, rtg = ret + r, rtg - r
                if term or trunc:
                    break
            assert out["returns"][j, i] == pytest.approx(ret, rel=1e-6)
    t, n = random_rollout_time(ENV, tasks, episodes)
    assert n == len(tasks) * episodes * spec(ENV).horizon and t > 0


def test_task_prompt_is_the_end_of_the_first_trajectory_and_target_the_best_return(tmp_path):
    make_fake_data(tmp_path, ENV, [2], n_trajs=3, length=30)
    from common.data import load_trajectories
    trajs = load_trajectories(ENV, 2, "expert", str(tmp_path))
    prompt, target = task_prompt_and_target(trajs, 5)
    np.testing.assert_allclose(prompt["states"], trajs[0]["observations"][-5:])
    assert list(prompt["timesteps"]) == [25, 26, 27, 28, 29]
    assert target == pytest.approx(max(t["rewards"].sum() for t in trajs))
