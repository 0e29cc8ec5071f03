"""Dataset loading, its errors, and the transforms: returns-to-go, windows, prompts, sparse reward."""
import numpy as np
import pytest

from common.data import (load_trajectories, returns_to_go, sample_windows, save_trajectories, sparsify,
                         state_stats, tq_saco, trajectory_prompt)


def _traj(T, obs_dim=3, act_dim=2, seed=0, terminal=False):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(T + 1, obs_dim))
    return {"observations": obs[:-1], "next_observations": obs[1:], "actions": rng.uniform(-1, 1, (T, act_dim)),
            "rewards": rng.normal(size=T), "terminals": np.eye(T)[-1].astype(bool) & terminal,
            "timeouts": np.eye(T)[-1].astype(bool) & (not terminal)}


def test_missing_dataset_error_names_the_collect_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default data dir ("data") must not exist
    with pytest.raises(FileNotFoundError) as e:
        load_trajectories("antdir", 6, "expert", str(tmp_path))
    assert f"python collect_data.py --env antdir --data-dir {tmp_path}" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"make it with: python collect_data.py --env antdir$"):
        load_trajectories("antdir", 6, "expert", "data")


def test_corrupt_dataset_and_too_many_trajectories_give_clear_errors(tmp_path):
    path = tmp_path / "halfcheetahdir" / "expert" / "task_00.npz"
    save_trajectories(str(path), [_traj(10, 17, 6, seed=i) for i in range(3)])  # halfcheetah: 17-D obs, 6-D actions
    assert len(load_trajectories("halfcheetahdir", 0, "expert", str(tmp_path))) == 3
    with pytest.raises(ValueError, match="--num-trajs 5 exceeds the 3 trajectories"):
        load_trajectories("halfcheetahdir", 0, "expert", str(tmp_path), num_trajs=5)
    path.write_bytes(path.read_bytes()[:100])  # a half-written file
    with pytest.raises(RuntimeError, match="is corrupt.*python collect_data.py --env halfcheetahdir"):
        load_trajectories("halfcheetahdir", 0, "expert", str(tmp_path))
    with pytest.raises(ValueError, match="unknown quality"):
        load_trajectories("halfcheetahdir", 0, "good", str(tmp_path))


def test_save_load_roundtrip_splits_trajectories_and_keeps_order(tmp_path):
    trajs = [_traj(7, 27, 8, seed=0), _traj(4, 27, 8, seed=1, terminal=True), _traj(9, 27, 8, seed=2)]  # antdir's dims
    save_trajectories(str(tmp_path / "antdir" / "medium" / "task_03.npz"), trajs)
    back = load_trajectories("antdir", 3, "medium", str(tmp_path), num_trajs=2)
    assert [len(t["rewards"]) for t in back] == [7, 4]
    np.testing.assert_allclose(back[1]["observations"], trajs[1]["observations"], rtol=1e-6)
    assert back[1]["terminals"][-1] and not back[0]["terminals"].any() and back[0]["timeouts"][-1]


def test_returns_to_go():
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2.0, 3.0])), [6.0, 5.0, 3.0])
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2.0, 3.0]), gamma=0.5), [1 + 1 + 0.75, 2 + 1.5, 3.0])


def test_sparse_transform_keeps_the_total_return_on_the_last_step():
    t = _traj(12)
    sp = sparsify(t)
    assert sp["rewards"].sum() == pytest.approx(t["rewards"].sum())
    assert (sp["rewards"][:-1] == 0).all() and sp["rewards"][-1] == pytest.approx(t["rewards"].sum())
    assert returns_to_go(sp["rewards"])[0] == pytest.approx(returns_to_go(t["rewards"])[0])
    assert t["rewards"][0] != 0  # the input is left untouched


def test_windows_are_left_padded_k_step_segments_with_matching_rtg():
    b = sample_windows([_traj(30, seed=0), _traj(5, seed=1)], K=20, batch_size=64, rng=np.random.default_rng(0))
    assert b["states"].shape == (64, 20, 3) and b["actions"].shape == (64, 20, 2)
    assert b["rtg"].shape == b["timesteps"].shape == b["mask"].shape == (64, 20)
    assert (b["mask"][:, -1] == 1).all() and (np.diff(b["mask"], axis=1) >= 0).all()  # padding on the left only
    t = _traj(30, seed=0)
    b = sample_windows([t], K=20, batch_size=32, rng=np.random.default_rng(1))
    for i in range(32):
        m = b["mask"][i].astype(bool)
        ts = b["timesteps"][i][m]
        assert (np.diff(ts) == 1).all() and m.sum() == min(20, ts[-1] + 1)
        np.testing.assert_allclose(b["states"][i][m], t["observations"][ts])
        np.testing.assert_allclose(b["actions"][i][m], t["actions"][ts])
        np.testing.assert_allclose(b["rtg"][i][m], returns_to_go(t["rewards"])[ts])
        assert (b["states"][i][~m] == 0).all()


def test_prompt_is_a_k_star_step_segment():
    t = _traj(30)
    p = trajectory_prompt(t, 5)
    np.testing.assert_allclose(p["states"], t["observations"][:5])
    assert p["mask"].sum() == 5 and list(p["timesteps"]) == [0, 1, 2, 3, 4]
    p = trajectory_prompt(t, 5, rng=np.random.default_rng(3))
    s0 = int(p["timesteps"][0])
    np.testing.assert_allclose(p["actions"], t["actions"][s0:s0 + 5])
    assert trajectory_prompt(_traj(3), 5)["mask"].sum() == 3  # short trajectories are padded


def test_state_stats_and_tq_saco():
    trajs = [_traj(20, seed=i) for i in range(4)]
    mu, sd = state_stats(trajs)
    assert mu.shape == sd.shape == (3,) and (sd > 0).all()
    ret = np.mean([t["rewards"].sum() for t in trajs[:2]])
    tq, saco = tq_saco(trajs[:2], trajs, random_return=ret - 10, expert_return=ret + 10)
    assert tq == pytest.approx(0.5)
    assert 0 < saco < 1  # half of the reference buffer covers fewer cells than all of it
    assert tq_saco(trajs, trajs, 0.0, 1.0)[1] == 1.0


def test_packed_prompts_are_full_segments_of_the_given_trajectories():
    from common.data import pack, sample_prompts
    trajs = [_traj(30, seed=0), _traj(12, seed=1), _traj(3, seed=2)]
    p = pack(trajs)
    ids = np.array([0, 1, 2, 1, 0] * 20)
    pr = sample_prompts(p, ids, 5, np.random.default_rng(0))
    assert pr["states"].shape == (100, 5, 3)
    for k, i in enumerate(ids):
        m = pr["mask"][k].astype(bool)
        assert m.sum() == min(5, len(trajs[i]["rewards"]))  # full unless the trajectory is shorter
        ts = pr["timesteps"][k][m]
        np.testing.assert_allclose(pr["actions"][k][m], trajs[i]["actions"][ts])
    starts = {int(pr["timesteps"][k][0]) for k in range(100) if ids[k] == 0}
    assert len(starts) > 5  # random segments, not always the same
