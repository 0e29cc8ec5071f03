"""Evaluate a saved adapter: rebuild a finetuned policy from the pretrained checkpoint and the parameters a
finetuning run saved (--save-model, on by default for the selected checkpoint), then run its task's episodes.

    python evaluate.py runs/qp_sft_antdir_full_expert_n50_s1/adapters/task_06_selected.safetensors

An adapter is <name>.safetensors (the trained parameters: prompt, LoRA, decorator or the whole model,
plus the task's prompt) with <name>.json beside it (the run's flags, task, step, scores, target return
and the SHA-256 of the pretrained checkpoint). It is evaluated on the task's reporting and validation
episodes (the reset seeds of common/rollout.py), stepped together as finetuning does: with the run's
--eval-episodes and thread count the returns equal the ones the run recorded at that step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import tyro

from common.cli import run as cli
from common.envs import spec
from common.files import check_writable, file_sha256
from common.model import in_project, load_pretrained
from common.rollout import evaluate_policy
from common.tuning import adapter_manifest, load_adapter


@dataclass
class Args:
    adapter: tyro.conf.Positional[str]
    """<run-dir>/<run-name>/adapters/task_XX_{selected,final}.safetensors"""
    episodes: int = 0
    """episodes per set (reporting, validation); 0: the run's --eval-episodes"""
    pretrained: str = ""
    """pretrained checkpoint (default: the one named in the adapter's manifest, checked by its SHA-256)"""
    threads: int = 0
    """torch CPU threads (0: torch's default); the run's count reproduces its numbers bit for bit"""
    cuda: bool = True
    """use CUDA when torch sees a GPU"""
    out: str = ""
    """also write the scores to this JSON file"""
    force: bool = False
    """evaluate on a --pretrained checkpoint whose SHA-256 differs from the one the adapter was trained from"""


def main(args: Args) -> dict:
    if args.episodes < 0 or args.threads < 0:
        raise ValueError(f"--episodes and --threads must be 0 or more, got {args.episodes} and {args.threads}")
    m = adapter_manifest(args.adapter)
    if args.out:
        check_writable(args.out, "--out")  # before the episodes, not after
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    env, task = m["config"]["env"], m["task"]
    ckpt = args.pretrained or in_project(m["pretrained"])
    if os.path.exists(ckpt) and file_sha256(ckpt) != m["pretrained_sha256"] and not args.force:
        raise ValueError(f"{ckpt} is not the checkpoint {args.adapter} was trained from (SHA-256 differs; it was "
                         f"{m['pretrained']}); pass that one with --pretrained, or --force to evaluate anyway")
    sp = spec(env)
    model = load_pretrained(ckpt, env, sp.obs_dim, sp.act_dim, device)
    policy, _ = load_adapter(args.adapter, model)
    n = args.episodes or m["config"]["eval_episodes"]
    scores = evaluate_policy(policy, env, task, m["target"], n, device)
    print(f"{m['algo']} {env} task {task}, {m['checkpoint']} checkpoint (step {m['step']}), {n} episodes per set:")
    for k, v in scores.items():
        rec = m["scores"].get(k) if n == m["config"]["eval_episodes"] else None
        print(f"  {k:12s} {v:9.3f}" + ("" if rec is None else f"   (the run recorded {rec:.3f})"))
    res = {"adapter": args.adapter, "task": task, "episodes": n, "threads": torch.get_num_threads(), **scores}
    if args.out:
        from common.files import atomic_write_json

        atomic_write_json(args.out, res)
    return res


if __name__ == "__main__":
    cli(main, Args)
