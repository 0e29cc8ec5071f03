"""Run a list of finetuning commands, resumably: on this machine, or as a SLURM job array (submitit).

    python benchmark/run.py commands.txt --workers 2
    some_generator | python benchmark/run.py - --dry-run
    python benchmark/run.py commands.txt --executor slurm --partition gpu --gpus-per-task 1 --workers 64

One command per line (blank lines and # comments skipped), each a finetuning script call that
writes <run-dir>/<run-name>/result.json. A command whose result file already exists is skipped, so a
rerun after a kill continues where it stopped. --workers processes run at once, each with one torch
thread (two 2-thread processes on 2 cores run 5-10x slower than two 1-thread ones). A failing
command does not stop the others; the failures are listed at the end with their log files and the
exit status is 1; so are lines that do not parse (an unclosed quote), which are skipped. The commands
die with the runner (even after kill -9 of it), so a rerun never overlaps a leftover copy of a run.
Progress: one line per finished command with the overall ETA, and every --status-every seconds the
latest progress line of each running command. On a multi-GPU machine, --gpus 0 1 2 3 gives each
worker slot its own CUDA_VISIBLE_DEVICES.

--executor slurm submits the commands as one SLURM job array through submitit (at most --workers at
once, each with --cpus-per-task threads, --gpus-per-task GPUs, --time minutes), then waits and reports
as the local pool does; --executor submitit-local runs them through submitit's local executor (what
the tests use). Finished runs are skipped at submission, so on a shared filesystem a rerun submits
only what has no result; array jobs keep running if the runner is stopped (rerun once they end:
while one runs, the run's lock refuses a second copy of it).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def result_path(cmd: list[str]) -> str | None:
    """Where a finetuning command writes its result, from its own --run-dir/--run-name or defaults."""
    if not cmd or not cmd[0].endswith(".py") and not (len(cmd) > 1 and cmd[1].endswith(".py")):
        return None
    script = cmd[0] if cmd[0].endswith(".py") else cmd[1]
    flags = {}
    for i, tok in enumerate(cmd):
        if tok.startswith("--"):
            key = tok[2:].replace("-", "_")
            if "=" in key:
                key, val = key.split("=", 1)
                flags[key] = val
            else:
                nxt = cmd[i + 1] if i + 1 < len(cmd) else ""
                flags[key] = nxt if nxt and not nxt.startswith("--") else True
    if "run_name" in flags:
        name = flags["run_name"]
    else:  # the scripts' own default name, made by the same function
        from common.run import run_name

        kw = {k: flags[k] for k in ("env", "tuning", "quality") if k in flags}
        try:
            kw.update({k: int(flags[k]) for k in ("num_trajs", "seed") if k in flags})
        except (TypeError, ValueError):  # a bad value: the command runs, and fails with its own message
            return None
        kw.update({k: flags.get(k) is True for k in ("sparse_reward", "max_target")})
        name = run_name(os.path.basename(script)[:-3], **kw)
    return os.path.join(flags.get("run_dir", "runs"), name, "result.json")


def die_with_parent(parent: int):
    """preexec_fn of a command: Linux delivers SIGKILL to it when the runner dies, however it dies."""
    def set_pdeathsig() -> None:
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except OSError:  # not Linux: the SIGTERM/SIGINT handler below still stops the commands
            return
        if os.getppid() != parent:  # the runner died before the prctl
            os._exit(1)
    return set_pdeathsig


def parse(lines: list[str]) -> tuple[list[list[str]], list[str]]:
    """Commands (blank lines and # comments skipped) and the lines that do not parse."""
    cmds, bad = [], []
    for line in lines:
        if line.strip() and not line.strip().startswith("#"):
            try:
                cmds.append(shlex.split(line))
            except ValueError as e:
                bad.append(f"{line.strip()}  ({e})")
    return cmds, bad


def last_line(path: str) -> str:
    """The last non-empty line of a log (progress bars rewrite one line with \\r: their last state)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [x.strip() for x in tail.replace("\r", "\n").split("\n") if x.strip()]
    return lines[-1][:160] if lines else "(starting)"


def run_command(cmd: list[str], log: str, threads: int = 1, gpu: str | None = None, parent: int | None = None,
                on_start=None) -> int:
    """Run one command in the repository root (with --threads unless it names its own), its output into
    log; its exit status (127: the program does not exist). gpu: its CUDA_VISIBLE_DEVICES; parent: the
    runner's pid, which the command dies with. Module-level, so submitit can send it to a job."""
    full = cmd if cmd[0] != "python" else [sys.executable, *cmd[1:]]
    if "--threads" not in full:
        full = [*full, "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    with open(log, "w") as f:
        try:
            proc = subprocess.Popen(full, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=die_with_parent(parent) if parent else None)
        except OSError as e:  # e.g. a program that does not exist: a failed command, not a crash
            f.write(f"error: cannot start {full[0]}: {e.strerror}\n")
            return 127
        if on_start:
            on_start(proc)
        return proc.wait()


def submitit_jobs(todo: list[list[str]], logs: list[str], args):
    """Yield (index, exit status) of each command as its submitit job ends: a SLURM job array capped at
    --workers, or submitit's local executor fed --workers at a time (it has no cap of its own)."""
    import submitit

    ex = submitit.AutoExecutor(folder=os.path.join(os.path.abspath(args.log_dir), "submitit"),
                               cluster="slurm" if args.executor == "slurm" else "local")
    ex.update_parameters(name="rft", timeout_min=args.time, cpus_per_task=args.cpus_per_task,
                         gpus_per_node=args.gpus_per_task, slurm_array_parallelism=args.workers,
                         **({"slurm_partition": args.partition} if args.partition else {}),
                         **({"mem_gb": args.mem_gb} if args.mem_gb else {}))
    threads = [args.cpus_per_task] * len(todo)
    if args.executor == "slurm":
        pending = list(enumerate(ex.map_array(run_command, todo, logs, threads)))
        print(f"submitted job array {pending[0][1].job_id.split('_')[0]} ({len(todo)} tasks, {args.workers} at once)"
              if pending else "nothing to submit", flush=True)
        waiting = []
    else:
        pending, waiting = [], list(range(len(todo)))
    while pending or waiting:
        while waiting and len(pending) < args.workers:
            i = waiting.pop(0)
            pending.append((i, ex.submit(run_command, todo[i], logs[i], threads[i])))
        for i, job in [p for p in pending if p[1].done()]:
            pending.remove((i, job))
            try:
                rc = job.result()
            except Exception as e:  # noqa: BLE001 (the job itself failed: timeout, node failure, ...)
                with open(logs[i], "a") as f:
                    f.write(f"\nerror: submitit job {job.job_id} failed: {str(e).strip().splitlines()[-1][:300]}\n")
                rc = -1
            yield i, rc
        time.sleep(args.poll)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("commands", help="file with one command per line, or - for stdin")
    ap.add_argument("--workers", type=int, default=2, help="commands run at once (one torch thread each)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands that would run, and exit")
    ap.add_argument("--log-dir", default="runs/logs", help="one log file per command")
    ap.add_argument("--status-every", type=float, default=60.0,
                    help="seconds between status lines (each running command's latest progress line); 0: none")
    ap.add_argument("--gpus", nargs="+", default=None, metavar="ID",
                    help="local: GPU ids, one per worker slot in turn (CUDA_VISIBLE_DEVICES); default: leave it as is")
    ap.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                    help="local: a process pool here; slurm: a SLURM job array via submitit; submitit-local: "
                         "submitit's local executor")
    ap.add_argument("--partition", default="", help="slurm: partition")
    ap.add_argument("--time", type=int, default=240, help="submitit: minutes per command before it is stopped")
    ap.add_argument("--cpus-per-task", type=int, default=1, help="submitit: CPUs (and torch threads) per command")
    ap.add_argument("--gpus-per-task", type=int, default=0, help="submitit: GPUs per command")
    ap.add_argument("--mem-gb", type=int, default=0, help="slurm: memory per command (0: the partition's default)")
    ap.add_argument("--poll", type=float, default=5.0, help="submitit: seconds between checks of the jobs")
    args = ap.parse_args()
    if args.workers < 1:
        ap.error(f"--workers must be at least 1, got {args.workers}")
    for k in ("time", "cpus_per_task"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be at least 1, got {getattr(args, k)}")
    if args.gpus_per_task < 0 or args.mem_gb < 0 or not args.poll > 0:
        ap.error("--gpus-per-task and --mem-gb must be 0 or more, --poll positive")
    if args.executor != "local" and not args.dry_run:
        try:
            import submitit  # noqa: F401
        except ImportError:
            ap.error(f"--executor {args.executor} needs submitit: pip install -r requirements.txt")
    if args.commands != "-" and not os.path.isfile(args.commands):
        ap.error(f"no command file {args.commands}; pass a file with one command per line, or - to read stdin")
    lines = (sys.stdin if args.commands == "-" else open(args.commands)).read().splitlines()
    cmds, bad = parse(lines)
    for line in bad:
        print(f"skipping a line that does not parse: {line}", flush=True)
    todo = [c for c in cmds if not (result_path(c) and os.path.exists(os.path.join(ROOT, result_path(c))))]
    print(f"{len(cmds)} commands, {len(cmds) - len(todo)} already done, {len(todo)} to run", flush=True)
    if args.dry_run:
        for c in todo:
            print(shlex.join(c))
        return 0
    os.makedirs(args.log_dir, exist_ok=True)
    t0, done, failures = time.time(), 0, []
    logs = [os.path.join(os.path.abspath(args.log_dir), f"{i:04d}_{os.path.basename(os.path.dirname(result_path(c) or 'cmd/x'))}.log")
            for i, c in enumerate(todo)]

    def finished(c: list[str], rc: int, log: str) -> None:
        nonlocal done
        done += 1
        if rc != 0:
            failures.append((c, rc, log))
        el = time.time() - t0
        eta = el / done * (len(todo) - done)
        print(f"[{done}/{len(todo)}] {'ok  ' if rc == 0 else 'FAIL'} {shlex.join(c)} | "
              f"{el / 60:.1f} min elapsed, ETA {eta / 60:.1f} min", flush=True)

    running: dict[str, str] = {}  # log file -> command, while it runs
    stop = threading.Event()

    def status() -> None:
        """Every --status-every seconds: the latest progress line of every running command."""
        while not stop.wait(args.status_every):
            for log in [x for x in running if os.path.exists(x)]:  # a queued SLURM job has no log yet
                print(f"  running {os.path.basename(log)[5:-4]}: {last_line(log)}", flush=True)

    if args.status_every > 0:
        threading.Thread(target=status, daemon=True).start()
    if args.executor != "local":
        running.update({log: "" for log in logs})
        for i, rc in submitit_jobs(todo, logs, args):
            running.pop(logs[i], None)
            finished(todo[i], rc, logs[i])
        stop.set()
        return summary(failures, bad, len(todo))

    children: set[subprocess.Popen] = set()
    stopping = threading.Event()
    slots = queue.Queue()  # worker slot -> its GPU (--gpus), so two commands never share one by accident
    for k in range(args.workers):
        slots.put(args.gpus[k % len(args.gpus)] if args.gpus else None)

    def run_one(i: int) -> tuple[list[str], int, str]:
        if stopping.is_set():
            return todo[i], -1, ""
        gpu = slots.get()
        running[logs[i]] = shlex.join(todo[i])
        try:
            rc = run_command(todo[i], logs[i], gpu=gpu, parent=os.getpid(), on_start=children.add)
        finally:
            slots.put(gpu)
            running.pop(logs[i], None)
        return todo[i], rc, logs[i]

    def stop_children(signum, frame) -> None:
        """SIGTERM / Ctrl-C of the runner stops the commands too, and starts no more."""
        stopping.set()
        for p in list(children):
            p.kill()
        raise SystemExit(f"interrupted by signal {signum}; rerun the same command to continue")

    signal.signal(signal.SIGTERM, stop_children)
    signal.signal(signal.SIGINT, stop_children)
    with ThreadPoolExecutor(args.workers) as pool:
        for fut in as_completed([pool.submit(run_one, i) for i in range(len(todo))]):
            finished(*fut.result())
    stop.set()
    return summary(failures, bad, len(todo))


def summary(failures: list, bad: list[str], n: int) -> int:
    if failures:
        print(f"\n{len(failures)} of {n} commands failed:")
        for c, rc, log in failures:
            print(f"  exit {rc}: {shlex.join(c)}  (log: {log})")
    if bad:
        print(f"\n{len(bad)} lines did not parse and were skipped:")
        for line in bad:
            print(f"  {line}")
    return 1 if failures or bad else 0

if __name__ == "__main__":
    sys.exit(main())
