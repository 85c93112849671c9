"""A real 2-process CPU launch (`accelerate launch --multi_gpu`, gloo) of a toy stage that trains on and on:
`kill -9` of the launcher's process group, or of one rank, leaves no rank running."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two ranks in subprocesses

REPO = Path(__file__).resolve().parents[1]
TOY = """
import os, sys, time
sys.path.insert(0, {tests!r})
from test_faults import BASE, toy_stage
from spark_vlm.training.cli import run_cli
from spark_vlm.training.stage1_config import Stage1Config

def poison(model, batch, call):  # not poison: say which pid trains, then train slowly
    if call == 1:
        open(os.path.join({out!r}, "pid_" + os.environ["RANK"]), "w").write(str(os.getpid()))
    time.sleep(0.05)

sys.exit(run_cli(Stage1Config, toy_stage(poison), "toy", [*BASE, "train.output_dir=" + {out!r},
                 "train.max_steps=1000000", "train.save_every=0"]))
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has stopped; only its parent's reaping is left


def wait_until(condition, limit_s: float) -> bool:
    """Poll `condition` until it holds or `limit_s` passes (a bound on a hang, not a speed assertion)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("victim", ["launcher group", "rank 1"])
def test_a_killed_launcher_or_rank_leaves_no_rank_running(tmp_path, victim):
    out = tmp_path / "run"
    out.mkdir()
    script = tmp_path / "toy_train.py"
    script.write_text(TOY.format(tests=str(REPO / "tests"), out=str(out)))
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = (tmp_path / "launch.log").open("w")
    launcher = subprocess.Popen([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                 "--mixed_precision", "no", "--dynamo_backend", "no", str(script)],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pid_files = [out / "pid_0", out / "pid_1"]
    try:
        started = wait_until(lambda: all(p.exists() and p.read_text() for p in pid_files)
                             or launcher.poll() is not None, 300)
        assert started and launcher.poll() is None, (tmp_path / "launch.log").read_text()[-3000:]
        ranks = [int(p.read_text()) for p in pid_files]
        assert all(alive(pid) for pid in ranks)
        if victim == "launcher group":  # what the issue measured: both ranks kept running
            os.killpg(launcher.pid, signal.SIGKILL)
        else:
            os.kill(ranks[1], signal.SIGKILL)
        assert wait_until(lambda: not any(alive(pid) for pid in ranks), 90), \
            f"still running: {[pid for pid in ranks if alive(pid)]}"
        assert wait_until(lambda: launcher.poll() is not None, 90)
        assert launcher.returncode != 0
    finally:
        for pid in [launcher.pid, *[int(p.read_text()) for p in pid_files if p.exists() and p.read_text()]]:
            try:  # never leave anything of this test behind, whatever failed above
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        launcher.wait()
        log.close()


@pytest.mark.parametrize("processes", [["--num_processes", "1"], ["--multi_gpu", "--num_processes", "2"]])
def test_launch_wrapper_keeps_one_error_line_and_exit_code_2(tmp_path, processes):
    """`accelerate launch` itself would add a CalledProcessError / ChildFailedError report (~30 lines) and exit 1."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "spark_vlm.launch", *processes, "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "stage1_pretrain/train.py"),
                           "train.batch_size=0", f"train.output_dir={tmp_path / 'x'}"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == ["config error: train.batch_size: must be > 0, got 0"], proc.stderr
    assert not (tmp_path / "x").exists()


def test_launch_wrapper_names_a_crashed_rank_in_one_line(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text("import os, sys\nsys.exit(3 if os.environ['RANK'] == '1' else 0)\n")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "spark_vlm.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: rank 1 (pid ") and lines[-1].endswith(") failed with exit code 3 (its output "
                                                                              "is above)"), proc.stderr
    assert "Traceback" not in proc.stderr
