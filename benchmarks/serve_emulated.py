"""`tirgrpo serve` with the GPU's share emulated: the server's host side, measured on a CPU.

    PYTHONPATH=$PWD/src python benchmarks/serve_emulated.py [--decode-ms 2.8 ...] serve --model random:tiny-qwen2 ...

(`benchmarks/serve_load.py --emulate-gpu` starts the server this way.) The batcher's prefill
and decode step are replaced: a prefill makes `--prefill-launches` tiny torch calls (the
launches of transformers' forward, each of which lets go of the GIL, as a real launch does) and
sleeps until `--prefill-ms` + `--prefill-token-us` x its padded tokens have passed; a decode
step returns at once and the next sampling first sleeps (the GIL free, as in a CUDA
synchronisation) until `--decode-ms` + `--decode-row-ms` x rows have passed since the step
began. Their logits are random, over the first `--vocab` token ids (sampling them on the CPU
costs what a GPU's sampling costs the host: little; an end-of-sequence id past them is never
sampled, so use `ignore_eos` or `max_tokens`). Everything else is the real
code: admission, sampling, text and stop strings, the hand-off to the event loop, the HTTP and
SSE side, the GIL between the batcher's thread and the event loop.

The defaults stand for a 1.5B Qwen2 on an H200 (docs/benchmarks.md). A decode step of
2.8 ms + 0.01 ms a row is 2.88 ms at batch 8 (measured: 2.55-2.85 ms) and 3.44 ms at 64, short
of the measured 4.2 (`--decode-ms 2.6 --decode-row-ms 0.025` gives 2.8 and 4.2). A prefill of
8 ms + 5 us a padded token is 23 ms for one 3,072-token prompt, 7.6 us a token (measured: 6-10
us a token). ~1,100 launches is transformers' 28-layer forward. With these defaults,
serve_load.py with the httpx client lands near the H200's throughput at every level and its
time to first token at 256 streams, but not its 8-stream time to first token
(docs/benchmarks.md, "Serving under load").
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from tirgrpo.rollout import continuous


def emulate(decode_ms: float, decode_row_ms: float, prefill_ms: float, prefill_token_us: float,
            prefill_launches: int, vocab: int) -> None:
    """Patch `ContinuousBatcher` (this process only) as the module's docstring says."""
    Batcher = continuous.ContinuousBatcher
    ready = [0.0]  # when the decode step launched last is done
    scratch = torch.zeros(16)

    def width(batcher) -> int:
        return min(vocab, batcher.engine.lm_head.out_features)

    def prefill(self, batch):
        t0 = time.perf_counter()
        for _ in range(prefill_launches):
            scratch.add_(0.0)
        time.sleep(max(0.0, ready[0] - time.perf_counter()))  # the GPU finishes the step before
        tokens = len(batch) * max(len(g.prompt_ids) for g in batch)
        time.sleep(max(0.0, t0 + (prefill_ms + prefill_token_us * 1e-3 * tokens) / 1000 - time.perf_counter()))
        return torch.randn(len(batch), width(self))

    def decode(self, tokens):
        n = len(self.rows)
        ready[0] = max(ready[0], time.perf_counter()) + (decode_ms + decode_row_ms * n) / 1000
        for r in range(n):
            self.comp_pos[r] += 1
        return torch.randn(n, width(self))

    sample = Batcher._sample

    def sample_after_the_step(self, logits):
        time.sleep(max(0.0, ready[0] - time.perf_counter()))
        return sample(self, logits)

    init = Batcher.__init__

    def init_without_unreachable_eos(self, engine, *a, **k):
        init(self, engine, *a, **k)
        engine.eos = {e for e in engine.eos if e < width(self)}  # the eos mask indexes the logits
        self.record_first = False  # as on a GPU: the host records while the "GPU" decodes

    Batcher._prefill, Batcher._decode, Batcher._sample = prefill, decode, sample_after_the_step
    Batcher.__init__ = init_without_unreachable_eos


def main() -> int:
    """Patch the batcher with this script's options, then run the `tirgrpo` command line on the
    arguments left over (`serve ...`); returns its exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], usage="%(prog)s [options] serve ...",
                                 allow_abbrev=False)
    ap.add_argument("--decode-ms", type=float, default=2.8, help="a decode step's fixed time")
    ap.add_argument("--decode-row-ms", type=float, default=0.01, help="and its time per row")
    ap.add_argument("--prefill-ms", type=float, default=8.0, help="a prefill's fixed time")
    ap.add_argument("--prefill-token-us", type=float, default=5.0, help="and its time per padded prompt token")
    ap.add_argument("--prefill-launches", type=int, default=1100, help="torch calls a prefill makes on the host")
    ap.add_argument("--vocab", type=int, default=512, help="token ids the random logits cover")
    args, rest = ap.parse_known_args()
    emulate(args.decode_ms, args.decode_row_ms, args.prefill_ms, args.prefill_token_us, args.prefill_launches,
            args.vocab)
    from tirgrpo.cli import main as tirgrpo

    return tirgrpo(rest)


if __name__ == "__main__":
    sys.exit(main())
