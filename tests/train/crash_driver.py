"""Kill a training run again and again (SIGKILL at chosen moments), resuming each time.

Run as `python crash_driver.py PLAN.json` by tests/train/test_crash_resume.py. The driver
imports tirgrpo and torch once, then forks one trainer per attempt (so the 20+ attempts cost
training time, not interpreter start-ups). In each child a hook sends SIGKILL to the child
itself at the planned moment:

- `rollout` / `update`: at the N-th call of the engine's `generate` / of `grpo_update`, after a
  random delay from the call's start (so inside it, or in whatever runs next);
- `checkpoint`: at the N-th `torch.save` inside `save_checkpoint`, right after it wrote that
  file: the checkpoint folder is half written;
- `time`: after a random delay from the child's start (loading, eval, anywhere).

A killed attempt is followed by `train --resume RUN_DIR`, or by a fresh `train --overwrite`
when no checkpoint exists yet; when a run finishes before the planned moment comes, the next
kill goes to a new run (RUN_DIR-1, RUN_DIR-2, ...). Prints one JSON line: what happened to each
attempt and in which run folder.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after(delay: float) -> None:
    timer = threading.Timer(delay, _kill_self)
    timer.daemon = True
    timer.start()


def install_hook(kill: dict) -> None:
    """Arrange for this process to die at the moment `kill` describes."""
    import torch

    import tirgrpo.train.checkpoint as checkpoint
    import tirgrpo.train.step as step
    from tirgrpo.rollout.engine import FastEngine
    from tirgrpo.rollout.simple import SimpleEngine

    phase, nth, delay = kill["phase"], kill["occurrence"], kill["delay"]
    calls = [0]

    def counted(real, after_call: bool = False):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == nth and not after_call:
                _after(delay)
            out = real(*args, **kwargs)
            if calls[0] == nth and after_call:
                _kill_self()
            return out
        return wrapper

    if phase == "rollout":
        FastEngine.generate = counted(FastEngine.generate)
        SimpleEngine.generate = counted(SimpleEngine.generate)
    elif phase == "update":
        step.grpo_update = counted(step.grpo_update)
    elif phase == "checkpoint":
        checkpoint.torch = type(sys)("torch_with_hook")  # only checkpoint.py's torch.save is hooked
        checkpoint.torch.__dict__.update(torch.__dict__)
        checkpoint.torch.save = counted(torch.save, after_call=True)
    elif phase == "time":
        _after(delay)
    else:
        raise ValueError(phase)


def attempt(argv: list[str], kill: dict | None) -> dict:
    """Fork a trainer running `tirgrpo ARGV` (with the kill hook); wait; say how it ended."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if kill is not None:
                install_hook(kill)
            from tirgrpo.cli import main

            code = main(argv)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 1)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {"argv": argv[:2], "kill": kill, "killed": killed,
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)}


def main() -> None:
    plan = json.loads(open(sys.argv[1]).read())
    import torch  # noqa: F401  (imported once, before any fork)

    import tirgrpo.cli  # noqa: F401
    import tirgrpo.train.loop  # noqa: F401

    results = [attempt(["train", "--config", plan["reference_config"]], None)]
    runs = [plan["run_dir"] + "-0"]
    fresh = True
    for kill in plan["kills"] + [None]:  # None: the last attempt runs to the end
        run_dir = runs[-1]
        if fresh:
            argv = ["train", "--config", plan["config"], "--set", f"run.out_dir={run_dir}"]
            if os.path.exists(run_dir):
                argv.append("--overwrite")  # killed before its first checkpoint: start over
        else:
            argv = ["train", "--resume", run_dir]
        result = attempt(argv, kill)
        result["run_dir"] = run_dir
        results.append(result)
        if not result["killed"] and kill is not None:
            # The run finished before this kill's moment came: start another run, so that
            # every kill of the plan hits a live trainer. Each finished run is checked.
            runs.append(plan["run_dir"] + f"-{len(runs)}")
            fresh = True
        else:
            fresh = not os.path.exists(os.path.join(run_dir, "checkpoints", "latest"))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
