"""Plain helpers shared by the seven finetuning scripts: the core flags, per-task data and policy,
batch sampling, evaluation, recording a task and writing the result file. Each script holds its own
loss, critic and training loop and calls these; nothing here calls back into a script.

Protocol (docs/protocol.md): for every test task, start from the pretrained model, finetune on the
task's first --num-trajs trajectories, evaluate zero-shot and every --eval-every steps on two fixed
sets of episodes: validation episodes and reporting episodes (disjoint reset seeds, common/rollout.py).
Reported, all on the reporting episodes: zero-shot; selected (the checkpoint after finetuning began
with the best *validation* score: an honest estimate); best (the best reporting score after
finetuning began, the paper's choice: optimistic, as it is the maximum of what it reports); final.
MetaWorld selects on validation success, ties broken by return.

Files (docs/protocol.md): <run-dir>/<run-name>/result.json, written atomically at the end. While a run
is going, each finished task is kept in <run-dir>/<run-name>/tasks/, so a killed run, rerun with the
same flags, redoes only the task it was in (each task is seeded on its own: the numbers are those of
an uninterrupted run). A finished run rerun with the same flags is skipped; with other flags it is
refused unless --overwrite. A lock file excludes a second process with the same run name.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from common.cli import run as run_cli
from common.data import (QUALITIES, atomic_write, atomic_write_json, gather, load_trajectories, lock_folder, pack, returns_to_go,
                         sample_windows, sparsify)
from common.envs import ENV_NAMES, spec
from common.model import default_checkpoint, load_pretrained, num_params
from common.rollout import EVAL_EPISODES, check_rendering, eval_seeds, evaluate, render_episode, task_prompt_and_target
from common.tuning import TUNINGS, TunedPolicy, adapter_manifest, adapter_state, format_bytes, load_adapter, save_adapter

# The seven finetuning scripts, in the paper's column order (each is <name>.py at the top level).
ALGOS = ("sft", "dpo", "grpo", "ppo", "cql", "qp_dpo", "qp_sft")
DEFAULT_LR = {"prompt": 1e-2, "lora": 1e-3, "decorator": 3e-4, "full": 1e-4}


def run_name(algo: str, env: str = "halfcheetahvel", tuning: str = "full", quality: str = "expert",
             num_trajs: int = 50, sparse_reward: bool = False, max_target: bool = False, seed: int = 1) -> str:
    """The default --run-name: <algo>_<env>_<tuning>_<quality>_n<N>[_sparse][_maxq]_s<seed>. The one place
    it is made: the scripts and benchmark/run.py (which skips finished runs by it) both call this."""
    return (f"{algo}_{env}_{tuning}_{quality}_n{num_trajs}{'_sparse' if sparse_reward else ''}"
            f"{'_maxq' if max_target else ''}_s{seed}")


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
    """learning rate of the policy's trainable parameters (default: per tuning, prompt 1e-2, lora 1e-3,
    decorator 3e-4, full 1e-4)"""
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


@dataclass
class OnlineArgs(FinetuneArgs):
    """The flags the online scripts (online_grpo.py, online_ppo.py) share: rollouts in the simulator, then
    clipped-surrogate updates with the exact KL to the starting policy."""
    total_steps: int = 40
    """iterations per test task: --group-size rollouts, then --update-epochs passes over their steps"""
    eval_every: int = 10
    """iterations between evaluations"""
    batch_size: int = 256
    """steps per minibatch"""
    group_size: int = 8
    """episodes rolled out per iteration (online_grpo: one group from one reset seed; online_ppo: a seed each)"""
    clip_eps: float = 0.2
    """epsilon of the clipped ratio (eqs. 5, 9)"""
    beta: float = 0.04
    """weight of the exact KL to the starting policy (the pretrained one, or --init-from's)"""
    policy_std: float = 0.1
    """fixed std of the Gaussian policy around the DT's action (exploration noise of the rollouts)"""
    update_epochs: int = 2
    """passes over each iteration's minibatches"""
    minibatches: int = 4
    """minibatches of --batch-size steps per pass, drawn once per iteration from the rollouts' steps (0: all
    of them); bounds the update's cost (a MetaWorld group of 8 rollouts has 4,000 steps)"""
    init_from: str = ""
    """offline-to-online: an offline run's folder <run-dir>/<run-name> (saved with --save-model selected, the
    default) whose selected checkpoint starts each task and anchors the KL; empty: the pretrained policy"""
    lr_factor: float = 0.1
    """without --lr, the learning rate is this times the tuning's offline default (on-policy updates drift
    further per step than imitation does)"""


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
    for k in v:
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


def selection_key(point: dict) -> tuple:
    """What selection maximises at an evaluation: validation success then return (MetaWorld), or return."""
    return (point["val_success"], point["val_return"]) if "val_success" in point else (point["val_return"],)


def summarise(curve: list[dict], success: bool = False) -> dict:
    """A task's zero-shot, selected, best and final scores from its evaluation curve (see the module
    doc). Selection looks only at the validation episodes; every reported number is a reporting score."""
    sel = max(curve[1:], key=selection_key)  # the first of equals, as the adapter Run.log keeps
    best = max(curve[1:], key=lambda c: (c["success"], c["return"]) if success else c["return"])
    out = {"zero_shot": curve[0]["return"], "selected": sel["return"], "best": best["return"],
           "final": curve[-1]["return"], "selected_step": sel["step"], "selected_val": sel["val_return"],
           "curve": curve}
    if success:
        out.update(zero_shot_success=curve[0]["success"], selected_success=sel["success"],
                   best_success=best["success"], final_success=curve[-1]["success"])
    return out


def critic_warmup_steps(requested: int, total_steps: int) -> int:
    """Critic-only warm-up updates: -1 means as many as the run has policy steps (capped at 1000), so a
    smoke run does not spend minutes warming a critic it uses for four steps."""
    return min(total_steps, 1000) if requested < 0 else requested


def warm_up_critic(critic, opt, inputs: tuple, target: torch.Tensor, steps: int, batch_size: int,
                   rng: np.random.Generator) -> float:
    """Regress every output of critic(*inputs[j]) onto target[j] (Monte-Carlo returns of the data) for
    `steps` minibatches of `batch_size` random rows, so that bootstrapping starts on the value scale
    instead of from a random network. critic returns a tensor or a tuple of them (twin Qs). Returns
    the last loss."""
    loss = torch.zeros(())
    for _ in range(steps):
        j = torch.as_tensor(rng.integers(0, len(target), batch_size), device=target.device)
        out = critic(*(x[j] for x in inputs))
        loss = sum(((q.reshape(-1) - target[j]) ** 2).mean() for q in (out if isinstance(out, tuple) else (out,)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach()) if steps else float("nan")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the valid (mask 1) steps of a batch of windows."""
    return (x * mask).sum() / mask.sum()


def file_sha256(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@torch.no_grad()
def evaluate_policy(policy, env: str, task: int, target: float, episodes: int, device) -> dict:
    """Mean return (and MetaWorld success) of policy on the task's reporting episodes and, under val_*, on
    its validation episodes: both sets stepped together, one model call per env step for both."""
    act = lambda s, a, r, t, m: policy(s, a, r, t, m, last_only=True)  # noqa: E731
    ev = evaluate(act, env, [task, task], episodes, [target, target], policy.model.cfg.K, device,
                  seeds=[eval_seeds(task, episodes, "test"), eval_seeds(task, episodes, "val")])
    out = {"return": float(ev["returns"][0].mean()), "val_return": float(ev["returns"][1].mean())}
    if env == "metaworld":
        out.update(success=float(ev["success"][0].mean()), val_success=float(ev["success"][1].mean()))
    if episodes > 1:  # the per-episode spread: the report states each evaluation's 95% half-width from it
        out.update(return_sd=float(ev["returns"][0].std(ddof=1)), val_return_sd=float(ev["returns"][1].std(ddof=1)))
    return out


def seen_in_pretraining(tasks, pretrain_tasks, sp) -> list[int]:
    """The tasks of `tasks` a checkpoint was pretrained on though the split keeps them out of pretraining
    (halfcheetahdir's two tasks are pretraining and test tasks by design, as in Prompt-DT)."""
    return [t for t in tasks if t in pretrain_tasks and t not in sp.train_tasks]


class Run:
    """One finetuning run over the test tasks (see the module doc)."""

    def __init__(self, args: FinetuneArgs, algo: str):
        check_args(args)
        if args.eval_episodes is None:
            args = dataclasses.replace(args, eval_episodes=EVAL_EPISODES[args.env])
        self.args, self.algo = args, algo
        self.sp = spec(args.env)
        bad = [t for t in args.tasks if t not in self.sp.finetune_tasks]
        if bad:
            raise ValueError(f"--tasks {bad} are neither validation nor test tasks of {args.env}; choose from "
                             f"validation {list(self.sp.val_tasks)} or test {list(self.sp.test_tasks)}")
        if args.quality not in QUALITIES:
            raise ValueError(f"unknown --quality {args.quality!r}; choose one of {', '.join(QUALITIES)}")
        self.all_tasks = list(args.tasks) or list(self.sp.test_tasks)
        self.lr = args.lr or DEFAULT_LR[args.tuning] * getattr(args, "lr_factor", 1.0)  # lr_factor: online scripts
        self.name = args.run_name or run_name(algo, args.env, args.tuning, args.quality, args.num_trajs,
                                              args.sparse_reward, getattr(args, "max_target", False), args.seed)
        self.dir = os.path.join(args.run_dir, self.name)
        self.path = os.path.join(self.dir, "result.json")
        self.preset = ({}, "off") if args.no_presets else preset(args.env, args.tuning, algo)
        self.config = {**dataclasses.asdict(args), "algo": algo, "lr": self.lr,
                       "preset": {"flags": self.preset[0], "from": self.preset[1]}}  # what the defaults were
        print(f"{self.name}: " + ("presets: off (--no-presets)" if args.no_presets else preset_line(*self.preset)))
        if args.threads:
            torch.set_num_threads(args.threads)
        self.device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
        self.ckpt = args.pretrained or default_checkpoint(args.env)
        self.model = load_pretrained(self.ckpt, args.env, self.sp.obs_dim, self.sp.act_dim, self.device)
        self.model.requires_grad_(False)
        seen = seen_in_pretraining(self.all_tasks, self.model.pretrain_tasks, self.sp)
        if seen:
            raise ValueError(f"{self.ckpt} was pretrained on task(s) {seen}, so finetuning there measures nothing; "
                             f"pretrain without them: python pretrain_pdt.py --env {args.env} --out {self.ckpt} --overwrite")
        init_from = getattr(args, "init_from", "")
        self.ckpt_sha256 = file_sha256(self.ckpt) if args.save_model != "none" or init_from else None  # manifests
        self.init = {t: self._init_adapter(init_from, t) for t in self.all_tasks} if init_from else {}
        # every task's data are loaded up front, so a bad flag fails before any training
        self.data = {t: self._task_data(t) for t in self.all_tasks}
        if args.capture_video:
            check_rendering(args.env)
        self.t0, self.step_time, self.trainable = time.perf_counter(), 0.0, None
        self.results, self.times, self.saved = {}, {}, None  # task -> its summary, its times; a finished result
        self._lock()
        self.tasks = [t for t in self.all_tasks if t not in self.results]  # what is left to train
        if args.track and self.tasks:
            import wandb

            # CleanRL's conventions: one group per setting (the run name without its seed), the code saved
            wandb.init(project=args.wandb_project, entity=args.wandb_entity, name=self.name, config=self.config,
                       group=self.name.rsplit("_s", 1)[0], tags=[algo, args.env, args.tuning, args.quality],
                       save_code=True)

    def _same_config(self, other: dict) -> list[str]:
        """Flags (numbers-changing ones only) on which a saved config differs from this run's."""
        return [f"--{k.replace('_', '-')} {other[k]} vs {v}" for k, v in self.config.items()
                if k in other and k not in NOT_RESULT and other[k] != (list(v) if isinstance(v, tuple) else v)]

    def _lock(self) -> None:
        """Take the run's lock (before anything is written into its folder), then pick up what an earlier
        run of this name left: a finished result (skip it, or refuse other flags) and finished tasks."""
        self._lock_file = lock_folder(self.dir, "choose another --run-name")
        saved = [self.path] if os.path.exists(self.path) else []
        task_dir = os.path.join(self.dir, "tasks")
        saved += [os.path.join(task_dir, f) for f in sorted(os.listdir(task_dir))] if os.path.isdir(task_dir) else []
        for path in saved:
            try:
                with open(path) as f:
                    old = json.load(f)
                diff = self._same_config(old["config"])
            except (OSError, ValueError, KeyError, TypeError):
                diff = ["(unreadable)"]
            if diff and not self.args.overwrite:
                self._release()
                raise ValueError(f"{path} was made with other flags ({', '.join(diff[:3])}); choose another "
                                 f"--run-name, or pass --overwrite to replace it")
            if diff:
                if path == self.path:  # replaced: its adapters go with it
                    shutil.rmtree(os.path.join(self.dir, "adapters"), ignore_errors=True)
                continue
            if path == self.path:
                self.saved, self.results = old, {t["task"]: t for t in old["tasks"]}
                print(f"{self.name}: already finished with these flags, kept {self.path} (--overwrite "
                      f"to redo with other flags, or delete it)")
                return
            task = old["result"]["task"]
            if task in self.all_tasks:
                self.results[task] = old["result"]
                self.times[task] = {k: old[k] for k in ("wall_time_s", "train_time_s")}
                print(f"task {task}: finished by an earlier run, kept {path}")

    def _init_adapter(self, folder: str, task: int) -> str:
        """The selected adapter an offline run saved for `task` (--init-from), checked to fit this run."""
        path = os.path.join(folder, "adapters", f"task_{task:02d}_selected.safetensors")
        if not os.path.exists(path):
            raise ValueError(f"--init-from {folder}: no {path}; finetune task {task} offline first with "
                             f"--save-model selected (the default), e.g. python sft.py --env {self.args.env} "
                             f"--tuning {self.args.tuning} --run-dir {os.path.dirname(folder) or '.'} "
                             f"--run-name {os.path.basename(folder)}")
        c, a = adapter_manifest(path), self.args
        diff = [f"--{k.replace('_', '-')} {c['config'][k]} vs {getattr(a, k)}" for k in
                ("env", "tuning", "lora_rank", "lora_alpha", "decorator_bound") if c["config"][k] != getattr(a, k)]
        if c["pretrained_sha256"] != self.ckpt_sha256:
            diff.append(f"pretrained checkpoint {c['pretrained']} vs {self.ckpt}")
        if diff:
            raise ValueError(f"--init-from {path} was trained with other settings ({', '.join(diff[:3])}); "
                             f"pass the same ones")
        return path

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
        if task in self.init:  # --init-from: the offline run's policy, its prompt included (keys checked there)
            pol = load_adapter(self.init[task], self.model)[0].to(self.device)
        else:
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
                                   dtype=torch.long if k in ("timesteps", "traj", "window", "index") else torch.float32)
                for k, v in b.items()}

    def discounted_returns(self, task: int, gamma: float) -> torch.Tensor:
        """Monte-Carlo discounted return-to-go of every step of the task's data (flat, as packed): the
        behaviour policy's Q(s, a) and V(s), the critics' warm-up target (as in QT, which regresses
        its critic on the data's returns before bootstrapping). A timeout's tail is not bootstrapped."""
        trajs = self.data[task]["trajs"]
        g = np.concatenate([returns_to_go(t["rewards"], gamma) for t in trajs])
        return torch.as_tensor(g, dtype=torch.float32, device=self.device)

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
        out = evaluate_policy(policy.eval(), self.args.env, task, self.data[task]["target"], self.args.eval_episodes,
                              self.device)
        policy.train(was_training)
        return out

    def check(self, loss: torch.Tensor, step: int, task: int) -> float:
        """A NaN or inf loss stops the run (and no result file is written)."""
        v = float(loss.detach())
        if not np.isfinite(v):
            raise FloatingPointError(f"{self.algo}: loss is {v} at step {step} of task {task}; no result written. "
                                     f"Lower --lr or check the data")
        return v

    def zero_shot(self, policy: TunedPolicy, task: int) -> list[dict]:
        """Evaluate the untouched policy: the task's curve starts with it, and its training clock starts."""
        self._task_t = (time.perf_counter(), self.step_time)  # the task's wall and training clocks start
        self._keep = {}  # "selected" / "final" -> (step, adapter snapshot) for --save-model
        curve = [{"step": 0, **self.evaluate(policy, task)}]
        print(f"task {task}: zero-shot return {curve[0]['return']:.1f}")
        self._clock = time.perf_counter()
        return curve

    def eval_due(self, step: int) -> bool:
        return step % self.args.eval_every == 0 or step == self.args.total_steps

    def global_step(self, task: int, step: int) -> int:
        """wandb's step: the steps of this run's tasks so far, so that the tasks follow each other."""
        return self.all_tasks.index(task) * self.args.total_steps + step

    def log(self, policy: TunedPolicy, task: int, step: int, curve: list[dict], logs: dict) -> None:
        """Called after every gradient step: sends the losses to wandb every --log-every steps (--track); at an
        evaluation step (eval_due) evaluates, appends to the curve with the logged floats, prints a
        progress line (steps/s over the training time only, ETA), and sends the scores to wandb."""
        a = self.args
        if a.track and step % a.log_every == 0:
            import wandb

            wandb.log({f"task_{task}/{k}": v for k, v in logs.items()}, step=self.global_step(task, step))
        if not self.eval_due(step):
            return
        self.step_time += time.perf_counter() - self._clock
        curve.append({"step": step, **self.evaluate(policy, task), **logs})
        if a.save_model != "none":  # snapshot what record() will save: the selected (and final) parameters
            if "selected" not in self._keep or selection_key(curve[-1]) > self._sel_key:  # the first of equals
                self._keep["selected"], self._sel_key = (step, adapter_state(policy)), selection_key(curve[-1])
            if a.save_model == "both" and step == a.total_steps:
                self._keep["final"] = (step, adapter_state(policy))
        done = self.tasks.index(task) * a.total_steps + step  # steps of this process's tasks so far
        sps = done / self.step_time if self.step_time else 0
        left = len(self.tasks) * a.total_steps - done
        print(f"task {task} step {step}/{a.total_steps}: return {curve[-1]['return']:.1f} "
              + " ".join(f"{k} {v:.4g}" for k, v in logs.items())
              + f" | {sps:.3g} steps/s, ETA {left / max(sps, 1e-9) / 60:.1f} min", flush=True)
        video = self.video(policy, task, step) if a.capture_video else None
        if a.track:
            import wandb

            wandb.log({f"task_{task}/{k}": v for k, v in curve[-1].items() if k != "step"}
                      | ({f"task_{task}/video": wandb.Video(video, format="gif")} if video else {}),
                      step=self.global_step(task, step))
        self._clock = time.perf_counter()

    def video(self, policy: TunedPolicy, task: int, step: int) -> str:
        """The first reporting episode, rendered, as <run>/videos/task_XX_step_YYYYY.gif (--capture-video)."""
        import imageio.v3 as iio

        was_training = policy.training
        policy.eval()
        act = lambda s, a, r, t, m: policy(s, a, r, t, m, last_only=True)  # noqa: E731
        frames = render_episode(act, self.args.env, task, int(eval_seeds(task, 1, "test")[0]),
                                self.data[task]["target"], self.model.cfg.K, self.device)
        policy.train(was_training)
        path = os.path.join(self.dir, "videos", f"task_{task:02d}_step_{step:05d}.gif")
        atomic_write(path, lambda f: iio.imwrite(f, frames[::2], extension=".gif", duration=40, loop=0))
        return path

    def record(self, task: int, curve: list[dict]) -> None:
        """A finished task's zero-shot, selected, best and final scores (see the module doc), kept on disk
        at once so that a killed run resumes after it."""
        now = time.perf_counter()
        self.results[task] = summarise(curve, self.args.env == "metaworld") | {"task": task}
        for which, (step, state) in self._keep.items():  # before the task file: a finished task has its adapters
            save_adapter(os.path.join(self.dir, "adapters", f"task_{task:02d}_{which}.safetensors"), state,
                         {"algo": self.algo, "task": task, "checkpoint": which, "step": step,
                          "scores": {k: v for k, v in next(c for c in curve if c["step"] == step).items()
                                     if k in ("return", "val_return", "success", "val_success")},
                          "target": self.data[task]["target"], "pretrained": self.ckpt,
                          "pretrained_sha256": self.ckpt_sha256, "threads": torch.get_num_threads(),
                          "config": self.config})
        self.times[task] = {"wall_time_s": now - self._task_t[0], "train_time_s": self.step_time - self._task_t[1]}
        atomic_write_json(os.path.join(self.dir, "tasks", f"task_{task:02d}.json"),
                          {"config": self.config, "result": self.results[task], **self.times[task]})
        self._task_t = (now, self.step_time)

    def finish(self) -> dict:
        """Write result.json (means over the tasks, each task's curve and scores, the config), drop the
        per-task files it now holds, release the lock. A run that was already finished returns its result."""
        if self.saved is not None:
            self._release()
            return self.saved
        a = self.args
        if self.trainable is None:  # every task was finished by an earlier run
            self.policy(self.all_tasks[0])
        tasks = [self.results[t] for t in self.all_tasks]
        mean = lambda k: float(np.mean([r[k] for r in tasks]))  # noqa: E731
        res = {"algo": self.algo, "config": self.config,
               "zero_shot": mean("zero_shot"), "selected": mean("selected"), "best": mean("best"),
               "final": mean("final"), "selected_val": mean("selected_val"), "tasks": tasks,
               # this process's time (set-up included) plus that of the tasks an earlier run finished
               "wall_time_s": time.perf_counter() - self.t0 + sum(self.times[t]["wall_time_s"] for t in self.all_tasks
                                                                  if t not in self.tasks),
               "train_time_s": sum(self.times[t]["train_time_s"] for t in self.all_tasks),
               # results are bit-identical for the same flags and thread count (see README: reproducibility)
               "threads": torch.get_num_threads(), "device": str(self.device),
               # the saved parameters (--save-model), relative to the run folder; python evaluate.py <file>
               "adapters": sorted(os.path.join("adapters", f) for f in os.listdir(os.path.join(self.dir, "adapters"))
                                  if f.endswith(".safetensors")) if os.path.isdir(os.path.join(self.dir, "adapters")) else [],
               "trainable_params": self.trainable[0], "trainable_bytes": self.trainable[1],
               "model": {"n_layer": self.model.cfg.n_layer, "n_embd": self.model.cfg.n_embd,
                         "n_head": self.model.cfg.n_head, "params": num_params(self.model)}}
        if all("env_steps" in t["curve"][-1] for t in tasks):  # online finetuning: the simulator steps it used
            res["env_steps"] = int(sum(t["curve"][-1]["env_steps"] for t in tasks))
        if a.env == "metaworld":
            res.update({k: mean(k) for k in ("zero_shot_success", "selected_success", "best_success",
                                             "final_success")})
        atomic_write_json(self.path, res)
        shutil.rmtree(os.path.join(self.dir, "tasks"), ignore_errors=True)
        self._release()
        print(f"{self.name}: zero-shot {res['zero_shot']:.1f}, selected {res['selected']:.1f}, "
              f"best {res['best']:.1f}, final {res['final']:.1f} "
              f"({res['wall_time_s'] / 60:.1f} min) -> {self.path}")
        if a.track and self.tasks:
            import wandb

            wandb.log({k: res[k] for k in ("zero_shot", "selected", "best", "final")})
            wandb.finish()
        return res

    def _release(self) -> None:
        """Remove the lock file and unlock (a process that opened it meanwhile re-checks result.json)."""
        os.unlink(self._lock_file.name)
        self._lock_file.close()
