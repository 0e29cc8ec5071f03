"""The behaviour-policy machinery: the Ant goal frame, and eps-mixing."""
import numpy as np
import pytest

from behaviour_policy import goal_frame, policy_input, policy_input_dim


def test_ant_goal_frame_is_the_physics_seen_from_a_rotated_frame():
    """An Ant started in the same state rotated by theta (yaw), driven by the same actions, looks in
    the goal frame exactly like the unrotated Ant: walking towards theta is walking along +x."""
    import mujoco

    from common.envs import make_env

    theta = 2.1
    a_env, b_env = make_env("antdir", 0), make_env("antdir", 0)
    a_env.reset(seed=0)
    b_env.reset(seed=0)
    A, B = a_env.base, b_env.base
    qpos, qvel = A.data.qpos.copy(), A.data.qvel.copy()
    c, s = np.cos(theta), np.sin(theta)
    qpos[:2] = [c * qpos[0] - s * qpos[1], s * qpos[0] + c * qpos[1]]
    yaw = np.array([np.cos(theta / 2), 0, 0, np.sin(theta / 2)])
    quat = np.zeros(4)
    mujoco.mju_mulQuat(quat, yaw, qpos[3:7])
    qpos[3:7] = quat
    qvel[:2] = [c * qvel[0] - s * qvel[1], s * qvel[0] + c * qvel[1]]  # world-frame linear velocity
    B.set_state(qpos, qvel)  # body-frame angular velocity and joints are unchanged
    rng = np.random.default_rng(0)
    for _ in range(8):
        act = rng.uniform(-1, 1, 8)
        oa, *_ = a_env.step(act)
        ob, *_ = b_env.step(act)
        np.testing.assert_allclose(goal_frame(ob[None], np.array([theta]))[0], oa, atol=1e-6)
    assert np.abs(ob - oa).max() > 0.1  # the two Ants really are in different world frames
    np.testing.assert_allclose(goal_frame(oa[None], np.zeros(1))[0], oa)
    # the reward's direction term in the goal frame is the forward velocity there
    rot = goal_frame(ob[None], np.array([theta]))[0]
    assert rot[13] == pytest.approx(c * ob[13] + s * ob[14])


def test_policy_inputs():
    obs = np.ones((2, 17))
    np.testing.assert_allclose(policy_input("halfcheetahvel", obs, [3.0, 1.5])[:, -1], [1.0, 0.5])
    np.testing.assert_allclose(policy_input("halfcheetahdir", obs, -1.0)[:, -1], [-1.0, -1.0])
    assert policy_input_dim("halfcheetahvel") == 18 and policy_input_dim("antdir") == 27
