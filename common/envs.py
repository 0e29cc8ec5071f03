"""The four meta-RL environment families of docs/protocol.md, their fixed task lists, and a batched stepper.

A *task* is an integer index into a family's fixed task list (`spec(env).params`); the agent never
sees the task parameter, it has to infer the task from the trajectory prompt. Task parameters and
the pretrain / validation / test split are fixed here, in code, so every script and every dataset
agree on what task 3 is.

Three disjoint kinds of task per family: *pretraining* tasks (the Prompt-DT's data), *validation*
tasks (never pretrained on, never reported: every hyperparameter is chosen on them) and *test* tasks
(only ever reported). halfcheetahvel / antdir: 50 tasks drawn with TASK_SEED (45 pretraining, 5
test, as before), plus 5 validation tasks 50-54 drawn from the same distribution with their own
seed VAL_SEED. metaworld: 5 of ML45's 45 training classes, drawn once with VAL_SEED (a rule fixed
before any result), are held out of pretraining as validation classes. halfcheetahdir has only its
two directions, both pretraining and test tasks (as in Prompt-DT): it has no validation task and
takes halfcheetahvel's presets.

    env             base                         task parameter            reward per step
    halfcheetahvel  HalfCheetah-v5               target velocity v*        -|vx - v*| - 0.05 |a|^2
    halfcheetahdir  HalfCheetah-v5               direction d in {+1, -1}   d vx - 0.05 |a|^2
    antdir          Ant-v5 (27-D obs, no cfrc)   angle theta               (vx, vy).(cos, sin) + healthy - 0.5 |a|^2 - contact
    metaworld       MetaWorld ML45 (v3 classes)  the env class             MetaWorld's own, success in info

Locomotion rewards are computed from info['x_velocity'] / info['y_velocity'] (gymnasium's own
HalfCheetah control cost is 0.1, the meta-RL benchmarks use 0.05). `locomotion_reward` is the one
place the formulas live; the behaviour-policy trainer reuses it to relabel goals.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

ENV_NAMES = ("halfcheetahvel", "halfcheetahdir", "antdir", "metaworld")
TASK_SEED = 1234  # seeds the 50 sampled task parameters of halfcheetahvel / antdir, never changed
VAL_SEED = 2026  # seeds the validation tasks (new parameters, or metaworld's held-out classes), never changed
NUM_TASKS = 50
NUM_TEST = 5
NUM_VAL = 5


@dataclass(frozen=True)
class EnvSpec:
    name: str
    horizon: int  # max episode length
    obs_dim: int
    act_dim: int
    params: tuple  # task parameter per task index (floats; class names for metaworld)
    train_tasks: tuple[int, ...]  # pretraining tasks
    test_tasks: tuple[int, ...]  # finetuned and reported, never used for a choice
    val_tasks: tuple[int, ...] = ()  # finetuned for hyperparameter choices, never pretrained on or reported

    @property
    def finetune_tasks(self) -> tuple[int, ...]:
        """Tasks a finetuning script may adapt to: validation tasks, then test tasks."""
        return self.val_tasks + self.test_tasks

    @property
    def num_tasks(self) -> int:
        return len(self.params)


def _split(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    perm = rng.permutation(NUM_TASKS)
    return tuple(sorted(int(i) for i in perm[NUM_TEST:])), tuple(sorted(int(i) for i in perm[:NUM_TEST]))


def _make_spec(name: str) -> EnvSpec:
    if name == "halfcheetahvel":
        rng = np.random.default_rng(TASK_SEED)
        params = tuple(float(v) for v in rng.uniform(0.075, 3.0, NUM_TASKS))
        train, test = _split(rng)
        val = tuple(float(v) for v in np.random.default_rng(VAL_SEED).uniform(0.075, 3.0, NUM_VAL))
        return EnvSpec(name, 200, 17, 6, params + val, train, test, tuple(range(NUM_TASKS, NUM_TASKS + NUM_VAL)))
    if name == "halfcheetahdir":
        # Only two tasks exist; as in Prompt-DT both are used for pretraining and for testing.
        return EnvSpec(name, 200, 17, 6, (1.0, -1.0), (0, 1), (0, 1))
    if name == "antdir":
        rng = np.random.default_rng(TASK_SEED + 1)
        params = tuple(float(t) for t in rng.uniform(0.0, 2 * np.pi, NUM_TASKS))
        train, test = _split(rng)
        val = tuple(float(t) for t in np.random.default_rng(VAL_SEED + 1).uniform(0.0, 2 * np.pi, NUM_VAL))
        return EnvSpec(name, 200, 27, 8, params + val, train, test, tuple(range(NUM_TASKS, NUM_TASKS + NUM_VAL)))
    if name == "metaworld":
        from metaworld.env_dict import ML45_V3

        names = tuple(ML45_V3["train"]) + tuple(ML45_V3["test"])  # 45 train classes then 5 test classes
        val = tuple(sorted(int(i) for i in np.random.default_rng(VAL_SEED).choice(45, NUM_VAL, replace=False)))
        train = tuple(i for i in range(45) if i not in val)  # 40 pretraining classes
        return EnvSpec(name, 500, 39, 4, names, train, tuple(range(45, 50)), val)
    raise ValueError(f"unknown env {name!r}; choose one of {', '.join(ENV_NAMES)}")


_SPECS: dict[str, EnvSpec] = {}


def spec(name: str) -> EnvSpec:
    """The fixed description of an env family (raises a one-line ValueError for an unknown name)."""
    if name not in _SPECS:
        _SPECS[name] = _make_spec(name)
    return _SPECS[name]


def sample_params(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """n task parameters from the family's task *distribution* (used to train behaviour policies)."""
    if name == "halfcheetahvel":
        return rng.uniform(0.075, 3.0, n)
    if name == "halfcheetahdir":
        return rng.choice([1.0, -1.0], n)
    if name == "antdir":
        return rng.uniform(0.0, 2 * np.pi, n)
    raise ValueError(f"{name} has no continuous task distribution")


def locomotion_reward(name: str, param, feats, action):
    """Meta-RL reward from goal-free features (N, 3) = (vx, vy, goal-free bonus), works batched.

    The bonus is 0 for HalfCheetah and Ant's healthy reward + (negative) contact cost.
    """
    vx, vy, bonus = feats[..., 0], feats[..., 1], feats[..., 2]
    if name == "halfcheetahvel":
        return -np.abs(vx - param) - 0.05 * np.square(action).sum(-1)
    if name == "halfcheetahdir":
        return param * vx - 0.05 * np.square(action).sum(-1)
    if name == "antdir":
        return vx * np.cos(param) + vy * np.sin(param) + bonus - 0.5 * np.square(action).sum(-1)
    raise ValueError(f"{name} is not a locomotion env")


class TaskEnv(gym.Env):
    """One environment of a family whose task can be changed between episodes.

    `reset(seed=..., options={"task": i})` picks task i of the fixed list; `options={"param": p}`
    sets a raw task parameter instead (behaviour-policy training samples the whole distribution).
    Episodes end with truncated=True at the family's horizon. For metaworld, each episode's goal
    position is drawn from the class's own goal distribution with the reset seed, the agent's
    observation has the goal slot (last 3 entries) zeroed as in ML45, and info["policy_obs"] holds
    the goal-visible observation for metaworld's scripted policies.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, name: str, task: int = 0, render_mode: str | None = None):
        self.spec_ = spec(name)
        self.name, self.render_mode = name, render_mode  # "rgb_array": render() returns a frame (needs OpenGL)
        kw = {"render_mode": render_mode, "width": 240, "height": 240} if render_mode else {}
        s = self.spec_
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (s.obs_dim,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (s.act_dim,), np.float32)
        self._envs: dict = {}  # metaworld: one base env per class, built on first use
        self.t = 0
        self.task = task
        self.param = s.params[task]
        if name in ("halfcheetahvel", "halfcheetahdir"):
            self.base = gym.make("HalfCheetah-v5", **kw).unwrapped
        elif name == "antdir":
            self.base = gym.make("Ant-v5", include_cfrc_ext_in_observation=False, **kw).unwrapped
        else:
            self.base = None  # built at reset: a metaworld model takes ~0.25 s to load

    def _mw_env(self, task: int):
        if task not in self._envs:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS

            kw = {"render_mode": self.render_mode, "width": 240, "height": 240} if self.render_mode else {}
            env = ALL_V3_ENVIRONMENTS[self.spec_.params[task]](**kw)
            env._partially_observable = False  # the scripted policy needs the goal; we hide it below
            # step() clips obs to this cached space, built while the goal was hidden: rebuild it
            env.__dict__.pop("sawyer_observation_space", None)
            env._set_task_called = True
            env._freeze_rand_vec = False
            env.seeded_rand_vec = True  # goals come from env.np_random, which reset() seeds below
            self._envs[task] = env
        return self._envs[task]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "task" in options:
            self.task = int(options["task"])
            self.param = self.spec_.params[self.task]
        elif "param" in options:
            self.task, self.param = -1, float(options["param"])
        self.t = 0
        if self.name != "metaworld":
            obs, _ = self.base.reset(seed=seed)
            return obs, {}
        self.base = self._mw_env(self.task)
        # The class's own goal sampler (it rejection-samples invalid goals) on a generator seeded per
        # episode: the same seed gives the same goal and object positions.
        self.base.np_random = np.random.default_rng(seed)
        full, _ = self.base.reset()
        return self._hide_goal(full), {"policy_obs": full, "success": 0.0}

    def render(self):
        return self.base.render()

    @staticmethod
    def _hide_goal(full: np.ndarray) -> np.ndarray:
        obs = full.copy()
        obs[-3:] = 0.0
        return obs

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.t += 1
        truncated = self.t >= self.spec_.horizon
        if self.name == "metaworld":
            full, reward, _, _, info = self.base.step(action)
            info = {"policy_obs": full, "success": float(info["success"])}
            return self._hide_goal(full), float(reward), False, truncated, info
        obs, _, terminated, _, info = self.base.step(action)
        bonus = info.get("reward_survive", 0.0) + info.get("reward_contact", 0.0)
        feats = np.array([info["x_velocity"], info.get("y_velocity", 0.0), bonus])
        reward = float(locomotion_reward(self.name, self.param, feats, action))
        return obs, reward, bool(terminated), truncated, {"feats": feats}


def make_env(name: str, task: int) -> TaskEnv:
    """One env for (family, task index), e.g. make_env("antdir", spec("antdir").test_tasks[0])."""
    s = spec(name)
    if not 0 <= task < s.num_tasks:
        raise ValueError(f"{name} has tasks 0..{s.num_tasks - 1}, got {task}")
    return TaskEnv(name, task)


# Gymnasium ids of the four families (registered on import): gym.make("rft/AntDir-v0", task=35) is
# make_env("antdir", 35) behind gymnasium's checkers; Minari datasets (minari_io.py) name them, so
# MinariDataset.recover_environment() rebuilds the env. Each episode truncates at the family's horizon.
GYM_IDS = {"halfcheetahvel": "rft/HalfCheetahVel-v0", "halfcheetahdir": "rft/HalfCheetahDir-v0",
           "antdir": "rft/AntDir-v0", "metaworld": "rft/MetaWorldML45-v0"}
for _name, _id in GYM_IDS.items():
    if _id not in gym.registry:
        gym.register(_id, entry_point="common.envs:TaskEnv", kwargs={"name": _name})


class VecEnv:
    """Steps many (task, episode) pairs at once in this process (on 2 cores a plain loop over
    unwrapped envs beats subprocess workers). Finished envs are frozen until reset: their rows
    return reward 0 and done stays True, so a fixed batch of episodes can be run to completion.
    """

    def __init__(self, name: str, num_envs: int, render_first: bool = False):
        self.name, self.num_envs = name, num_envs
        self.spec = spec(name)
        # render_first: env 0 renders frames (rgb_array) for a video of its episodes
        self.envs = [TaskEnv(name, render_mode="rgb_array" if render_first and i == 0 else None) for i in range(num_envs)]
        self.done = np.ones(num_envs, dtype=bool)
        self.obs = np.zeros((num_envs, self.spec.obs_dim))
        self.policy_obs = np.zeros((num_envs, self.spec.obs_dim))  # metaworld: goal visible
        self.feats = np.zeros((num_envs, 3))

    def reset_one(self, i: int, seed: int, task: int | None = None, param: float | None = None):
        opts = {"task": task} if task is not None else {"param": param}
        self.obs[i], info = self.envs[i].reset(seed=seed, options=opts)
        self.policy_obs[i] = info.get("policy_obs", self.obs[i])
        self.done[i] = False

    def reset(self, tasks, seeds) -> np.ndarray:
        """Start one episode per env: env i runs task tasks[i] with reset seed seeds[i]."""
        assert len(tasks) == len(seeds) == self.num_envs
        for i, (task, seed) in enumerate(zip(tasks, seeds)):
            self.reset_one(i, int(seed), task=int(task))
        return self.obs.copy()

    def step(self, actions: np.ndarray):
        """Returns obs, reward, terminated, truncated, success (each with a row per env)."""
        n = self.num_envs
        reward, term, trunc, success = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n)
        for i in np.flatnonzero(~self.done):
            obs, reward[i], term[i], trunc[i], info = self.envs[i].step(actions[i])
            self.obs[i] = obs
            if "feats" in info:
                self.feats[i] = info["feats"]
            else:
                self.policy_obs[i] = info["policy_obs"]
                success[i] = info["success"]
        self.done |= term | trunc
        return self.obs.copy(), reward, term, trunc, success
