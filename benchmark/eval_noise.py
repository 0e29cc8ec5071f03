"""How many episodes an evaluation needs: the per-episode spread of returns (and MetaWorld success) on an
env's validation tasks, zero-shot and after a short SFT, and the episodes per evaluation that bring a
task's 95% half-width down to a target.

    python benchmark/eval_noise.py --env antdir --episodes 50 --steps 200

Targets: a task's 95% half-width t * sd / sqrt(n) at most 10% of the env's expert-minus-random range
(locomotion; the range from behaviour/<env>.pt's calibration on these tasks) and at most 0.15 success on
MetaWorld. Only validation tasks and validation episodes are used: nothing here touches a test task.
Prints a markdown table and writes it with the raw numbers to --out (JSON).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common.data import load_behaviour, load_trajectories, pack, sample_windows  # noqa: E402
from common.files import atomic_write_json  # noqa: E402
from common.envs import spec  # noqa: E402
from common.tuning import DEFAULT_LR  # noqa: E402
from common.model import default_checkpoint, load_pretrained  # noqa: E402
from common.rollout import eval_seeds, evaluate, task_prompt_and_target  # noqa: E402
from common.tuning import TunedPolicy  # noqa: E402
from sft import sft_loss  # noqa: E402  (eq. 3, the script's own)


def episodes_needed(sd: float, half_width: float) -> int:
    """Smallest n with t_{0.975, n-1} sd / sqrt(n) <= half_width."""
    for n in range(2, 100_000):
        if stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) <= half_width:
            return n
    return 100_000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="antdir", choices=["halfcheetahvel", "antdir", "metaworld"])
    ap.add_argument("--episodes", type=int, default=50, help="validation episodes per task and point")
    ap.add_argument("--steps", type=int, default=200, help="SFT steps (full tuning) before the second point")
    ap.add_argument("--tasks", type=int, nargs="*", default=None, help="validation tasks (default: all)")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="", help="JSON output (default: print only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sp = spec(args.env)
    tasks = args.tasks or list(sp.val_tasks)
    if any(t not in sp.val_tasks for t in tasks):
        raise SystemExit(f"error: --tasks must be validation tasks of {args.env}: {list(sp.val_tasks)}")
    model = load_pretrained(default_checkpoint(args.env), args.env, sp.obs_dim, sp.act_dim)
    model.requires_grad_(False)
    beh = load_behaviour(os.path.join(ROOT, "behaviour", f"{args.env}.pt"))
    rows = []
    for task in tasks:
        trajs = load_trajectories(args.env, task, "expert", args.data_dir, 50)
        prompt, target = task_prompt_and_target(trajs, model.cfg.prompt_len)
        expert = float(np.mean([t["rewards"].sum() for t in trajs]))
        span = expert - float(beh["random_return"][task])
        policy = TunedPolicy(model, "full", prompt)
        torch.manual_seed(task)
        rng, packed = np.random.default_rng(task), pack(trajs)
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=DEFAULT_LR["full"], weight_decay=1e-4)
        for point in ("zero-shot", f"SFT {args.steps}"):
            if point != "zero-shot":
                policy.train()
                for _ in range(args.steps):
                    b = {k: torch.as_tensor(v, dtype=torch.long if k in ("timesteps", "traj", "window", "index")
                                            else torch.float32)
                         for k, v in sample_windows(packed, model.cfg.K, 64, rng).items()}
                    pred = policy(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
                    loss = sft_loss(pred, b["actions"], b["mask"])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), 0.25)
                    opt.step()
            policy.eval()
            t0 = time.time()
            ev = evaluate(lambda s, a, r, t, m: policy(s, a, r, t, m, last_only=True), args.env, [task],  # noqa: E731
                          args.episodes, [target], model.cfg.K, seeds=[eval_seeds(task, args.episodes, "val")])
            ret, succ = ev["returns"][0], ev["success"][0]
            row = {"task": task, "point": point, "mean": float(ret.mean()), "sd": float(ret.std(ddof=1)),
                   "range": span, "returns": ret.tolist(), "eval_s_per_episode": (time.time() - t0) / args.episodes}
            if args.env == "metaworld":
                row.update(success=float(succ.mean()), success_sd=float(succ.std(ddof=1)),
                           episodes_needed=episodes_needed(max(float(succ.std(ddof=1)), 0.5), 0.15))
            else:
                row["episodes_needed"] = episodes_needed(row["sd"], 0.1 * span)
            rows.append(row)
            print(f"task {task} {point}: mean {row['mean']:.1f}, sd {row['sd']:.1f}"
                  + (f", success {row['success']:.2f}" if "success" in row else "")
                  + f", range {span:.1f} -> {row['episodes_needed']} episodes", flush=True)
    sds = np.array([r["sd"] for r in rows])
    need = max(r["episodes_needed"] for r in rows)
    print(f"\n{args.env}: per-episode sd median {np.median(sds):.1f} (max {sds.max():.1f}); episodes for the target "
          f"on every task and point: {need}")
    if args.out:
        atomic_write_json(args.out, {"env": args.env, "episodes": args.episodes, "steps": args.steps, "rows": rows,
                                     "episodes_needed": need})
    return 0


if __name__ == "__main__":
    sys.exit(main())
