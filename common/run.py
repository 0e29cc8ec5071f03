"""Run bookkeeping for the finetuning scripts: set-up (flags checked, pretrained model, every task's data),
resume and locks, evaluation points and their progress lines, the adapters of the selected checkpoints,
and result.json. Each script holds its own loss, critic and training loop and calls these; nothing here
calls back into a script, and nothing here is algorithm logic.

Protocol (docs/protocol.md): for every task, start from the pretrained model, finetune on the task's
first --num-trajs trajectories, evaluate zero-shot and every --eval-every steps on two fixed sets of
episodes: validation episodes and reporting episodes (disjoint reset seeds, common/rollout.py).
Reported, all on the reporting episodes: zero-shot; selected (the checkpoint after finetuning began
with the best *validation* score: an honest estimate); best (the best reporting score after
finetuning began, the paper's choice: optimistic, as it is the maximum of what it reports); final.
MetaWorld selects on validation success, ties broken by return.

Files: <run-dir>/<run-name>/result.json, written atomically at the end. While a run is going, each
finished task is kept in <run-dir>/<run-name>/tasks/, so a killed run, rerun with the same flags, redoes
only the task it was in (each task is seeded on its own: the numbers are those of an uninterrupted run).
A finished run rerun with the same flags is skipped; with other flags it is refused unless --overwrite.
A lock file excludes a second process with the same run name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

import numpy as np
import torch

from common.data import QUALITIES, load_trajectories, pack, sparsify
from common.envs import spec
from common.files import atomic_write_json, check_folder, file_sha256, format_bytes, lock_folder, read_json
from common.flags import NOT_RESULT, FinetuneArgs, check_args, preset, preset_line
from common.model import default_checkpoint, in_project, load_pretrained, num_params, seen_in_pretraining
from common.rollout import (EVAL_EPISODES, check_rendering, evaluate_policy, save_video, selection_key, summarise,
                            task_prompt_and_target)
from common.tuning import TunedPolicy, adapter_manifest, adapter_state, load_adapter, save_adapter


def run_name(algo: str, env: str = "halfcheetahvel", tuning: str = "full", quality: str = "expert",
             num_trajs: int = 50, sparse_reward: bool = False, max_target: bool = False, seed: int = 1) -> str:
    """The default --run-name: <algo>_<env>_<tuning>_<quality>_n<N>[_sparse][_maxq]_s<seed>. The one place
    it is made: the scripts and benchmark/run.py (which skips finished runs by it) both call this."""
    return (f"{algo}_{env}_{tuning}_{quality}_n{num_trajs}{'_sparse' if sparse_reward else ''}"
            f"{'_maxq' if max_target else ''}_s{seed}")


class Run:
    """One finetuning run over its tasks (see the module doc)."""

    def __init__(self, args: FinetuneArgs, algo: str):
        check_args(args)
        if args.lr is None:
            raise ValueError("the script sets args.lr (the flag, a preset, or its tuning's DEFAULT_LR) before Run")
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
        self.name = args.run_name or run_name(algo, args.env, args.tuning, args.quality, args.num_trajs,
                                              args.sparse_reward, getattr(args, "max_target", False), args.seed)
        self.dir = os.path.join(args.run_dir, self.name)
        self.path = os.path.join(self.dir, "result.json")
        # the script's presets, as its command line applied them (online_grpo.py's variants share online_grpo's)
        self.preset = ({}, "off") if args.no_presets else preset(
            args.env, args.tuning, algo.removesuffix("_from_offline").removesuffix("_mixed"))
        self.config = {**dataclasses.asdict(args), "algo": algo,
                       "preset": {"flags": self.preset[0], "from": self.preset[1]}}  # what the defaults were
        print(f"{self.name}: " + ("presets: off (--no-presets)" if args.no_presets else preset_line(*self.preset)))
        if args.threads:
            torch.set_num_threads(args.threads)
        self.device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
        self.ckpt = args.pretrained or in_project(default_checkpoint(args.env))
        self.model = load_pretrained(self.ckpt, args.env, self.sp.obs_dim, self.sp.act_dim, self.device)
        self.model.requires_grad_(False)
        seen = seen_in_pretraining(self.all_tasks, self.model.pretrain_tasks, self.sp)
        if seen:
            raise ValueError(f"{self.ckpt} was pretrained on task(s) {seen}, so finetuning there measures nothing; "
                             f"pretrain without them: python pretrain_pdt.py --env {args.env} --out {self.ckpt} --overwrite")
        init_from = getattr(args, "init_from", "")
        self.ckpt_sha256 = file_sha256(self.ckpt)  # adapter manifests and the zero-shot cache key
        self.init = {t: self._init_adapter(init_from, t) for t in self.all_tasks} if init_from else {}
        # every task's data are loaded up front, so a bad flag fails before any training
        self.data = {t: self._task_data(t) for t in self.all_tasks}
        if args.capture_video:
            check_rendering(args.env)
        self.t0, self.step_time, self.trainable = time.perf_counter(), 0.0, None
        self.results, self.times, self.saved = {}, {}, None  # task -> its summary, its times; a finished result
        # room for what the run writes (task and result files; the adapters, at most the whole model per task),
        # checked now so that a full or read-only disk fails before the training, not after it
        per_task = 4 * num_params(self.model) * (2 if args.save_model == "both" else 1) if args.save_model != "none" else 0
        check_folder(args.run_dir, "--run-dir", len(self.all_tasks) * per_task + 2_000_000)
        self._lock()
        self.tasks = [t for t in self.all_tasks if t not in self.results]  # what is left to train
        if args.track and self.tasks:
            import wandb

            # CleanRL's conventions: one group per setting (the run name without its seed), the code saved
            try:
                wandb.init(project=args.wandb_project, entity=args.wandb_entity, name=self.name, config=self.config,
                           group=self.name.rsplit("_s", 1)[0], tags=[algo, args.env, args.tuning, args.quality],
                           save_code=True)
            except Exception as e:  # noqa: BLE001 (no login, no network: wandb raises several kinds)
                self._release()
                first = (str(e).strip().splitlines() or [""])[0][:120]
                raise RuntimeError(f"--track: wandb did not start ({type(e).__name__}: {first}); run `wandb login`, "
                                   f"or set WANDB_MODE=offline, or drop --track") from None

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
        load_adapter(path, self.model)  # a damaged file fails now, before any training
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
            print(f"{self.name}: {a.tuning} tuning trains {n:,} parameters ({format_bytes(nbytes)}), lr {a.lr:g}")
        return pol

    def check(self, loss: torch.Tensor, step: int, task: int) -> float:
        """A NaN or inf loss stops the run (and no result file is written)."""
        v = float(loss.detach())
        if not np.isfinite(v):
            raise FloatingPointError(f"{self.algo}: loss is {v} at step {step} of task {task}; no result written. "
                                     f"Lower --lr or check the data")
        return v

    @torch.no_grad()
    def evaluate(self, policy: TunedPolicy, task: int, step: int, logs: dict | None = None) -> dict:
        """The task's evaluation point at `step`: the policy's mean return (and MetaWorld success) on its
        reporting episodes and, under val_*, its validation episodes (common/rollout.py evaluate_policy), with
        the step's logged floats. Step 0 is zero-shot and starts the task's clocks; a later point prints a
        progress line (steps/s over the training time only, ETA) and goes to wandb (--track)."""
        a, now = self.args, time.perf_counter()
        if step == 0:
            self._task_t = (now, self.step_time)  # the task's wall and training clocks start
            self._keep = {}  # "selected" / "final" -> (step, adapter snapshot) for --save-model
        else:
            self.step_time += now - self._clock
        was_training = policy.training
        cache = self._zero_shot_path(policy, task) if step == 0 else None
        scores = read_json(cache) if cache else None  # None: not cached yet (or an unreadable entry)
        hit = scores is not None
        if not hit:
            scores = evaluate_policy(policy.eval(), a.env, task, self.data[task]["target"], a.eval_episodes, self.device)
            if cache:
                atomic_write_json(cache, scores)
        point = {"step": step, **scores, **(logs or {})}
        policy.train(was_training)
        if step == 0:
            print(f"task {task}: zero-shot return {point['return']:.1f}" + (" (cached)" if hit else ""))
        else:
            done = self.tasks.index(task) * a.total_steps + step  # steps of this process's tasks so far
            sps = done / self.step_time if self.step_time else 0
            left = len(self.tasks) * a.total_steps - done
            print(f"task {task} step {step}/{a.total_steps}: return {point['return']:.1f} "
                  + " ".join(f"{k} {v:.4g}" for k, v in (logs or {}).items())
                  + f" | {sps:.3g} steps/s, ETA {left / max(sps, 1e-9) / 60:.1f} min", flush=True)
            video = None
            if a.capture_video:  # the first reporting episode, as <run>/videos/task_XX_step_YYYYY.gif
                video = os.path.join(self.dir, "videos", f"task_{task:02d}_step_{step:05d}.gif")
                save_video(policy, a.env, task, self.data[task]["target"], self.device, video)
            if a.track:
                import wandb

                wandb.log({f"task_{task}/{k}": v for k, v in point.items() if k != "step"}
                          | ({f"task_{task}/video": wandb.Video(video, format="gif")} if video else {}),
                          step=self.global_step(task, step))
        self._clock = time.perf_counter()
        return point

    def _zero_shot_path(self, policy: TunedPolicy, task: int) -> str:
        """Where the zero-shot evaluation of this exact policy is kept, shared by the runs of a --run-dir.
        Step 0 depends only on the policy's parameters and buffers (pretrained model, prompt, the tuning's
        initial adapter: LoRA's B and the decorator's last layer start at zero, so every tuning and algorithm
        starts from the same actions), the checkpoint file, the code in common/, the episodes and the target;
        the key hashes all of them, so the algorithms and seeds of a grid evaluate each task's zero-shot once
        and any change makes a new entry. The numbers are those a fresh evaluation gives, bit for bit."""
        a, h = self.args, hashlib.sha256()
        code = os.path.dirname(os.path.abspath(__file__))
        for f in sorted(os.listdir(code)):
            if f.endswith(".py"):
                with open(os.path.join(code, f), "rb") as fh:
                    h.update(fh.read())
        for k, v in sorted(policy.state_dict().items()):
            h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
        h.update(json.dumps([self.ckpt_sha256, a.env, task, a.eval_episodes, self.data[task]["target"], a.tuning,
                             a.lora_alpha, a.decorator_bound, str(self.device), torch.__version__,
                             torch.get_num_threads()]).encode())
        return os.path.join(a.run_dir, ".zero_shot", h.hexdigest()[:32] + ".json")

    def select(self, policy: TunedPolicy, curve: list[dict]) -> None:
        """Checkpoint selection for --save-model: keeps a copy of the policy's trainable parameters when the
        curve's last point has the task's best validation score so far (the first of equals, as summarise
        picks), and at the last step with --save-model both; record() saves them."""
        a, step = self.args, curve[-1]["step"]
        if a.save_model == "none":
            return
        if "selected" not in self._keep or selection_key(curve[-1]) > self._sel_key:
            self._keep["selected"], self._sel_key = (step, adapter_state(policy)), selection_key(curve[-1])
        if a.save_model == "both" and step == a.total_steps:
            self._keep["final"] = (step, adapter_state(policy))

    def global_step(self, task: int, step: int) -> int:
        """wandb's step: the steps of this run's tasks so far, so that the tasks follow each other."""
        return self.all_tasks.index(task) * self.args.total_steps + step

    def log(self, task: int, step: int, logs: dict) -> None:
        """Sends the step's losses to wandb every --log-every steps (--track); nothing else."""
        if self.args.track and step % self.args.log_every == 0:
            import wandb

            wandb.log({f"task_{task}/{k}": v for k, v in logs.items()}, step=self.global_step(task, step))

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
