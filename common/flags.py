"""The finetuning scripts' flags: the core flags every script shares (FinetuneArgs), their checks, the
presets (common/presets.json: the hyperparameters benchmark/tune.py chose on validation tasks, used as
defaults), and the command-line entry that shows which presets are in force."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Literal

from common.cli import run as run_cli
from common.envs import ENV_NAMES
from common.tuning import TUNINGS

# The seven finetuning scripts, in the paper's column order (each is <name>.py at the top level).
ALGOS = ("sft", "dpo", "grpo", "ppo", "cql", "qp_dpo", "qp_sft")

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
    eval_episodes: int | None = None
    """episodes per evaluation, on the reporting seeds and as many again on the validation seeds (default: the
    env's, sized to tell checkpoints apart: common/rollout.py EVAL_EPISODES)"""
    batch_size: int = 64
    """K-step windows per gradient step"""
    weight_decay: float = 1e-4
    """AdamW weight decay of the policy's trainable parameters"""
    grad_clip: float = 0.25
    """gradient-norm clip of the policy's update (as in pretraining)"""
    lr: float | None = None
    """learning rate of the policy's trainable parameters (default: the tuning's, common/tuning.py DEFAULT_LR:
    prompt 1e-2, lora 1e-3, decorator 3e-4, full 1e-4)"""
    tasks: tuple[int, ...] = ()
    """tasks to adapt to (default: all of the env's test tasks); validation tasks (common/envs.py) are for
    hyperparameter choices, e.g. --tasks 50 51 on antdir"""
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
    wandb_entity: str | None = None
    """wandb entity (team or user; default: yours)"""
    log_every: int = 10
    """steps between logs of the losses to wandb (--track); evaluations are logged as they happen"""
    capture_video: bool = False
    """save one reporting episode of every evaluation as a GIF under <run-dir>/<run-name>/videos/ (and to wandb
    with --track); needs an OpenGL backend for MuJoCo (MUJOCO_GL=egl or osmesa)"""
    no_presets: bool = False
    """ignore the env's presets (common/presets.json): every default is the script's own"""
    overwrite: bool = False
    """replace a finished result (or unfinished tasks) of this --run-name made with other flags"""
    save_model: Literal["none", "selected", "both"] = "selected"
    """save each task's finetuned parameters (safetensors + JSON manifest) under <run-dir>/<run-name>/adapters/:
    the selected checkpoint, or the selected and the final one (python evaluate.py <file> reloads one)"""


# Flag checks for every script's Args (a flag a script does not have is skipped): bad values end
# with a one-line error before anything is loaded or written.
AT_LEAST_1 = ("num_trajs", "total_steps", "eval_every", "eval_episodes", "batch_size", "lora_rank", "update_epochs",
              "gae_every", "critic_batch", "num_random", "num_target_samples", "log_every", "group_size")
POSITIVE = ("lr", "lora_alpha", "decorator_bound", "grad_clip", "policy_std", "beta", "critic_lr", "clip_eps", "tau",
            "gamma", "shaping_gamma", "lr_factor")
NON_NEGATIVE = ("weight_decay", "alpha", "bc_weight", "threads", "target_sample_std", "offline_members", "minibatches")
AT_MOST_1 = ("gamma", "tau", "gae_lambda")
# flags that change how a run is executed or where it is written, not its numbers
NOT_RESULT = ("threads", "cuda", "track", "wandb_project", "run_dir", "run_name", "data_dir", "no_presets", "overwrite", "preset",
              "save_model", "wandb_entity", "log_every", "capture_video")


def check_args(args) -> None:
    v = dataclasses.asdict(args)
    flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    for k in sorted(v, key=lambda k: k == "lr"):  # lr last: the online scripts derive it from --lr-factor
        x = v[k]
        if x is None or isinstance(x, (bool, str, tuple)):
            continue
        if k in AT_LEAST_1 and x < 1:
            raise ValueError(f"{flag(k)} must be at least 1, got {x}")
        if k in POSITIVE and not x > 0:
            raise ValueError(f"{flag(k)} must be positive, got {x}")
        if k in NON_NEGATIVE and not x >= 0:
            raise ValueError(f"{flag(k)} must be 0 or more, got {x}")
        if k in AT_MOST_1 and not 0 <= x <= 1:
            raise ValueError(f"{flag(k)} must be in [0, 1], got {x}")
    if v.get("critic_warmup", -1) < -1:
        raise ValueError(f"--critic-warmup must be -1 (scaled with the run) or 0 or more, got {v['critic_warmup']}")
    dup = sorted({t for t in args.tasks if args.tasks.count(t) > 1})
    if dup:
        raise ValueError(f"--tasks lists {dup} more than once; name each task once")
    if args.run_name and (os.sep in args.run_name or args.run_name in (".", "..") or args.run_name.startswith(".")):
        raise ValueError(f"--run-name {args.run_name!r} must be a plain folder name inside --run-dir (no '/', not "
                         f"starting with '.'); choose another, or another --run-dir")


# RFT_PRESETS points elsewhere (the tests use it, so they never touch the shipped file)
PRESETS_PATH = os.environ.get("RFT_PRESETS", os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets.json"))


PRESET_FROM = {"halfcheetahdir": "halfcheetahvel"}  # no validation task of its own: it takes these presets


def load_presets() -> dict:
    """{env: {tuning: {algo: {flag: value}}}}: the hyperparameters benchmark/tune.py chose on the env's
    validation tasks (see benchmark/results/tune/), used as the scripts' defaults. A damaged file or an
    entry of the wrong shape raises a one-line ValueError naming the file."""
    if not os.path.exists(PRESETS_PATH):
        return {}
    try:
        with open(PRESETS_PATH) as f:
            presets = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{PRESETS_PATH} is unreadable ({type(e).__name__}); restore it with "
                         f"git checkout common/presets.json") from None
    ok = isinstance(presets, dict) and all(
        isinstance(by_tuning, dict) and all(
            isinstance(by_algo, dict) and all(isinstance(p, dict) for p in by_algo.values())
            for by_algo in by_tuning.values()) for by_tuning in presets.values())
    if not ok:
        raise ValueError(f"{PRESETS_PATH} is not {{env: {{tuning: {{algo: {{flag: value}}}}}}}}; restore it with "
                         f"git checkout common/presets.json")
    return presets


def preset(env: str, tuning: str, algo: str, args_type=None) -> tuple[dict, str]:
    """The preset flags of (env, tuning, algo) and where they come from, e.g. ({"lr": 3e-4}, "common/presets.json
    [antdir][full][sft]"); ({}, "none") where the search has not chosen any. With args_type, each flag is
    checked to be one of its fields with a value of the field's type."""
    src = PRESET_FROM.get(env, env)
    p = load_presets().get(src, {}).get(tuning, {}).get(algo)
    if p is None:
        return {}, "none"
    where = f"{os.path.relpath(PRESETS_PATH)} [{src}][{tuning}][{algo}]"
    if args_type is not None:
        defaults = dataclasses.asdict(args_type())
        for k, v in p.items():
            if k not in defaults:
                raise ValueError(f"{where} has {k!r}, which is not a flag of {algo}.py; fix or remove it")
            want = float if defaults[k] is None else type(defaults[k])  # None: an optional float (--lr)
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                continue
            if not isinstance(v, want) or isinstance(v, bool) != (want is bool):
                raise ValueError(f"{where}: {k} = {v!r} is not a {want.__name__}; fix it")
    return p, where


def preset_line(p: dict, where: str) -> str:
    """The presets in force, as the help and a run's first line show them."""
    return ("presets: " + " ".join(f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else
                                   f"--{k.replace('_', '-')} {v}" for k, v in p.items()) + f" (from {where})"
            if p else "presets: none (the script's own defaults)")


def cli(main, args_type) -> None:
    """common.cli.run for a finetuning script, whose defaults on the command line are the presets of its
    env and tuning (common/presets.json) unless --no-presets; any flag overrides them."""
    import sys

    algo = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    found = {"env": FinetuneArgs.env, "tuning": FinetuneArgs.tuning}
    for i, tok in enumerate(sys.argv[1:], 1):  # env and tuning pick the presets, so find them before parsing
        for k in found:
            if tok.startswith(f"--{k}="):
                found[k] = tok.split("=", 1)[1]
            elif tok == f"--{k}" and i + 1 < len(sys.argv):
                found[k] = sys.argv[i + 1]
    env, tuning = found["env"], found["tuning"]
    default = args_type(**{k: v for k, v in found.items() if v in (ENV_NAMES if k == "env" else TUNINGS)})
    line = "presets: off (--no-presets)"
    if "--no-presets" not in sys.argv:
        try:
            p, where = preset(default.env, default.tuning, algo, args_type)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        default = dataclasses.replace(default, **p)
        line = preset_line(p, where)
        try:
            check_args(default)  # a preset out of range is the file's fault, not a flag the user passed
        except ValueError as e:
            raise SystemExit(f"error: {where}: {e}; fix the preset (or pass --no-presets)") from None
    doc = (sys.modules[main.__module__].__doc__ or "").strip().split("\n")[0]  # the script's one-line summary
    run_cli(main, args_type, default=default,
            description=f"{doc}\n\nFor --env {env} --tuning {tuning}, {line}: the defaults below include them "
                        f"(chosen on validation tasks by benchmark/tune.py; --no-presets for the script's own).")
