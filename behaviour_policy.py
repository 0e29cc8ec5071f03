"""Behaviour policies that generate the offline datasets (used by collect_data.py only).

Locomotion (halfcheetahvel, halfcheetahdir, antdir): one goal-conditioned SAC agent per family
instead of the paper's SAC agent per task. The policy and critic are told the task (policy_input;
the stored observations never are), and since every reward in common/envs.py is a known function of
goal-free features (vx, vy, healthy + contact), each replayed transition is relabelled with a fresh
goal drawn from the task distribution: one stream of experience trains every task at once. Envs are
stepped in a batch (VecEnv) and the learner does a few updates per batch of transitions.

MetaWorld: metaworld's scripted policies, fed the goal-visible observation.

Medium regime (all families): the expert acting, at every step with probability eps, uniformly at
random; eps is calibrated per task by bisection so that the normalised score
(R - R_random) / (R_expert - R_random) lands in [1/3, 1/2] (docs/protocol.md).
"""
from __future__ import annotations

import copy
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.files import atomic_torch_save
from common.envs import VecEnv, locomotion_reward, sample_params, spec

MEDIUM_BAND = (1 / 3, 1 / 2)


def goal_frame(obs: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Ant observation seen from a frame rotated by theta about the vertical axis.

    Ant-v5 obs (27-D): z, torso quaternion (w, x, y, z), 8 joint angles, linear velocity (world
    frame), angular velocity (body frame), 8 joint velocities. Its dynamics do not change under a
    rotation about z and the obs holds no x/y position, so "walk towards theta" is "walk along +x" in
    the rotated frame: the quaternion is pre-multiplied by a -theta yaw and (vx, vy) rotated by -theta;
    body-frame and joint entries are unchanged.
    """
    out = obs.copy()
    c, s = np.cos(theta), np.sin(theta)
    ch, sh = np.cos(theta / 2), np.sin(theta / 2)
    w, x, y, z = obs[:, 1], obs[:, 2], obs[:, 3], obs[:, 4]
    # (ch, 0, 0, -sh) * (w, x, y, z)
    out[:, 1], out[:, 2] = ch * w + sh * z, ch * x + sh * y
    out[:, 3], out[:, 4] = ch * y - sh * x, ch * z - sh * w
    vx, vy = obs[:, 13], obs[:, 14]
    out[:, 13], out[:, 14] = c * vx + s * vy, -s * vx + c * vy
    return out


def policy_input(env_name: str, obs: np.ndarray, param) -> np.ndarray:
    """What the behaviour policy and critic see: the observation plus what they are told of the task.
    halfcheetahvel: v*/3 appended; halfcheetahdir: d appended; antdir: the obs in the goal's frame."""
    p = np.broadcast_to(np.asarray(param, dtype=np.float64), (len(obs),))
    if env_name == "antdir":
        return goal_frame(obs, p)
    g = p / 3.0 if env_name == "halfcheetahvel" else p
    return np.concatenate([obs, g[:, None]], 1)


def policy_input_dim(env_name: str) -> int:
    return policy_input(env_name, np.zeros((1, spec(env_name).obs_dim)), 0.0).shape[1]


def mlp(inp: int, out: int, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


class SACCritic(nn.Module):
    """The two Q-networks of SAC as one ensemble evaluated with batched matmuls (fewer, larger
    kernels: ~20% faster per update on a CPU than two separate MLPs). forward(x) -> (2, B)."""

    def __init__(self, inp: int, hidden: int = 256, n: int = 2):
        super().__init__()
        dims = [inp, hidden, hidden, 1]
        self.w = nn.ParameterList()
        self.b = nn.ParameterList()
        for i, o in zip(dims[:-1], dims[1:]):
            bound = 1 / np.sqrt(i)  # nn.Linear's default init
            self.w.append(nn.Parameter(torch.empty(n, i, o).uniform_(-bound, bound)))
            self.b.append(nn.Parameter(torch.empty(n, 1, o).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.expand(self.w[0].shape[0], *x.shape)
        for k, (w, b) in enumerate(zip(self.w, self.b)):
            h = torch.baddbmm(b, h, w)
            h = F.relu(h) if k < len(self.w) - 1 else h
        return h.squeeze(-1)


class SACActor(nn.Module):
    """tanh-Gaussian policy pi(a | s, g)."""

    def __init__(self, in_dim: int, act_dim: int):
        super().__init__()
        self.net = mlp(in_dim, 2 * act_dim)

    def forward(self, x: torch.Tensor, deterministic: bool = False):
        mu, log_std = self.net(x).chunk(2, -1)
        if deterministic:
            return torch.tanh(mu), None
        std = log_std.clamp(-5, 2).exp()
        u = mu + std * torch.randn_like(mu)
        a = torch.tanh(u)
        # log-density of the squashed sample (change of variables through tanh)
        logp = (-0.5 * ((u - mu) / std) ** 2 - std.log() - 0.5 * np.log(2 * np.pi)).sum(-1)
        logp = logp - (2 * (np.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return a, logp


class BehaviourPolicy:
    """A behaviour policy for one family: expert actions, optionally eps-mixed with random ones."""

    def __init__(self, env_name: str, actor: SACActor | None = None):
        self.env_name, self.actor = env_name, actor
        if env_name == "metaworld":
            from metaworld.policies import ENV_POLICY_MAP

            self.scripted = [ENV_POLICY_MAP[name]() for name in spec(env_name).params]

    def act(self, venv: VecEnv, tasks, params, eps, rngs: list[np.random.Generator]) -> np.ndarray:
        if self.env_name == "metaworld":
            a = np.stack([self.scripted[t].get_action(o) for t, o in zip(tasks, venv.policy_obs)])
        else:
            x = policy_input(self.env_name, venv.obs, params)
            with torch.no_grad():
                a = self.actor(torch.as_tensor(x, dtype=torch.float32), deterministic=True)[0].numpy()
        a = np.clip(a, -1.0, 1.0)
        for i, rng in enumerate(rngs):  # one generator per episode: data do not depend on batching
            if eps[i] > 0 and rng.random() < eps[i]:
                a[i] = rng.uniform(-1.0, 1.0, a.shape[1])
        return a


_VENVS: dict = {}


def behaviour_rollout(policy: BehaviourPolicy, tasks, seeds, eps, num_envs: int = 100, record: bool = False, rng_seed: int = 0):
    """Run one episode per (task, seed, eps) triple, num_envs at a time. Returns per-episode returns,
    success (max over the episode) and, with record=True, the trajectories as dicts of arrays. Each
    episode is a function of (task, seed, eps, rng_seed) alone, whatever the batch it runs in."""
    s = spec(policy.env_name)
    tasks, seeds, eps = np.asarray(tasks), np.asarray(seeds), np.broadcast_to(eps, len(tasks)).astype(float)
    returns, successes, trajs = np.zeros(len(tasks)), np.zeros(len(tasks)), []
    for lo in range(0, len(tasks), num_envs):
        idx = np.arange(lo, min(lo + num_envs, len(tasks)))
        key = (policy.env_name, len(idx))
        venv = _VENVS[key] = _VENVS.get(key) or VecEnv(*key)  # reused: metaworld envs are slow to build
        venv.reset(tasks[idx], seeds[idx])
        params = np.array([s.params[t] for t in tasks[idx]]) if policy.env_name != "metaworld" else None
        rngs = [np.random.default_rng([rng_seed, int(seed)]) for seed in seeds[idx]]
        keys = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
        buf = {k: [] for k in keys + ("alive",)}
        while not venv.done.all():
            alive = ~venv.done
            obs = venv.obs.copy()
            a = policy.act(venv, tasks[idx], params, eps[idx], rngs)
            next_obs, r, term, trunc, succ = venv.step(a)
            returns[idx] += r
            successes[idx] = np.maximum(successes[idx], succ)
            if record:
                for k, v in zip(buf, (obs, a, r, term, trunc, next_obs, alive)):
                    buf[k].append(v)
        if record:
            stacked = {k: np.stack(v, 1) for k, v in buf.items()}  # (envs, T, ...)
            for j in range(len(idx)):
                n = int(stacked["alive"][j].sum())
                trajs.append({k: stacked[k][j, :n] for k in keys})
    return returns, successes, trajs


def calibration_seeds(tasks, episodes: int) -> np.ndarray:
    """Reset seeds of the calibration episodes: fixed per (task, episode), disjoint from the data's."""
    return (3_000_000 + 10_000 * np.repeat(np.asarray(tasks), episodes) + np.tile(np.arange(episodes), len(tasks)))


def calibrate_medium(policy: BehaviourPolicy, tasks, random_ret, expert_ret, episodes: int = 10, iters: int = 7):
    """Per-task eps by bisection so that the normalised score lands in MEDIUM_BAND (all tasks at once)."""
    lo, hi = np.zeros(len(tasks)), np.ones(len(tasks))
    target = sum(MEDIUM_BAND) / 2
    eps = (lo + hi) / 2
    for it in range(iters):
        eps = (lo + hi) / 2
        rets, _, _ = behaviour_rollout(policy, np.repeat(tasks, episodes), calibration_seeds(tasks, episodes), np.repeat(eps, episodes))
        score = (rets.reshape(len(tasks), episodes).mean(1) - random_ret) / (expert_ret - random_ret)
        too_good = score > target
        lo, hi = np.where(too_good, eps, lo), np.where(too_good, hi, eps)
        print(f"  calibrate medium: iter {it + 1}/{iters}, normalised score mean {score.mean():.3f} "
              f"(min {score.min():.3f}, max {score.max():.3f}), eps mean {eps.mean():.3f}", flush=True)
    return eps


def train_sac(env_name: str, total_steps: int, seed: int = 0, num_envs: int = 32, batch_size: int = 256,
              updates_per_iter: int = 4, relabel_prob: float = 0.5, eval_every: int = 50_000,
              ckpt_path: str | None = None, log=print):
    """Goal-relabelled SAC over num_envs parallel envs; returns the trained actor and a log.

    With ckpt_path, the networks, optimisers, temperature and step count are saved atomically at every
    evaluation and a rerun resumes from them (the replay buffer, hundreds of MB, is not saved: a resumed
    run refills it with the current policy before updating again).

    The learner, not the simulator, costs time on a CPU, so the budget goes into gradient steps of a
    standard size (batch 256) and the cheap physics supplies fresh data: updates_per_iter updates per
    num_envs env steps (update-to-data ratio 1/8 by default)."""
    s = spec(env_name)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    in_dim = policy_input_dim(env_name)
    actor = SACActor(in_dim, s.act_dim)
    q = SACCritic(in_dim + s.act_dim)
    q_t = copy.deepcopy(q)
    log_alpha = torch.zeros((), requires_grad=True)
    pi_opt = torch.optim.Adam(actor.parameters(), lr=3e-4)
    q_opt = torch.optim.Adam(q.parameters(), lr=3e-4)
    a_opt = torch.optim.Adam([log_alpha], lr=3e-4)
    gamma, tau, target_entropy = 0.99, 0.005, -float(s.act_dim)
    modules = {"actor": actor, "q": q, "q_t": q_t, "pi_opt": pi_opt, "q_opt": q_opt, "a_opt": a_opt}
    done_steps, history, elapsed0 = 0, [], 0.0
    if ckpt_path and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=True)
        for k, m in modules.items():
            m.load_state_dict(ck[k])
        with torch.no_grad():
            log_alpha.copy_(ck["log_alpha"])
        done_steps, history, elapsed0 = ck["env_steps"], ck["history"], ck["time_s"]
        rng = np.random.default_rng([seed, done_steps])
        log(f"  resuming SAC from {ckpt_path} at {done_steps} env steps")

    cap = total_steps - done_steps + num_envs
    B = {"obs": np.zeros((cap, s.obs_dim), np.float32), "next_obs": np.zeros((cap, s.obs_dim), np.float32),
         "act": np.zeros((cap, s.act_dim), np.float32), "feats": np.zeros((cap, 3), np.float32),
         "term": np.zeros(cap, np.float32), "param": np.zeros(cap, np.float32)}
    size = 0
    venv = VecEnv(env_name, num_envs)
    params = sample_params(env_name, rng, num_envs)
    for i in range(num_envs):
        venv.reset_one(i, int(rng.integers(2**31)), param=params[i])
    warmup, t0, ep_ret, done_rets = 5_000, time.time() - elapsed0, np.zeros(num_envs), []
    next_eval = (done_steps // eval_every + 1) * eval_every
    while done_steps + size < total_steps:
        obs = venv.obs.copy()
        if size < warmup and done_steps == 0:
            act = rng.uniform(-1, 1, (num_envs, s.act_dim))
        else:
            with torch.no_grad():
                x = torch.as_tensor(policy_input(env_name, obs, params), dtype=torch.float32)
                act = actor(x)[0].numpy()
        next_obs, rew, term, trunc, _ = venv.step(act)
        sl = slice(size, size + num_envs)
        B["obs"][sl], B["next_obs"][sl], B["act"][sl] = obs, next_obs, act
        B["feats"][sl], B["term"][sl], B["param"][sl] = venv.feats, term, params
        size += num_envs
        ep_ret += rew
        for i in np.flatnonzero(term | trunc):
            done_rets.append(ep_ret[i])
            ep_ret[i] = 0.0
            params[i] = sample_params(env_name, rng, 1)[0]
            venv.reset_one(i, int(rng.integers(2**31)), param=params[i])
        for _ in range(updates_per_iter if size >= warmup else 0):
            j = rng.integers(0, size, batch_size)
            p = B["param"][j].astype(np.float64)
            relabel = rng.random(batch_size) < relabel_prob
            p[relabel] = sample_params(env_name, rng, int(relabel.sum()))
            r = locomotion_reward(env_name, p, B["feats"][j].astype(np.float64), B["act"][j].astype(np.float64))
            x = torch.as_tensor(policy_input(env_name, B["obs"][j].astype(np.float64), p), dtype=torch.float32)
            x2 = torch.as_tensor(policy_input(env_name, B["next_obs"][j].astype(np.float64), p), dtype=torch.float32)
            a, r = torch.as_tensor(B["act"][j]), torch.as_tensor(r, dtype=torch.float32)
            nd = 1.0 - torch.as_tensor(B["term"][j])  # time-limit truncation still bootstraps
            alpha = log_alpha.exp().detach()
            with torch.no_grad():
                a2, logp2 = actor(x2)
                xa2 = torch.cat([x2, a2], 1)
                y = r + gamma * nd * (q_t(xa2).min(0).values - alpha * logp2)
            q_loss = 2 * F.mse_loss(q(torch.cat([x, a], 1)), y.expand(2, -1))  # sum of the two critics' MSE
            q_opt.zero_grad()
            q_loss.backward()
            q_opt.step()
            a_pi, logp = actor(x)
            xpi = torch.cat([x, a_pi], 1)
            pi_loss = (alpha * logp - q(xpi).min(0).values).mean()
            pi_opt.zero_grad()
            pi_loss.backward()
            pi_opt.step()
            alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
            a_opt.zero_grad()
            alpha_loss.backward()
            a_opt.step()
            with torch.no_grad():
                for w, wt in zip(q.parameters(), q_t.parameters()):
                    wt.lerp_(w, tau)
        steps = done_steps + size
        if steps >= next_eval or steps >= total_steps:
            next_eval = (steps // eval_every + 1) * eval_every
            pol = BehaviourPolicy(env_name, actor)
            tasks = np.repeat(np.array(s.test_tasks), 2)
            rets, _, _ = behaviour_rollout(pol, tasks, np.arange(len(tasks)), 0.0)
            el = time.time() - t0
            row = {"env_steps": steps, "time_s": round(el, 1), "test_return": float(rets.mean()),
                   "train_episode_return": float(np.mean(done_rets[-50:])) if done_rets else None,
                   "alpha": float(log_alpha.detach().exp())}
            history.append(row)
            rate = size / (el - elapsed0)
            log(f"  sac {env_name}: {steps}/{total_steps} env steps, {rate:.0f} steps/s, ETA "
                f"{(total_steps - steps) / rate / 60:.1f} min, test-task return {rets.mean():.1f} "
                f"(per task {np.round(rets.reshape(-1, 2).mean(1), 1).tolist()}), alpha {row['alpha']:.3f}")
            if ckpt_path:
                ck = {k: m.state_dict() for k, m in modules.items()}
                ck.update(log_alpha=log_alpha.detach().clone(), env_steps=steps, history=history, time_s=el)
                atomic_torch_save(ck, ckpt_path)
    return actor, history
