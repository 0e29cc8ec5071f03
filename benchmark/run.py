"""Run a list of finetuning commands on this machine, resumably.

    python benchmark/run.py commands.txt --workers 2
    some_generator | python benchmark/run.py - --dry-run

One command per line (blank lines and # comments skipped), each a finetuning script call that
writes <run-dir>/<run-name>/result.json. A command whose result file already exists is skipped, so a
rerun after a kill continues where it stopped. --workers processes run at once, each with one torch
thread (two 2-thread processes on 2 cores run 5-10x slower than two 1-thread ones). A failing
command does not stop the others; the failures are listed at the end with their log files and the
exit status is 1; so are lines that do not parse (an unclosed quote), which are skipped. The commands
die with the runner (even after kill -9 of it), so a rerun never overlaps a leftover copy of a run. Progress: one line per finished command with the overall ETA, and every
--status-every seconds the latest progress line of each running command.
"""
from __future__ import annotations

import argparse
import ctypes
import os
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
        from common.finetune import run_name

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("commands", help="file with one command per line, or - for stdin")
    ap.add_argument("--workers", type=int, default=2, help="commands run at once (one torch thread each)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands that would run, and exit")
    ap.add_argument("--log-dir", default="runs/logs", help="one log file per command")
    ap.add_argument("--status-every", type=float, default=60.0,
                    help="seconds between status lines (each running command's latest progress line); 0: none")
    args = ap.parse_args()
    if args.workers < 1:
        ap.error(f"--workers must be at least 1, got {args.workers}")
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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0, done, failures = time.time(), 0, []

    def run_one(i: int, c: list[str]) -> tuple[list[str], int, str]:
        if stopping.is_set():
            return c, -1, ""
        log = os.path.join(args.log_dir, f"{i:04d}_{os.path.basename(os.path.dirname(result_path(c) or 'cmd/x'))}.log")
        full = c if c[0] != "python" else [sys.executable, *c[1:]]
        if "--threads" not in full:
            full = [*full, "--threads", "1"]
        running[log] = shlex.join(c)
        with open(log, "w") as f:
            try:
                proc = subprocess.Popen(full, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                        preexec_fn=die_with_parent(os.getpid()))
                children.add(proc)
                rc = proc.wait()
                children.discard(proc)
            except OSError as e:  # e.g. a program that does not exist: a failed command, not a crash
                f.write(f"error: cannot start {full[0]}: {e.strerror}\n")
                rc = 127
        running.pop(log, None)
        return c, rc, log

    children: set[subprocess.Popen] = set()
    stopping = threading.Event()

    def stop_children(signum, frame) -> None:
        """SIGTERM / Ctrl-C of the runner stops the commands too, and starts no more."""
        stopping.set()
        for p in list(children):
            p.kill()
        raise SystemExit(f"interrupted by signal {signum}; rerun the same command to continue")

    signal.signal(signal.SIGTERM, stop_children)
    signal.signal(signal.SIGINT, stop_children)

    running: dict[str, str] = {}  # log file -> command, while it runs
    stop = threading.Event()

    def status() -> None:
        """Every --status-every seconds: the latest progress line of every running command."""
        while not stop.wait(args.status_every):
            for log in list(running):
                print(f"  running {os.path.basename(log)[5:-4]}: {last_line(log)}", flush=True)

    if args.status_every > 0:
        threading.Thread(target=status, daemon=True).start()
    with ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_one, i, c) for i, c in enumerate(todo)]
        for fut in as_completed(futures):
            c, rc, log = fut.result()
            done += 1
            if rc != 0:
                failures.append((c, rc, log))
            el = time.time() - t0
            eta = el / done * (len(todo) - done)
            print(f"[{done}/{len(todo)}] {'ok  ' if rc == 0 else 'FAIL'} {shlex.join(c)} | "
                  f"{el / 60:.1f} min elapsed, ETA {eta / 60:.1f} min", flush=True)
    stop.set()
    if failures:
        print(f"\n{len(failures)} of {len(todo)} commands failed:")
        for c, rc, log in failures:
            print(f"  exit {rc}: {shlex.join(c)}  (log: {log})")
    if bad:
        print(f"\n{len(bad)} lines did not parse and were skipped:")
        for line in bad:
            print(f"  {line}")
    return 1 if failures or bad else 0


if __name__ == "__main__":
    sys.exit(main())
