"""benchmark/run.py: result paths, skipping finished runs, carrying on after a failure, dry run."""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmark"))
from run import result_path  # noqa: E402


def test_result_path_follows_the_scripts_run_names():
    assert result_path(["python", "qp_sft.py", "--env", "antdir", "--tuning", "lora", "--seed", "2"]) == \
        os.path.join("runs", "qp_sft_antdir_lora_expert_n50_s2", "result.json")
    assert result_path(["python", "qp_sft.py", "--sparse-reward", "--max-target", "--num-trajs", "10", "--quality",
                        "medium", "--run-dir", "x"]) == os.path.join("x", "qp_sft_halfcheetahvel_full_medium_n10_sparse_maxq_s1", "result.json")
    assert result_path(["python", "sft.py", "--run-name=abc", "--run-dir=y"]) == os.path.join("y", "abc", "result.json")


def test_runner_skips_done_runs_and_lists_failures(tmp_path):
    done = tmp_path / "runs" / "sft_halfcheetahvel_full_expert_n50_s1"
    done.mkdir(parents=True)
    (done / "result.json").write_text(json.dumps({"best": 0}))
    cmds = tmp_path / "cmds.txt"
    cmds.write_text(f"# a comment\npython sft.py --run-dir {tmp_path / 'runs'}\n\n"
                    f"python no_such_script.py --run-dir {tmp_path / 'runs'}\n"
                    f"python -c 'print(1)'\n")
    run = lambda *a: subprocess.run([sys.executable, "benchmark/run.py", str(cmds), "--log-dir", str(tmp_path / "logs"), *a],  # noqa: E731
                                    cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = run("--dry-run")
    assert out.returncode == 0 and "3 commands, 1 already done, 2 to run" in out.stdout
    assert "no_such_script.py" in out.stdout and "sft.py" not in out.stdout.split("to run")[1]
    out = run("--workers", "2")
    assert out.returncode == 1
    assert "[2/2]" in out.stdout and "1 of 2 commands failed" in out.stdout and "no_such_script.py" in out.stdout
    assert len(os.listdir(tmp_path / "logs")) == 2


def test_bad_lines_and_missing_programs_are_failures_in_the_summary_not_crashes(tmp_path):
    cmds = tmp_path / "cmds.txt"
    cmds.write_text("python -c 'print(1)\nno_such_program --flag\npython -c 'print(2)'\n")
    out = subprocess.run([sys.executable, "benchmark/run.py", str(cmds), "--log-dir", str(tmp_path / "logs"),
                          "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    assert "skipping a line that does not parse: python -c 'print(1)" in out.stdout
    assert "1 of 2 commands failed" in out.stdout and "exit 127: no_such_program --flag" in out.stdout
    assert "1 lines did not parse" in out.stdout
    out = subprocess.run([sys.executable, "benchmark/run.py", str(cmds), "--workers", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--workers must be at least 1" in out.stderr and "Traceback" not in out.stderr


def test_the_commands_die_with_the_runner_even_after_kill_9(tmp_path):
    pid_file = tmp_path / "pid"
    cmds = tmp_path / "cmds.txt"
    cmds.write_text(f"python -c 'import os, time; open(\"{pid_file}\", \"w\").write(str(os.getpid())); time.sleep(120)'\n")
    runner = subprocess.Popen([sys.executable, "benchmark/run.py", str(cmds), "--log-dir", str(tmp_path / "logs")],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (pid_file.exists() and pid_file.read_text()) and time.time() - t0 < 60:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    runner.kill()  # SIGKILL: no handler runs in the runner
    runner.wait()

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/status") as f:
                return "\nState:\tZ" not in f.read()  # a zombie has ended
        except FileNotFoundError:
            return False

    t0 = time.time()
    while alive(child) and time.time() - t0 < 10:
        time.sleep(0.05)
    assert not alive(child)


def spans(tmp_path, n: int) -> tuple[str, list]:
    """n commands that each record (start, end, CUDA_VISIBLE_DEVICES) in a file, and a reader of them."""
    lines = "".join(f"python -c 'import os, time, json; t = time.time(); time.sleep(1.0); "
                    f"json.dump([t, time.time(), os.environ.get(\"CUDA_VISIBLE_DEVICES\")], "
                    f"open(\"{tmp_path / f'span{i}.json'}\", \"w\"))'\n" for i in range(n))
    return lines, lambda: [json.loads((tmp_path / f"span{i}.json").read_text()) for i in range(n)
                           if (tmp_path / f"span{i}.json").exists()]


def overlap(s: list) -> int:
    """the largest number of spans running at one moment"""
    return max(sum(a <= t < b for a, b, _ in s) for t, _, _ in s)


def test_submitit_local_executor_caps_parallelism_skips_done_runs_and_reports_failures(tmp_path):
    done = tmp_path / "runs" / "sft_halfcheetahvel_full_expert_n50_s1"
    done.mkdir(parents=True)
    (done / "result.json").write_text(json.dumps({"best": 0}))
    lines, read = spans(tmp_path, 4)
    cmds = tmp_path / "cmds.txt"
    cmds.write_text(f"python sft.py --run-dir {tmp_path / 'runs'}\n{lines}python -c 'import sys; sys.exit(3)'\n")
    out = subprocess.run([sys.executable, "benchmark/run.py", str(cmds), "--executor", "submitit-local", "--workers",
                          "2", "--log-dir", str(tmp_path / "logs"), "--poll", "0.2"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    assert "6 commands, 1 already done, 5 to run" in out.stdout and "[5/5]" in out.stdout
    assert "1 of 5 commands failed" in out.stdout and "exit 3:" in out.stdout
    s = read()
    assert len(s) == 4 and overlap(s) <= 2  # every command ran, never more than --workers at once
    assert os.path.isdir(tmp_path / "logs" / "submitit")  # submitit's own job files


def test_gpus_give_each_worker_slot_its_own_device(tmp_path):
    lines, read = spans(tmp_path, 4)
    cmds = tmp_path / "cmds.txt"
    cmds.write_text(lines)
    out = subprocess.run([sys.executable, "benchmark/run.py", str(cmds), "--workers", "2", "--gpus", "3", "5",
                          "--log-dir", str(tmp_path / "logs")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    s = read()
    assert sorted({g for _, _, g in s}) == ["3", "5"]
    for a0, a1, ga in s:  # two commands running at once never share a GPU
        assert all(gb != ga for b0, b1, gb in s if (b0, b1) != (a0, a1) and b0 < a1 and a0 < b1)
