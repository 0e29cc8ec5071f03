"""online_grpo.py: grouped rollouts from one initial state, the loss by hand (clipped surrogate on-policy,
LUFFY's shaped term off-policy), and end-to-end runs, pure and mixed, with the env steps they used."""
import importlib
import math

import numpy as np
import pytest
import torch

from common.envs import spec
from common.rollout import online_seed
from online_grpo import sample_episodes
from conftest import ENV, TASK, run_algo


def test_online_loss_by_hand():
    from online_grpo import online_grpo_loss
    logp, logp_old = torch.tensor([0.0, math.log(2.0)]), torch.tensor([0.0, 0.0])
    adv, kl = torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.0])
    pi_rel, gamma = torch.tensor([0.3, 0.3]), 0.1
    # both on-policy: step 0 ratio 1 -> 1 - 0.04 * 0.5; step 1 ratio 2 clipped to 1.2
    on = online_grpo_loss(logp, logp_old, adv, kl, torch.tensor([False, False]), pi_rel, 0.2, 0.04, gamma)
    assert on.item() == pytest.approx(-((1 - 0.02) + 1.2) / 2)
    # step 1 off-policy: no ratio, no clip, f(pi) A = 0.3 / 0.4
    mixed = online_grpo_loss(logp, logp_old, adv, kl, torch.tensor([False, True]), pi_rel, 0.2, 0.04, gamma)
    assert mixed.item() == pytest.approx(-((1 - 0.02) + 0.75) / 2)
    # LUFFY's shaping: the gradient of f(pi) = pi / (pi + gamma) is gamma / (pi + gamma)^2, largest for unlikely actions
    p = torch.tensor([0.05, 0.9], requires_grad=True)
    (p / (p + gamma)).sum().backward()
    assert p.grad[0] > p.grad[1] and p.grad[0].item() == pytest.approx(gamma / (0.05 + gamma) ** 2)


def test_a_group_starts_from_one_initial_state_and_explores(setup):  # noqa: F811
    from common.model import load_pretrained
    from common.tuning import TunedPolicy
    sp = spec(ENV)
    model = load_pretrained(str(setup / "pre.pt"), ENV, sp.obs_dim, sp.act_dim)
    K = model.cfg.K
    prompt = {"states": np.zeros((K, sp.obs_dim)), "actions": np.zeros((K, sp.act_dim)), "rtg": np.zeros(K),
              "timesteps": np.arange(K), "mask": np.ones(K)}
    pol = TunedPolicy(model, "full", prompt).eval()
    g = sample_episodes(pol, ENV, TASK, online_seed(TASK, 1), 3, 0.0, K, 0.1, torch.Generator().manual_seed(0))
    first = g["states"][g["timesteps"][:, -1] == 0][:, -1]
    assert len(first) == 3 and torch.equal(first[0], first[1]) and torch.equal(first[0], first[2])  # one reset seed
    assert g["env_steps"] == len(g["act"]) == 3 * sp.horizon and len(set(np.round(g["returns"], 6))) == 3
    assert not torch.equal(g["act"], g["mu"])  # actions are sampled around mu
    for i in range(3):  # episode by episode in time order, with their rewards
        ep = g["episode"] == i
        assert torch.equal(g["timesteps"][ep][:, -1], torch.arange(int(ep.sum())))
        assert g["reward"][ep].sum().item() == pytest.approx(g["returns"][i], rel=1e-4, abs=1e-3)
        assert g["last"][ep].nonzero().flatten().tolist() == [int(ep.sum()) - 1]
    # the recorded windows are what the policy saw: its mean on them reproduces mu
    with torch.no_grad():
        mu = pol(g["states"], g["actions"], g["rtg"], g["timesteps"], g["mask"], last_only=True)
    torch.testing.assert_close(mu, g["mu"])
    assert online_seed(TASK, 1) != online_seed(TASK, 2)


@pytest.mark.parametrize("members", [0, 2])
def test_online_grpo_runs_pure_and_mixed_and_counts_env_steps(setup, members):  # noqa: F811
    mod = importlib.import_module("online_grpo")
    # the mixed run updates on a subsample (2 minibatches of 16 steps); the pure one on every step
    args = mod.Args(env=ENV, tasks=(TASK,), num_trajs=4, total_steps=2, eval_every=1, eval_episodes=1, group_size=2,
                    offline_members=members, data_dir=str(setup / "data"), run_dir=str(setup / "online"),
                    pretrained=str(setup / "pre.pt"), threads=1, batch_size=16, minibatches=2 if members else 0)
    res = mod.main(args)
    assert res["algo"] == ("online_grpo" if members == 0 else "online_grpo_mixed")
    assert res["config"]["minibatches"] == args.minibatches
    assert res["env_steps"] == 2 * 2 * spec(ENV).horizon  # 2 iterations x 2 rollouts of a full episode
    (t,) = res["tasks"]
    assert [c["step"] for c in t["curve"]] == [0, 1, 2] and np.isfinite(t["selected"])
    with pytest.raises(ValueError, match="a group needs 2 or more members"):
        mod.main(mod.Args(env=ENV, tasks=(TASK,), group_size=1, offline_members=0, data_dir=str(setup / "data"),
                          run_dir=str(setup / "online_bad"), pretrained=str(setup / "pre.pt")))


def test_online_ppo_runs_and_counts_env_steps(setup):  # noqa: F811
    mod = importlib.import_module("online_ppo")
    args = mod.Args(env=ENV, tasks=(TASK,), num_trajs=4, total_steps=2, eval_every=2, eval_episodes=1, group_size=2,
                    data_dir=str(setup / "data"), run_dir=str(setup / "online"), pretrained=str(setup / "pre.pt"),
                    threads=1)
    res = mod.main(args)
    assert res["algo"] == "online_ppo" and res["env_steps"] == 2 * 2 * spec(ENV).horizon
    c = res["tasks"][0]["curve"][-1]
    assert np.isfinite(c["critic_loss"]) and np.isfinite(c["loss"])
    # the loss by hand: ratio 2 clipped to 1.2 for a positive advantage, minus beta KL
    loss = mod.online_ppo_loss(torch.tensor([math.log(2.0)]), torch.tensor([0.0]), torch.tensor([1.0]),
                               torch.tensor([0.5]), 0.2, 0.04)
    assert loss.item() == pytest.approx(-(1.2 - 0.02))


def test_subsample_steps_draws_distinct_steps_once_per_iteration():
    from online_grpo import subsample_steps
    gen = torch.Generator().manual_seed(0)
    sub = subsample_steps(1000, 64, 4, gen)
    assert len(sub) == 256 and len(set(sub.tolist())) == 256 and 0 <= sub.min() and sub.max() < 1000
    assert sorted(subsample_steps(100, 64, 0, gen).tolist()) == list(range(100))  # 0: every step
    assert sorted(subsample_steps(100, 64, 4, gen).tolist()) == list(range(100))  # fewer steps than asked: all


@pytest.mark.parametrize("lr", [None, 3e-4])
def test_online_lr_is_the_factor_times_the_offline_default_unless_given(setup, lr):  # noqa: F811
    from common.tuning import DEFAULT_LR
    mod = importlib.import_module("online_ppo")
    args = mod.Args(env=ENV, tasks=(TASK,), num_trajs=4, total_steps=1, eval_every=1, eval_episodes=1, group_size=2,
                    data_dir=str(setup / "data"), run_dir=str(setup / f"online_lr{lr}"), pretrained=str(setup / "pre.pt"),
                    threads=1, tuning="lora", lr=lr, lr_factor=0.5)
    res = mod.main(args)
    assert res["config"]["lr"] == pytest.approx(DEFAULT_LR["lora"] * 0.5 if lr is None else lr)


def test_init_from_starts_online_finetuning_at_the_offline_runs_selected_checkpoint(setup):  # noqa: F811
    off = run_algo(setup, "sft", run_dir="offline", tuning="lora", total_steps=4, eval_every=2)
    (folder,) = [str(d) for d in (setup / "offline").iterdir() if not d.name.startswith(".")]  # not .zero_shot
    mod = importlib.import_module("online_grpo")
    base = dict(env=ENV, tasks=(TASK,), num_trajs=4, total_steps=1, eval_every=1, eval_episodes=1, group_size=2,
                data_dir=str(setup / "data"), pretrained=str(setup / "pre.pt"), threads=1, tuning="lora")
    res = mod.main(mod.Args(**base, run_dir=str(setup / "o2o"), init_from=folder))
    # the step-0 evaluation scores the offline policy: the offline run's selected checkpoint, same episodes
    assert res["tasks"][0]["curve"][0]["return"] == off["tasks"][0]["selected"]
    assert res["config"]["init_from"] == folder
    with pytest.raises(ValueError, match="--save-model selected"):
        mod.main(mod.Args(**base, run_dir=str(setup / "o2o_bad"), init_from=str(setup / "nowhere")))
    with pytest.raises(ValueError, match="other settings"):
        mod.main(mod.Args(**{**base, "tuning": "full"}, run_dir=str(setup / "o2o_bad"), init_from=folder))
