"""Speed of the two hot loops, each against a reference measured in the same process and run:

    python benchmark/speed.py --what train   # a pretraining step vs the machine's matmul peak
    python benchmark/speed.py --what eval    # common/rollout.py vs the raw simulator
    python benchmark/speed.py --what algos --env antdir --threads 1   # each algorithm's step vs SFT's

train: FLOP/s of one forward + backward + AdamW step of the Prompt-DT at the given scale and batch
       (model FLOPs: 6 x matmul parameters x tokens + causal attention), against a large square
       fp32 matmul on the same threads.
eval:  evaluate() on the test tasks x --episodes with the pretrained model (or a random one of the
       same shape), against the same episodes with uniform random actions and no model.
algos: train time per gradient step of each finetuning script (its own loop, the env's presets, one test
       task, --steps steps, critic warm-ups and one-off tables excluded as in result.json), the scripts
       interleaved --repeats times in one process so that they share whatever load the machine has; the
       median per algorithm and its ratio to SFT's (Table 4's lower half, measured fairly). Needs the
       task's data and the pretrained checkpoint.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.envs import spec  # noqa: E402
from common.model import ModelConfig, PromptDT, default_checkpoint, load_pretrained  # noqa: E402
from common.rollout import evaluate, random_rollout_time  # noqa: E402


@dataclass
class Args:
    what: Literal["train", "eval", "algos"] = "train"
    """which loop to measure"""
    env: str = "halfcheetahvel"
    """env family (sets the token dimensions, and the simulator for eval)"""
    n_layer: int = 3
    """transformer blocks"""
    n_embd: int = 128
    """width"""
    n_head: int = 1
    """heads"""
    batch_size: int = 64
    """train: windows per step"""
    steps: int = 30
    """train: timed steps (after 5 warm-up steps)"""
    episodes: int = 10
    """eval: episodes per test task"""
    tuning: str = "full"
    """algos: the finetuning configuration"""
    repeats: int = 3
    """algos: rounds of the interleaved scripts"""
    data_dir: str = "data"
    """algos: the datasets"""
    matmul: int = 2048
    """size of the square matmul that defines the peak"""
    threads: int = 2
    """torch threads"""
    cuda: bool = True
    """use CUDA when available"""


def matmul_peak(n: int, device) -> float:
    x, y = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        x @ y
    sync(device)
    reps, t0 = 10, time.perf_counter()
    for _ in range(reps):
        x @ y
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_speed(args: Args, device) -> None:
    sp = spec(args.env)
    cfg = ModelConfig(sp.obs_dim, sp.act_dim, sp.horizon, args.n_layer, args.n_embd, args.n_head, dropout=0.0)
    model = PromptDT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B, K, P = args.batch_size, cfg.K, cfg.prompt_len
    f = dict(device=device)
    mk = lambda L: {"states": torch.randn(B, L, sp.obs_dim, **f), "actions": torch.rand(B, L, sp.act_dim, **f),  # noqa: E731
                    "rtg": torch.randn(B, L, **f), "timesteps": torch.randint(0, sp.horizon, (B, L), **f),
                    "mask": torch.ones(B, L, **f)}
    b, p = mk(K), mk(P)

    def step():
        pred = model(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"], p)
        loss = ((pred - b["actions"]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    T, d = 3 * (K + P), cfg.n_embd
    mm = sum(q.numel() for n, q in model.named_parameters() if q.dim() == 2 and "timestep" not in n)
    flops = 6 * mm * B * T + 3 * cfg.n_layer * 2 * B * T * T * d  # causal attention: half of 4 B T^2 d, x3 for fwd+bwd
    peak = matmul_peak(args.matmul, device)
    print(f"| {args.env} | {args.n_layer}x{args.n_embd}x{args.n_head} | {B} | {dt * 1e3:.1f} ms | "
          f"{flops / dt / 1e9:.1f} GFLOP/s | {peak / 1e9:.1f} GFLOP/s | {flops / dt / peak:.2f} |")


def eval_speed(args: Args, device) -> None:
    sp = spec(args.env)
    path = default_checkpoint(args.env, args.n_layer, args.n_embd, args.n_head)
    if os.path.exists(path):
        model = load_pretrained(path, args.env, sp.obs_dim, sp.act_dim, device)
    else:
        model = PromptDT(ModelConfig(sp.obs_dim, sp.act_dim, sp.horizon, args.n_layer, args.n_embd, args.n_head)).to(device)
    model.eval()
    B = len(sp.test_tasks) * args.episodes
    P = model.cfg.prompt_len
    prompt = {"states": torch.zeros(B, P, sp.obs_dim, device=device), "actions": torch.zeros(B, P, sp.act_dim, device=device),
              "rtg": torch.zeros(B, P, device=device), "timesteps": torch.zeros(B, P, dtype=torch.long, device=device),
              "mask": torch.ones(B, P, device=device)}
    model_time = [0.0]

    def act(s, a, r, t, m):
        t0 = time.perf_counter()
        out = model(s, a, r, t, m, prompt, last_only=True)
        sync(device)
        model_time[0] += time.perf_counter() - t0
        return out

    ev = evaluate(act, args.env, sp.test_tasks, args.episodes, np.zeros(len(sp.test_tasks)), model.cfg.K, device)
    raw, n = random_rollout_time(args.env, sp.test_tasks, args.episodes)
    steps = int(ev["lengths"].sum())
    print(f"| {args.env} | {len(sp.test_tasks)} x {args.episodes} | {steps} | {ev['time_s']:.2f} s | "
          f"{model_time[0]:.2f} s | {ev['time_s'] - model_time[0]:.2f} s | {raw:.2f} s ({n} steps) | "
          f"{ev['time_s'] / raw * n / steps:.2f} | {(ev['time_s'] - model_time[0]) / raw * n / steps:.2f} |")


def algo_speed(args: Args) -> None:
    import importlib
    import tempfile

    from common.flags import ALGOS

    times = {a: [] for a in ALGOS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for algo in ALGOS:
                mod = importlib.import_module(algo)
                res = mod.main(mod.Args(env=args.env, tuning=args.tuning, tasks=(spec(args.env).test_tasks[0],),
                                        total_steps=args.steps, eval_every=args.steps, eval_episodes=1,
                                        data_dir=args.data_dir, run_dir=tmp, run_name=f"{algo}_{rep}",
                                        threads=args.threads, cuda=args.cuda, save_model="none"))
                times[algo].append(res["train_time_s"] / args.steps)
    ref = np.median(times["sft"])
    print(f"\n| algorithm | ms per step (median of {args.repeats}) | relative to SFT |\n|---|---|---|")
    for algo in ALGOS:
        print(f"| {algo} | {np.median(times[algo]) * 1e3:.0f} | {np.median(times[algo]) / ref:.2f} |")


if __name__ == "__main__":
    args = tyro.cli(Args)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    if args.what == "algos":
        algo_speed(args)
    else:
        train_speed(args, device) if args.what == "train" else eval_speed(args, device)
