"""What the report modules share: loading result.json files, picking runs by their config, labels, the
paper's reference numbers, formatting and writing tables and figures."""
from __future__ import annotations

import functools
import glob
import json
import os
import re
import sys
from collections import defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmark.stats import t_interval  # noqa: E402
from common.data import load_behaviour  # noqa: E402
from common.files import atomic_write  # noqa: E402
from common.envs import ENV_NAMES  # noqa: E402
from common.flags import ALGOS  # noqa: E402  (the paper's column order)

LABEL = {"sft": "SFT", "dpo": "DPO", "grpo": "GRPO", "ppo": "PPO", "cql": "CQL", "qp_dpo": "QP-DPO", "qp_sft": "QP-SFT"}
TLABEL = {"prompt": "Prompt", "lora": "LoRA (adaptor)", "decorator": "Decorator", "full": "Full model"}
ENVS = sorted(ENV_NAMES)  # the paper's row order (alphabetical)
ELABEL = {"antdir": "AntDir", "halfcheetahdir": "HalfCheetahDir", "halfcheetahvel": "HalfCheetahVel",
          "metaworld": "MetaWorld"}
DEFAULT_SIZE, DEFAULT_ALPHA = (3, 128, 1), 0.1

# beyond the paper: benchmark/online.sh; "_from_offline" runs start from an offline SFT run (--init-from)
ONLINE = ("online_grpo", "online_grpo_mixed", "online_ppo", "online_grpo_mixed_from_offline")
LABEL.update(online_grpo="online GRPO", online_grpo_mixed="mixed GRPO (LUFFY)", online_ppo="online PPO",
             online_grpo_mixed_from_offline="SFT, then mixed GRPO")

# The paper's reference numbers (Tables 1, 2 and 6), kept as data beside this file
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_numbers.json")) as _f:
    _PAPER = json.load(_f)
PAPER_TABLE1 = _PAPER["table1"]  # tuning -> env -> [zero-shot, *ALGOS]
PAPER_TABLE2 = {tuple(k.split("/")): tuple(v) for k, v in _PAPER["table2"].items()}  # (env, quality) -> (TQ, SACo)
PAPER_TABLE6 = {k: tuple(v) for k, v in _PAPER["table6"].items()}  # env -> (original, max target)


# ---------------------------------------------------------------- loading and statistics
def load_runs(run_dir: str) -> list[dict]:
    runs = []
    for path in sorted(glob.glob(os.path.join(run_dir, "*", "result.json"))):
        try:
            with open(path) as f:
                r = json.load(f)
            c = r["config"]
            c["env"], r["algo"], r["tasks"]  # noqa: B018 (a result without them is not one)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"error: {path} is not a finished result ({type(e).__name__}: {e}); delete it and "
                             f"rerun its command (benchmark/run.py reruns only what has no result)") from None
        if "model" in r:
            size = (r["model"]["n_layer"], r["model"]["n_embd"], r["model"]["n_head"])
        else:  # the checkpoint name says the size (pretrain_pdt.py's naming)
            m = re.search(r"_l(\d+)_e(\d+)_h(\d+)\.pt$", c.get("pretrained") or "")
            size = tuple(int(x) for x in m.groups()) if m else DEFAULT_SIZE
        runs.append({"algo": r["algo"], "env": c["env"], "tuning": c["tuning"], "quality": c["quality"],
                     "num_trajs": c["num_trajs"], "sparse": bool(c["sparse_reward"]), "seed": c["seed"],
                     # alpha as Figure 7 varies it: QP's Q-term weight (CQL's alpha is another thing)
                     "alpha": c.get("alpha") if r["algo"].startswith("qp") else None, "max_target": bool(c.get("max_target", False)), "size": size,
                     "params": r.get("model", {}).get("params"), "result": r, "path": path})
    return runs


def select(runs: list[dict], **kw) -> list[dict]:
    return [r for r in runs if all(r[k] == v for k, v in kw.items())]


@functools.lru_cache(maxsize=None)  # every run asks; presets.json is read once per report
def main_alpha(env: str, tuning: str, algo: str) -> float:
    """QP's alpha in the main setting: the preset of (env, tuning) (common/presets.json) or the scripts' default."""
    from common.flags import preset

    return preset(env, tuning, algo)[0].get("alpha", DEFAULT_ALPHA)


def at_main_alpha(r: dict) -> bool:
    """True for a run at its main alpha (or of an algorithm without one): every experiment but Figure 7's
    alpha sweep compares the algorithms there, so a preset alpha counts as the default. A run that recorded
    the preset in force is judged by it, an older one by today's presets."""
    if r["alpha"] is None:
        return True
    rec = r["result"]["config"].get("preset")
    main = rec["flags"].get("alpha", DEFAULT_ALPHA) if rec else main_alpha(r["env"], r["tuning"], r["algo"])
    return r["alpha"] == main


def main_setting(runs: list[dict], n_main: int, algos=ALGOS) -> list[dict]:
    """Table 1's setting: expert, N_MAIN trajectories, dense, main alpha, eq. 16 target, default size; the
    seven offline algorithms unless `algos` says otherwise (online runs share the run folder)."""
    return [r for r in runs if r["algo"] in algos and r["quality"] == "expert" and r["num_trajs"] == n_main
            and not r["sparse"] and at_main_alpha(r) and not r["max_target"] and r["size"] == DEFAULT_SIZE]


def fmt(x, digits: int = 2) -> str:
    """'mean +- half-width of the 95% t interval' over seeds ('mean' for one seed, '-' for none)."""
    m, lo, hi = t_interval(x)
    if np.isnan(m):
        return "-"
    return f"{m:.{digits}f}" if np.isnan(lo) else f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def values(runs: list[dict], key: str) -> list[float]:
    """result[key] of every run that has it (runs made before validation episodes have no "selected")."""
    return [r["result"][key] for r in runs if key in r["result"]]


_NORM: dict = {}


def normaliser(env: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-task random and expert returns of the behaviour policy (behaviour/<env>.pt, in git)."""
    if env not in _NORM:
        beh = load_behaviour(os.path.join(ROOT, "behaviour", f"{env}.pt"))
        _NORM[env] = (np.asarray(beh["random_return"], float), np.asarray(beh["expert_return"], float))
    return _NORM[env]


def normalised(run: dict, key: str) -> float:
    """Mean over the run's tasks of (return - random) / (expert - random)."""
    rnd, exp = normaliser(run["env"])
    return float(np.mean([(t[key] - rnd[t["task"]]) / (exp[t["task"]] - rnd[t["task"]]) for t in run["result"]["tasks"]]))


def num(x: float, digits: int = 1) -> str:
    return "-" if np.isnan(x) else f"{x:.{digits}f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def present(runs, key: str, order: list) -> list:
    have = {r[key] for r in runs}
    return [x for x in order if x in have]


def savefig(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


MADE_BY = ""  # the command that made the runs (--made-by), printed under each title


def write(out_dir: str, name: str, text: str) -> str:
    if MADE_BY:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\nMade by `{MADE_BY}`.\n{rest}"
    path = os.path.join(out_dir, name)
    atomic_write(path, lambda f: f.write(text), "w")
    return path


def plt_subplots(n: int, ncols: int = 4, w: float = 4.2, h: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(ncols, max(n, 1))
    nrows = (max(n, 1) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


SETTING = ("algo", "env", "tuning", "quality", "num_trajs", "sparse", "alpha", "max_target", "size")


def groups(runs) -> dict:
    """runs by setting (everything but the seed)"""
    out = defaultdict(list)
    for r in runs:
        out[tuple(r[k] for k in SETTING)].append(r)
    return out


def seeds_note(runs) -> str:
    n = sorted({len(g) for g in groups(runs).values()})
    return f"seeds per cell: {', '.join(map(str, n)) or 'none'}"


def protocol_note(runs) -> str:
    if not runs:
        return "No runs found."
    def said(key):  # one value, or one per env where the envs differ (episodes per evaluation do)
        by_env = {ELABEL[r["result"]["config"]["env"]]: r["result"]["config"][key] for r in runs}
        vals = set(by_env.values())
        return str(vals.pop()) if len(vals) == 1 else " / ".join(f"{v} ({e})" for e, v in sorted(by_env.items()))
    return (f"{len(runs)} runs; {said('total_steps')} steps per task, evaluation every {said('eval_every')} steps "
            f"with {said('eval_episodes')} episodes per task; {seeds_note(runs)}. Cells: mean ± half-width of the "
            f"95% Student-t interval over seeds (mean alone for one seed; see benchmark/stats.py for why not a bootstrap).")
