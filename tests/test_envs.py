"""The four env families: reward formulas against the simulator's own velocities, fixed task lists
and splits, and the batched stepper."""
import gymnasium as gym
import numpy as np
import pytest
import torch

from common.envs import ENV_NAMES, VecEnv, make_env, spec


def _pair(name, base_id, task, seed=3, **kw):
    """Our env and a raw gymnasium env on the same seed, to step with the same actions."""
    ours, raw = make_env(name, task), gym.make(base_id, **kw).unwrapped
    o1, _ = ours.reset(seed=seed, options={"task": task})
    o2, _ = raw.reset(seed=seed)
    np.testing.assert_array_equal(o1, o2)
    return ours, raw


def test_halfcheetahvel_reward_is_velocity_error_plus_005_ctrl():
    s = spec("halfcheetahvel")
    task = s.test_tasks[0]
    ours, raw = _pair("halfcheetahvel", "HalfCheetah-v5", task)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.uniform(-1, 1, 6)
        x0 = raw.data.qpos[0]
        _, r, *_ = ours.step(a)
        _, _, _, _, info = raw.step(a)
        # the simulator's reported velocity is the finite difference of the x position
        assert info["x_velocity"] == pytest.approx((raw.data.qpos[0] - x0) / raw.dt)
        assert r == pytest.approx(-abs(info["x_velocity"] - s.params[task]) - 0.05 * np.sum(a**2))


@pytest.mark.parametrize("task,d", [(0, 1.0), (1, -1.0)])
def test_halfcheetahdir_reward_is_signed_velocity(task, d):
    ours, raw = _pair("halfcheetahdir", "HalfCheetah-v5", task)
    a = np.full(6, 0.5)
    for _ in range(3):
        _, r, *_ = ours.step(a)
        _, r_raw, _, _, info = raw.step(a)
        assert r == pytest.approx(d * info["x_velocity"] - 0.05 * np.sum(a**2))
        if d > 0:  # gymnasium's own reward uses a 0.1 control cost
            assert r == pytest.approx(r_raw + 0.05 * np.sum(a**2))


def test_antdir_reward_projects_velocity_on_the_goal_direction():
    s = spec("antdir")
    task = s.test_tasks[1]
    theta = s.params[task]
    ours, raw = _pair("antdir", "Ant-v5", task, include_cfrc_ext_in_observation=False)
    assert ours.observation_space.shape == (27,)
    rng = np.random.default_rng(1)
    for _ in range(5):
        a = rng.uniform(-1, 1, 8)
        o, r, term, _, _ = ours.step(a)
        _, r_raw, term_raw, _, info = raw.step(a)
        assert o.shape == (27,) and term == term_raw
        fwd = info["x_velocity"] * np.cos(theta) + info["y_velocity"] * np.sin(theta)
        expect = fwd + info["reward_survive"] - 0.5 * np.sum(a**2) + info["reward_contact"]
        assert r == pytest.approx(expect)
        # at theta = 0 the formula is gymnasium's own Ant reward
        assert r - fwd + info["x_velocity"] == pytest.approx(r_raw)


def test_task_lists_and_splits_are_fixed_and_disjoint():
    for name in ("halfcheetahvel", "antdir"):
        s = spec(name)
        assert s.num_tasks == 55 and len(s.train_tasks) == 45 and len(s.test_tasks) == 5
        assert s.val_tasks == (50, 51, 52, 53, 54)
        assert set(s.train_tasks) | set(s.test_tasks) == set(range(50))
    vel = spec("halfcheetahvel")
    assert all(0.075 <= v <= 3.0 for v in vel.params)
    assert all(0 <= t < 2 * np.pi for t in spec("antdir").params)
    # the split is part of the benchmark: changing it silently would invalidate every result
    assert vel.test_tasks == (2, 13, 16, 17, 29)
    assert [round(vel.params[t], 4) for t in vel.test_tasks] == [2.7755, 2.6015, 2.2271, 0.7266, 0.81]
    assert [round(vel.params[t], 4) for t in vel.val_tasks] == [0.5984, 1.9467, 1.4418, 1.1587, 1.1131]
    assert spec("antdir").test_tasks == (6, 14, 35, 46, 49)
    assert round(spec("antdir").params[6], 4) == 1.6985
    assert [round(spec("antdir").params[t], 4) for t in spec("antdir").val_tasks] == [0.0503, 2.4246, 0.5185, 3.1284,
                                                                                         2.8196]
    d = spec("halfcheetahdir")
    assert d.params == (1.0, -1.0) and d.train_tasks == d.test_tasks == (0, 1) and d.val_tasks == ()
    mw = spec("metaworld")
    assert [mw.params[t] for t in mw.test_tasks] == ["bin-picking-v3", "box-close-v3", "hand-insert-v3",
                                                      "door-lock-v3", "door-unlock-v3"]
    # 5 of ML45's 45 training classes held out of pretraining by a seeded draw
    assert [mw.params[t] for t in mw.val_tasks] == ["basketball-v3", "coffee-pull-v3", "faucet-close-v3",
                                                     "plate-slide-side-v3", "stick-push-v3"]
    assert len(set(mw.params)) == 50 and len(mw.train_tasks) == 40
    assert set(mw.train_tasks) | set(mw.val_tasks) == set(range(45))


@pytest.mark.parametrize("name", ENV_NAMES)
def test_validation_test_and_pretraining_tasks_are_disjoint(name):
    s = spec(name)
    if name == "halfcheetahdir":  # only two tasks exist: pretrained on and tested, as in Prompt-DT; no validation
        assert s.val_tasks == () and s.finetune_tasks == s.test_tasks
        return
    assert len(s.val_tasks) == 5 and len(set(s.val_tasks)) == 5
    assert set(s.val_tasks).isdisjoint(s.test_tasks)
    assert set(s.val_tasks).isdisjoint(s.train_tasks)
    assert set(s.train_tasks).isdisjoint(s.test_tasks)
    assert s.finetune_tasks == s.val_tasks + s.test_tasks
    # validation task parameters are new draws, not copies of any other task's
    assert not set(s.params[t] for t in s.val_tasks) & set(s.params[t] for t in s.train_tasks + s.test_tasks)


def test_bad_env_and_task_give_clear_errors():
    with pytest.raises(ValueError, match="unknown env 'antdirr'; choose one of halfcheetahvel"):
        spec("antdirr")
    with pytest.raises(ValueError, match="tasks 0..54"):
        make_env("antdir", 55)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_vecenv_is_deterministic_and_runs_episodes_to_the_horizon(name):
    s = spec(name)
    tasks, seeds = [s.test_tasks[0], s.test_tasks[-1]], [7, 8]
    runs = []
    for _ in range(2):
        v = VecEnv(name, 2)
        obs0 = v.reset(tasks, seeds)
        rng, total, steps = np.random.default_rng(0), np.zeros(2), 0
        while not v.done.all() and steps < 60:
            _, r, _, _, _ = v.step(rng.uniform(-1, 1, (2, s.act_dim)))
            total += r
            steps += 1
        runs.append((obs0, total))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert obs0.shape == (2, s.obs_dim)


@pytest.mark.parametrize("name", ["antdir", "metaworld"])
def test_evaluations_reuse_their_envs_and_run_the_same_episodes_as_fresh_ones(name):
    from common import rollout

    s = spec(name)
    w = torch.as_tensor(np.random.default_rng(0).normal(size=(s.obs_dim, s.act_dim)) / np.sqrt(s.obs_dim),
                        dtype=torch.float32)
    act = lambda st, ac, r, t, m: torch.tanh(st[:, -1] @ w)  # noqa: E731 (a policy that reacts to the state)
    a, b = s.test_tasks[0], s.test_tasks[1]
    rollout._VEC_ENVS.clear()
    fresh = rollout.evaluate(act, name, [a], 2, [0.0], K=2)
    envs = rollout._VEC_ENVS[name, 2]
    rollout.evaluate(act, name, [b], 2, [0.0], K=2)  # another task in the same envs in between
    again = rollout.evaluate(act, name, [a], 2, [0.0], K=2)
    assert rollout._VEC_ENVS[name, 2] is envs
    np.testing.assert_array_equal(fresh["returns"], again["returns"])
    np.testing.assert_array_equal(fresh["success"], again["success"])


def test_vecenv_freezes_finished_envs_and_truncates_at_horizon():
    v = VecEnv("halfcheetahdir", 2)
    v.reset([0, 1], [0, 1])
    n = 0
    while not v.done.all():
        _, r, term, trunc, _ = v.step(np.zeros((2, 6)))
        n += 1
    assert n == 200 and trunc.all() and not term.any()
    _, r, *_ = v.step(np.ones((2, 6)))
    assert (r == 0).all()


def test_metaworld_hides_the_goal_from_the_agent_but_not_from_the_scripted_policy():
    from metaworld.policies import ENV_POLICY_MAP

    s = spec("metaworld")
    task = s.params.index("hand-insert-v3")
    v = VecEnv("metaworld", 1)
    obs = v.reset([task], [0])
    assert (obs[0, -3:] == 0).all() and np.abs(v.policy_obs[0, -3:]).sum() > 0
    pol, success = ENV_POLICY_MAP["hand-insert-v3"](), 0.0
    while not v.done.all():
        obs, _, _, _, succ = v.step(pol.get_action(v.policy_obs[0])[None])
        assert (obs[0, -3:] == 0).all()
        success = max(success, succ[0])
    assert success == 1.0  # needs the goal: fails (0.0) under plain ML45 observations
