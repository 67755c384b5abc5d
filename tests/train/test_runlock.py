"""One writer per run folder: the lock refuses a second trainer (naming the holder's pid), is
released when its holder dies, and a refused run leaves nothing in the run folder."""

import os
import signal
import subprocess
import sys

import pytest

from tirgrpo.cli import main
from tirgrpo.errors import TirgrpoError
from tirgrpo.train.runlock import LOCK_NAME, RunLock

HOLD = """
import sys, time
from tirgrpo.train.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock of tmp_path/run; killed (-9) at the end if still alive."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_second_writer_refused_with_pid_then_free_after_kill_9(tmp_path, holder):
    with pytest.raises(TirgrpoError, match=rf"in use by another tirgrpo process \(pid {holder.pid}\)"):
        RunLock(tmp_path / "run").acquire()
    holder.send_signal(signal.SIGKILL)  # a crash: no cleanup code runs
    holder.wait()
    with RunLock(tmp_path / "run"):  # the kernel dropped the lock with the process
        pass


def test_resume_of_a_live_run_refused_through_the_cli(tmp_path, holder, capsys):
    (tmp_path / "run" / "config.toml").write_text("", encoding="utf-8")
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"pid {holder.pid}" in err and "in use" in err and "Traceback" not in err


def test_same_process_second_lock_refused_and_release_reopens(tmp_path):
    lock = RunLock(tmp_path / "run").acquire()
    with pytest.raises(TirgrpoError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path / "run").acquire()
    lock.release()
    assert not (tmp_path / "run").exists()  # made by the lock, nothing else written: removed again
    with RunLock(tmp_path / "runs" / "a" / "b"):
        pass
    assert not (tmp_path / "runs").exists()  # and the parents it made


def test_existing_folder_and_its_files_are_kept(tmp_path):
    (tmp_path / "run").mkdir()
    with RunLock(tmp_path / "run"):
        (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    assert (tmp_path / "run" / "metrics.jsonl").exists() and (tmp_path / "run" / LOCK_NAME).exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(TirgrpoError, match="not a folder"):
        RunLock(tmp_path / "file").acquire()


@pytest.mark.parametrize("override", ["rollout.group_size=1", "optim.lr=0", "model.name_or_path=/no/such/model"])
def test_refused_run_leaves_nothing(tmp_path, override, capsys):
    out = tmp_path / "run"
    code = main(["train", "--set", f"run.out_dir={out}", "--set", "run.device=cpu",
                 "--set", "model.name_or_path=random:tiny-qwen2", "--set", override])
    assert code == 2
    assert not out.exists()
    assert "Traceback" not in capsys.readouterr().err
