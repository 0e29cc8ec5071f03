"""Pretrain a Prompt Decision Transformer on the pretraining tasks' expert data (paper eq. 2).

    python pretrain_pdt.py --env halfcheetahvel --seed 1

Each sample is a K-step window of a pretraining task's trajectory, behind a K*-step prompt: a random
segment of another trajectory of the same task (Prompt-DT's stochastic prompt). The loss is the
action MSE over the window. Every --eval-every steps the model is evaluated zero-shot on the test
tasks (prompt and target return from each test task's first --num-trajs expert trajectories, as the
finetuning scripts do). Training state is saved in <run-dir>/<run-name>/ at every eval, so a rerun
after a kill resumes; the checkpoint (config + weights + state normalisation) is written at the end,
to <run-dir>/<run-name>/model.pt, or to --out. The finetuning scripts look for pretrained/<env>.pt
(kept in git); replacing it takes `--out pretrained/<env>.pt --overwrite`, so no experiment replaces
a shipped checkpoint by accident.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from common.cli import run as cli
from common.data import load_trajectories, pack, sample_prompts, sample_windows, state_stats
from common.envs import spec
from common.files import atomic_torch_save, atomic_write_json, check_folder, check_writable, lock_folder
from common.model import ModelConfig, PromptDT, num_params
from common.rollout import evaluate, task_prompt_and_target


@dataclass
class Args:
    env: Literal["halfcheetahvel", "halfcheetahdir", "antdir", "metaworld"] = "halfcheetahvel"
    """env family"""
    seed: int = 1
    """seed of initialisation and batch sampling"""
    total_steps: int = 10_000
    """gradient steps"""
    batch_size: int = 64
    """windows per gradient step"""
    lr: float = 3e-4
    """AdamW peak learning rate (linear warmup, then cosine decay to lr/10)"""
    warmup_steps: int = 500
    """learning-rate warmup steps"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    grad_clip: float = 0.25
    """gradient-norm clip (as in DT)"""
    n_layer: int = 3
    """transformer blocks (the paper's scales: 3 to 48)"""
    n_embd: int = 128
    """embedding width (128 to 256)"""
    n_head: int = 1
    """attention heads (1 to 16)"""
    K: int = 20
    """steps of history"""
    prompt_len: int = 5
    """K*, steps of the trajectory prompt"""
    dropout: float = 0.0
    """dropout (0: on a CPU its random masks cost ~16% of a step; the expert data are large)"""
    eval_every: int = 2_000
    """steps between zero-shot evaluations (and resumable saves)"""
    eval_episodes: int = 10
    """episodes per test task and evaluation"""
    num_trajs: int = 50
    """test-task trajectories that give the eval prompt and target return (the finetuning default)"""
    data_dir: str = "data"
    """dataset root (made by collect_data.py)"""
    run_dir: str = "runs"
    """where <run-name>/ (resumable state, eval log) goes"""
    out: str = ""
    """checkpoint path (default: <run-dir>/<run-name>/model.pt; the finetuning scripts' default is
    pretrained/<env>.pt, or pretrained/<env>_l<L>_e<E>_h<H>.pt at another scale)"""
    overwrite: bool = False
    """replace an existing --out checkpoint"""
    train_tasks: int = -1
    """use only the first N pretraining tasks (-1: all; small values are for tests)"""
    train_trajs: int = -1
    """trajectories per pretraining task (-1: all)"""
    threads: int = 0
    """torch CPU threads (0: torch's default; use 1 per process when running two)"""
    cuda: bool = True
    """use CUDA when torch sees a GPU"""
    track: bool = False
    """log to Weights & Biases (offline-safe: WANDB_MODE=offline works without a network)"""
    wandb_project: str = "rft-agents"
    """wandb project"""


NOT_TRAINING = ("threads", "cuda", "track", "wandb_project", "out", "overwrite", "data_dir", "run_dir")  # may change on resume


def check_args(args: Args) -> None:
    """One-line errors for flags out of range, before anything is loaded or written."""
    for k in ("total_steps", "batch_size", "eval_every", "eval_episodes", "num_trajs", "n_layer", "n_embd", "n_head",
              "K", "prompt_len", "warmup_steps"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(args, k)}")
    if not args.lr > 0 or not args.grad_clip > 0 or args.weight_decay < 0 or args.threads < 0:
        raise ValueError("--lr and --grad-clip must be positive, --weight-decay and --threads 0 or more")
    if not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.n_embd % args.n_head:
        raise ValueError(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}; each head gets "
                         f"n_embd / n_head channels")
    for k in ("train_tasks", "train_trajs"):
        if getattr(args, k) == 0 or getattr(args, k) < -1:
            raise ValueError(f"--{k.replace('_', '-')} must be -1 (all) or at least 1, got {getattr(args, k)}")


def main(args: Args) -> dict:
    check_args(args)
    sp = spec(args.env)
    run_name = f"pretrain_{args.env}_l{args.n_layer}_e{args.n_embd}_h{args.n_head}_s{args.seed}"
    run_path = os.path.join(args.run_dir, run_name)
    out = args.out or os.path.join(run_path, "model.pt")
    if args.out and os.path.isdir(out):
        raise ValueError(f"--out {out} is a folder; give the checkpoint's file path, e.g. {os.path.join(out, 'model.pt')}")
    if args.out and os.path.exists(out) and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    if args.out:
        check_writable(out, "--out")  # before the data and the training: a read-only or missing place fails now
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)

    # data: the pretraining tasks' expert trajectories; the test tasks give only prompts and targets
    tasks = list(sp.train_tasks if args.train_tasks < 0 else sp.train_tasks[:args.train_tasks])
    n = None if args.train_trajs < 0 else args.train_trajs
    trajs, traj_task = [], []
    for task in tqdm(tasks, desc="loading", leave=False):
        ts = load_trajectories(args.env, task, "expert", args.data_dir, n)
        trajs += ts
        traj_task += [task] * len(ts)
    packed = pack(trajs)
    traj_task = np.array(traj_task)
    same_task = {t: np.flatnonzero(traj_task == t) for t in tasks}  # prompt candidates per task
    test = [task_prompt_and_target(load_trajectories(args.env, t, "expert", args.data_dir, args.num_trajs),
                                   args.prompt_len) for t in sp.test_tasks]

    cfg = ModelConfig(sp.obs_dim, sp.act_dim, sp.horizon, args.n_layer, args.n_embd, args.n_head, args.K,
                      args.prompt_len, args.dropout)
    model = PromptDT(cfg).to(device)
    mean, std = state_stats(trajs)
    model.state_mean.copy_(torch.as_tensor(mean))
    model.state_std.copy_(torch.as_tensor(std))
    model.rtg_scale.fill_(float(np.abs([t["rewards"].sum() for t in trajs]).max()))  # returns-to-go ~ O(1)
    decay = [p for name, p in model.named_parameters() if p.dim() >= 2 and "embed" not in name]
    no_decay = [p for name, p in model.named_parameters() if p.dim() < 2 or "embed" in name]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    lr_at = lambda s: args.lr * min((s + 1) / args.warmup_steps, 0.1 + 0.9 * 0.5 * (  # noqa: E731
        1 + np.cos(np.pi * min(1.0, max(0, s - args.warmup_steps) / max(1, args.total_steps - args.warmup_steps)))))
    print(f"{run_name}: {num_params(model):,} parameters, {len(trajs)} trajectories of {len(tasks)} tasks, "
          f"device {device}")

    # room for the checkpoint (weights), the resume state (weights and AdamW's two moments, at least twice:
    # the atomic write keeps the old file until the new one is whole) and the log
    size = 4 * num_params(model)
    check_folder(run_path, "--run-dir", 7 * size + 1_000_000 + (0 if args.out else size))
    if args.out:
        check_writable(out, "--out", size + 1_000_000)
    # resume (the lock keeps a second process with the same run name out)
    lock = lock_folder(run_path, "choose another --run-dir or --seed")  # noqa: F841 (held until exit)
    step, log = 0, []
    state_path = os.path.join(run_path, "state.pt")
    if os.path.exists(state_path):
        st = torch.load(state_path, map_location=device, weights_only=True)
        if {k: v for k, v in st["args"].items() if k not in NOT_TRAINING} != {
                k: v for k, v in dataclasses.asdict(args).items() if k not in NOT_TRAINING}:
            raise ValueError(f"{state_path} was made with other flags; delete {run_path} or use another --run-dir")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        step, log = st["step"], st["log"]
        print(f"resumed from {state_path} at step {step}")
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project, name=run_name, config=dataclasses.asdict(args), resume="allow",
                   id=run_name)

    def to_t(b: dict) -> dict:
        return {k: torch.as_tensor(b[k], device=device, dtype=torch.long if k == "timesteps" else torch.float32)
                for k in ("states", "actions", "rtg", "timesteps", "mask")}

    def zero_shot() -> dict:
        model.eval()
        prompts = {k: torch.as_tensor(np.stack([p[k] for p, _ in test]).repeat(args.eval_episodes, 0), device=device,
                                      dtype=torch.long if k == "timesteps" else torch.float32) for k in test[0][0]}
        act = lambda s, a, r, t, m: model(s, a, r, t, m, prompts, last_only=True)  # noqa: E731
        ev = evaluate(act, args.env, sp.test_tasks, args.eval_episodes, [g for _, g in test], args.K, device)
        model.train()
        res = {"step": step, "return": float(ev["returns"].mean()),
               "per_task": {int(t): float(r) for t, r in zip(sp.test_tasks, ev["returns"].mean(1))},
               "eval_s": ev["time_s"]}
        if args.env == "metaworld":
            res["success"] = float(ev["success"].mean())
            res["success_per_task"] = {int(t): float(s) for t, s in zip(sp.test_tasks, ev["success"].mean(1))}
        return res

    def save_state():
        atomic_torch_save({"args": dataclasses.asdict(args), "model": model.state_dict(), "opt": opt.state_dict(),
                           "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "step": step,
                           "log": log}, state_path)

    model.train()
    t0, t_start, losses = time.perf_counter(), step, []
    bar = tqdm(total=args.total_steps, initial=step, desc="pretrain", unit="step", mininterval=2.0)
    while step < args.total_steps:
        b = sample_windows(packed, args.K, args.batch_size, rng)
        prompt_traj = np.array([rng.choice(same_task[traj_task[i]]) for i in b["traj"]])
        p = sample_prompts(packed, prompt_traj, args.prompt_len, rng)
        b, p = to_t(b), to_t(p)
        for g in opt.param_groups:
            g["lr"] = float(lr_at(step))  # a Python float: the state file loads with weights_only=True
        pred = model(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"], p)
        # eq. 2: action MSE over the K steps (padding excluded)
        loss = (((pred - b["actions"]) ** 2).mean(-1) * b["mask"]).sum() / b["mask"].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        losses.append(loss.item())
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(f"loss became {losses[-1]} at step {step}; lower --lr")
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", sps=f"{(step - t_start) / (time.perf_counter() - t0):.1f}")
        if step % args.eval_every == 0 or step == args.total_steps:
            ev = zero_shot()
            ev["loss"] = float(np.mean(losses[-args.eval_every:]))
            log.append(ev)
            msg = f"step {step}: loss {ev['loss']:.4f}, zero-shot return {ev['return']:.1f}"
            bar.write(msg + (f", success {ev['success']:.2f}" if "success" in ev else ""))
            if args.track:
                wandb.log({"loss": ev["loss"], "zero_shot/return": ev["return"], **{
                    f"zero_shot/task_{t}": r for t, r in ev["per_task"].items()}}, step=step)
            save_state()
    bar.close()
    if not log or log[-1]["step"] != step:  # e.g. resumed after the last eval of a finished run
        log.append(zero_shot())
    ckpt = {"env": args.env, "config": model.config_dict(), "state_dict": model.state_dict(),
            "pretrain_args": dataclasses.asdict(args), "pretrain_tasks": tasks, "zero_shot": log[-1], "log": log}
    atomic_torch_save(ckpt, out)
    atomic_write_json(os.path.join(run_path, "log.json"), log)
    print(f"saved {out}; zero-shot return {log[-1]['return']:.1f} per test task "
          + ", ".join(f"{t}: {r:.1f}" for t, r in log[-1]["per_task"].items()))
    if args.track:
        wandb.finish()
    return ckpt


if __name__ == "__main__":
    cli(main, Args)
