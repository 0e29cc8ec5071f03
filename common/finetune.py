"""Run bookkeeping shared by the seven finetuning scripts: the core flags, per-task data and policy,
evaluation, and the result file. What makes an algorithm (its loss, critic and update) is in its
own script; this file only does what every one of them does identically.

Protocol (PROTOCOL.md): for every test task, start from the pretrained model, finetune on the
task's first --num-trajs trajectories, evaluate zero-shot and every --eval-every steps with the same
fixed eval seeds, and report zero-shot, best (the best evaluation after finetuning began, the
paper's choice) and final. <run-dir>/<run-name>/result.json is written atomically at the end.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from common.data import QUALITIES, gather, load_trajectories, pack, sample_windows, sparsify
from common.envs import spec
from common.model import default_checkpoint, load_pretrained, num_params
from common.rollout import evaluate, task_prompt_and_target
from common.tuning import TunedPolicy, format_bytes

DEFAULT_LR = {"prompt": 1e-2, "lora": 1e-3, "decorator": 3e-4, "full": 1e-4}


@dataclass
class FinetuneArgs:
    env: Literal["halfcheetahvel", "halfcheetahdir", "antdir", "metaworld"] = "halfcheetahvel"
    """env family"""
    tuning: Literal["prompt", "lora", "decorator", "full"] = "full"
    """finetuning configuration (paper section 3.2)"""
    seed: int = 1
    """seed of everything random in the run"""
    quality: Literal["medium", "expert"] = "expert"
    """finetuning data regime"""
    num_trajs: int = 50
    """finetuning trajectories per test task (the first N of its dataset)"""
    sparse_reward: bool = False
    """move each trajectory's rewards to its last step (paper section 6)"""
    total_steps: int = 1000
    """gradient steps per test task"""
    eval_every: int = 250
    """steps between evaluations"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    batch_size: int = 64
    """K-step windows per gradient step"""
    weight_decay: float = 1e-4
    """AdamW weight decay of the policy's trainable parameters"""
    grad_clip: float = 0.25
    """gradient-norm clip of the policy's update (as in pretraining)"""
    lr: float = -1.0
    """learning rate of the policy's trainable parameters (-1: per tuning, prompt 1e-2, lora 1e-3,
    decorator 3e-4, full 1e-4)"""
    tasks: tuple[int, ...] = ()
    """test tasks to adapt to (default: all of the env's test tasks)"""
    lora_rank: int = 12
    """LoRA rank (12 gives the paper's 0.19 MB at the default scale)"""
    lora_alpha: float = 12.0
    """LoRA scale numerator: the update is (alpha / rank) B A x"""
    decorator_bound: float = 1.0
    """the decorator's residual action is bound * tanh(.)"""
    pretrained: str = ""
    """pretrained checkpoint (default: where pretrain_pdt.py saves, pretrained/<env>.pt)"""
    data_dir: str = "data"
    """dataset root (made by collect_data.py)"""
    run_dir: str = "runs"
    """results go to <run-dir>/<run-name>/result.json"""
    run_name: str = ""
    """default: <algo>_<env>_<tuning>_<quality>_n<num-trajs>[_sparse]_s<seed>"""
    threads: int = 0
    """torch CPU threads (0: torch's default; 1 per process when running several)"""
    cuda: bool = True
    """use CUDA when torch sees a GPU"""
    track: bool = False
    """log to Weights & Biases (WANDB_MODE=offline works without a network)"""
    wandb_project: str = "rft-agents"
    """wandb project"""


def cli(main, args_type) -> None:
    """Parse the flags with tyro and run main; bad input (a missing file, a flag out of range, a NaN
    loss) ends with one line that names the fix instead of a traceback."""
    import tyro

    args = tyro.cli(args_type)
    try:
        main(args)
    except (FileNotFoundError, ValueError, RuntimeError, FloatingPointError) as e:
        raise SystemExit(f"error: {e}") from None


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the valid (mask 1) steps of a batch of windows."""
    return (x * mask).sum() / mask.sum()


class Run:
    """One finetuning run over the test tasks (see the module doc)."""

    def __init__(self, args: FinetuneArgs, algo: str, name_suffix: str = ""):
        self.args, self.algo = args, algo
        self.sp = spec(args.env)
        bad = [t for t in args.tasks if t not in self.sp.test_tasks]
        if bad:
            raise ValueError(f"--tasks {bad} are not test tasks of {args.env}; choose from {list(self.sp.test_tasks)}")
        if args.quality not in QUALITIES:
            raise ValueError(f"unknown --quality {args.quality!r}; choose one of {', '.join(QUALITIES)}")
        for k in ("num_trajs", "total_steps", "eval_every", "eval_episodes", "batch_size"):
            if getattr(args, k) < 1:
                raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(args, k)}")
        self.tasks = list(args.tasks) or list(self.sp.test_tasks)
        self.lr = args.lr if args.lr > 0 else DEFAULT_LR[args.tuning]
        self.name = args.run_name or (f"{algo}_{args.env}_{args.tuning}_{args.quality}_n{args.num_trajs}"
                                      f"{'_sparse' if args.sparse_reward else ''}{name_suffix}_s{args.seed}")
        self.path = os.path.join(args.run_dir, self.name, "result.json")
        if args.threads:
            torch.set_num_threads(args.threads)
        self.device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
        ckpt = args.pretrained or default_checkpoint(args.env)
        self.model = load_pretrained(ckpt, args.env, self.sp.obs_dim, self.sp.act_dim, self.device)
        self.model.requires_grad_(False)
        # every task's data are loaded up front, so a bad flag fails before any training
        self.data = {t: self._task_data(t) for t in self.tasks}
        self.results, self.t0, self.step_time = [], time.perf_counter(), 0.0
        self.trainable = None
        if args.track:
            import wandb

            wandb.init(project=args.wandb_project, name=self.name, config={**dataclasses.asdict(args), "algo": algo})

    def _task_data(self, task: int) -> dict:
        a = self.args
        trajs = load_trajectories(a.env, task, a.quality, a.data_dir, a.num_trajs)
        if a.sparse_reward:
            trajs = [sparsify(t) for t in trajs]
        prompt, target = task_prompt_and_target(trajs, self.model.cfg.prompt_len)
        returns = np.array([t["rewards"].sum() for t in trajs])
        return {"trajs": trajs, "packed": pack(trajs), "prompt": prompt, "target": target, "returns": returns}

    def seed(self, task: int) -> np.random.Generator:
        """Seeds torch for this task's networks and returns its batch-sampling generator."""
        torch.manual_seed(self.args.seed * 1000 + task)
        return np.random.default_rng([self.args.seed, task])

    def policy(self, task: int) -> TunedPolicy:
        a = self.args
        pol = TunedPolicy(self.model, a.tuning, self.data[task]["prompt"], a.lora_rank, a.lora_alpha,
                          decorator_bound=a.decorator_bound).to(self.device)
        n, nbytes = pol.trainable_size()
        if self.trainable is None:
            self.trainable = (n, nbytes)
            print(f"{self.name}: {a.tuning} tuning trains {n:,} parameters ({format_bytes(nbytes)}), lr {self.lr:g}")
        return pol

    def sample(self, task: int, rng: np.random.Generator) -> dict:
        """A batch of K-step windows of the task's data as tensors (see common.data.gather; also
        next_states and terminals for critics, and traj, the trajectory of each window)."""
        b = sample_windows(self.data[task]["packed"], self.model.cfg.K, self.args.batch_size, rng)
        return {k: torch.as_tensor(v, device=self.device,
                                   dtype=torch.long if k in ("timesteps", "traj", "window") else torch.float32)
                for k, v in b.items()}

    @torch.no_grad()
    def window_table(self, policy, task: int, last_only: bool = False, batch_size: int = 256) -> torch.Tensor:
        """policy's actions (N, K, act) for every K-step window of the task's data (window i ends at
        flat step i, exactly as sample() builds it): a frozen policy's outputs for any batch are then
        a lookup, table[batch["window"]], instead of a second forward pass per step. last_only: (N, act),
        the action at every step with its full K-step history, as the policy acts when deployed."""
        p, K = self.data[task]["packed"], self.model.cfg.K
        was_training = policy.training
        policy.eval()
        traj = np.repeat(np.arange(len(p["lengths"])), p["lengths"])
        end = p["timesteps"] + 1
        out = []
        for i in range(0, len(traj), batch_size):
            b = gather(p, traj[i:i + batch_size], end[i:i + batch_size], K)
            t = {k: torch.as_tensor(v, device=self.device, dtype=torch.long if k == "timesteps" else torch.float32)
                 for k, v in b.items()}
            out.append(policy(t["states"], t["actions"], t["rtg"], t["timesteps"], t["mask"], last_only=last_only))
        policy.train(was_training)
        return torch.cat(out)

    @torch.no_grad()
    def evaluate(self, policy: TunedPolicy, task: int) -> dict:
        was_training = policy.training
        policy.eval()
        act = lambda s, a, r, t, m: policy(s, a, r, t, m, last_only=True)  # noqa: E731
        ev = evaluate(act, self.args.env, [task], self.args.eval_episodes, [self.data[task]["target"]],
                      self.model.cfg.K, self.device)
        policy.train(was_training)
        out = {"return": float(ev["returns"].mean())}
        if self.args.env == "metaworld":
            out["success"] = float(ev["success"].mean())
        return out

    def check(self, loss: torch.Tensor, step: int, task: int) -> float:
        """A NaN or inf loss stops the run (and no result file is written)."""
        v = float(loss.detach())
        if not np.isfinite(v):
            raise FloatingPointError(f"{self.algo}: loss is {v} at step {step} of task {task}; no result written. "
                                     f"Lower --lr or check the data")
        return v

    def train(self, task: int, policy: TunedPolicy, update, rng: np.random.Generator) -> None:
        """The loop every algorithm shares: zero-shot eval, then `update(batch, step) -> dict of
        logged floats` --total-steps times, evaluating every --eval-every steps."""
        a = self.args
        curve = [{"step": 0, **self.evaluate(policy, task)}]
        print(f"task {task}: zero-shot return {curve[0]['return']:.1f}")
        t0, logs = time.perf_counter(), {}
        for step in range(1, a.total_steps + 1):
            logs = update(self.sample(task, rng), step)
            if step % a.eval_every == 0 or step == a.total_steps:
                self.step_time += time.perf_counter() - t0
                curve.append({"step": step, **self.evaluate(policy, task), **logs})
                done = len(self.results) * a.total_steps + step  # steps of all tasks so far
                sps = done / self.step_time if self.step_time else 0
                left = len(self.tasks) * a.total_steps - done
                print(f"task {task} step {step}/{a.total_steps}: return {curve[-1]['return']:.1f} "
                      + " ".join(f"{k} {v:.4g}" for k, v in logs.items())
                      + f" | {sps:.1f} steps/s, ETA {left / max(sps, 1e-9) / 60:.1f} min", flush=True)
                if a.track:
                    import wandb

                    wandb.log({f"task_{task}/{k}": v for k, v in curve[-1].items() if k != "step"})
                t0 = time.perf_counter()
        key = "success" if a.env == "metaworld" else "return"
        best = max(curve[1:], key=lambda c: c[key])
        self.results.append({"task": task, "zero_shot": curve[0]["return"], "best": best["return"],
                             "final": curve[-1]["return"], "curve": curve,
                             **({"zero_shot_success": curve[0]["success"], "best_success": best["success"],
                                 "final_success": curve[-1]["success"]} if a.env == "metaworld" else {})})

    def finish(self) -> dict:
        a = self.args
        mean = lambda k: float(np.mean([r[k] for r in self.results]))  # noqa: E731
        res = {"algo": self.algo, "config": {**dataclasses.asdict(a), "algo": self.algo, "lr": self.lr},
               "zero_shot": mean("zero_shot"), "best": mean("best"), "final": mean("final"),
               "tasks": self.results, "wall_time_s": time.perf_counter() - self.t0,
               "train_time_s": self.step_time, "trainable_params": self.trainable[0],
               "trainable_bytes": self.trainable[1],
               "model": {"n_layer": self.model.cfg.n_layer, "n_embd": self.model.cfg.n_embd,
                         "n_head": self.model.cfg.n_head, "params": num_params(self.model)}}
        if a.env == "metaworld":
            res.update({k: mean(k) for k in ("zero_shot_success", "best_success", "final_success")})
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path + ".tmp", "w") as f:
            json.dump(res, f, indent=1)
        os.replace(self.path + ".tmp", self.path)
        print(f"{self.name}: zero-shot {res['zero_shot']:.1f}, best {res['best']:.1f}, final {res['final']:.1f} "
              f"({res['wall_time_s'] / 60:.1f} min) -> {self.path}")
        if a.track:
            import wandb

            wandb.log({"zero_shot": res["zero_shot"], "best": res["best"], "final": res["final"]})
            wandb.finish()
        return res
