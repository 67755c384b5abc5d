"""Run logging: metrics.jsonl (one row per rollout), TensorBoard scalars, kept samples."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    """All rows of a run log (metrics.jsonl, samples.jsonl; empty list when missing), each an
    object with an integer `step`; anything else is a TirgrpoError naming the file and line.

    A last line without its newline that does not parse is left out: a run killed while it
    appended leaves one, and the rest of its log is still good to plot and report.
    """
    from tirgrpo.errors import TirgrpoError

    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TirgrpoError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = text.split("\n")
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            if n == len(lines):  # the unterminated last line: an append cut short
                continue
            raise TirgrpoError(f"{path}, line {n}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise TirgrpoError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
        if type(row.get("step")) is not int:
            raise TirgrpoError(f"{path}, line {n}: no integer 'step' (every row of a run log has one)")
        rows.append(row)
    return rows


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them visible as strings
    return v


class RunLog:
    """Appends metric rows and samples to a run folder; mirrors scalars to TensorBoard.

    On resume, rows after the checkpoint's step are dropped first, so the log of a resumed
    run reads as if it had never stopped. `redo_evals` (resuming from the last step, whose
    final evaluation runs again) also drops the evaluation rows logged at that step.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None,
                 redo_evals: bool = False):
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        if resume_step is not None:
            def kept(row: dict) -> bool:
                step = row.get("step", 0)
                redone = redo_evals and step == resume_step and "reward/total" not in row and "completion" not in row
                return step <= resume_step and not redone

            from tirgrpo.files import atomic_write_text

            for path in (self.metrics_path, self.samples_path):
                rows = [r for r in read_jsonl(path) if kept(r)]
                # Whole or not at all: a full disk or a kill mid-write must not cut the run's history.
                atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but a user may have removed it
                self.tb = None

    def log(self, row: dict) -> None:
        """Append one metrics row (must hold `step`)."""
        row = {k: _clean(v) for k, v in row.items()}
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()

    def samples(self, step: int, samples: list[dict]) -> None:
        with self.samples_path.open("a", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps({"step": step, **s}, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class DeviceTimer:
    """Seconds of the work queued between `start()` and `stop()`, without waiting for it: on
    CUDA two timing events (read `seconds()` after something later has synchronised, or it
    waits for the end event), elsewhere the wall clock."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if self.cuda else None
        self.times = [0.0, 0.0]
        self.stopped = False

    def start(self) -> None:
        """Mark the start (an event on the current stream, or now)."""
        if self.cuda:
            self.events[0].record()
        else:
            self.times[0] = time.perf_counter()

    def stop(self) -> None:
        """Mark the end."""
        if self.cuda:
            self.events[1].record()
        else:
            self.times[1] = time.perf_counter()
        self.stopped = True

    def seconds(self) -> float:
        """start -> stop in seconds (on CUDA: waits for the end event if it has not run yet);
        0 when never stopped."""
        if not self.stopped:
            return 0.0
        if self.cuda:
            self.events[1].synchronize()
            return self.events[0].elapsed_time(self.events[1]) / 1000
        return self.times[1] - self.times[0]


def peak_memory_gib(device) -> float:
    """Peak allocated accelerator memory (GiB) since the last reset; CPU: peak RSS of the process."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # KiB on Linux
