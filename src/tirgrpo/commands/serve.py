"""`tirgrpo serve`: load a model, start the continuous batcher, answer OpenAI-style requests (tir/serve.py)."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path

from tirgrpo.errors import TirgrpoError
from tirgrpo.kernels import KERNEL_CHOICES
from tirgrpo.validate import device, seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder, run folder, .gguf, or random:SHAPE")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free one, printed at start)")
    parser.add_argument("--served-model-name", default=None, help="name in /v1/models (default: the folder's name)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer (default: the model's own)")
    parser.add_argument("--chat-template", default=None,
                        help="Jinja chat template file for /v1/chat/completions (default: the tokenizer's)")
    parser.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-batch", type=int, default=64, help="rows decoded at once (at most 256)")
    parser.add_argument("--max-prompt-tokens", type=int, default=4096, help="longest prompt (sizes the prompt cache)")
    parser.add_argument("--max-tokens", type=int, default=2048,
                        help="largest max_tokens of a request (sizes the completion cache)")
    parser.add_argument("--max-model-len", type=int, default=None, help="prompt + completion tokens (default: model's)")
    parser.add_argument("--max-request-tokens", type=int, default=1 << 20,
                        help="per-request cap on prompts x n x max_tokens")
    parser.add_argument("--max-queue", type=int, default=1024, help="groups (prompt x n) waiting before 429")
    parser.add_argument("--max-prefill-tokens", type=int, default=8192,
                        help="padded prompt tokens prefilled in one step (a longer prompt goes alone): bounds how "
                             "long admissions pause the running rows; more admits a burst in fewer steps")
    parser.add_argument("--kernels", default="auto", choices=KERNEL_CHOICES,
                        help="FastEngine's decode-step kernels (triton-nogemv: Triton without the GEMV kernels "
                             "and the Triton sampler)")
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed of random:SHAPE weights and of the sampling of requests without a seed (default 0)")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Its protocol must say TCP: asyncio sets TCP_NODELAY on accepted
    connections only then, and without it each small write waits ~40 ms for a delayed ACK."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(1024)
    return sock


def run(args) -> int:
    import uvicorn

    from tirgrpo.config import ModelConfig
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.rollout.continuous import ContinuousBatcher
    from tirgrpo.rollout.engine import BATCH_BUCKETS, FastEngine
    from tirgrpo.tir.serve import Limits, Service, json_error_protocol, make_app
    from tirgrpo.train.model import load_base_model, resolve_device, resolve_dtype, tokenizer_spec

    for name in ("max_batch", "max_prompt_tokens", "max_tokens", "max_request_tokens", "max_queue",
                 "max_prefill_tokens"):
        if getattr(args, name) < 1:
            raise TirgrpoError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise TirgrpoError(f"--port must be in 0..65535, got {args.port}")
    if args.max_batch > BATCH_BUCKETS[-1]:
        raise TirgrpoError(f"--max-batch must be <= {BATCH_BUCKETS[-1]}, got {args.max_batch}")
    if not _is_loopback(args.host):
        print(f"tirgrpo serve: warning: binding {args.host}: anyone who can reach it can use the model "
              "(there is no authentication)", file=sys.stderr)
    chat_template = None
    if args.chat_template:
        try:
            chat_template = Path(args.chat_template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TirgrpoError(f"cannot read --chat-template {args.chat_template}: {e}") from None
    # Bind first: a taken port fails before minutes of model loading.
    try:
        sock = _listen(args.host, args.port)
    except OSError as e:
        raise TirgrpoError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None

    cfg = ModelConfig(name_or_path=args.model, tokenizer=args.tokenizer or "")
    device = resolve_device(args.device)
    model = load_base_model(cfg, device, resolve_dtype(args.dtype, device), seed=args.seed).eval()
    tokenizer = load_tokenizer(tokenizer_spec(cfg))
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    max_len = args.max_model_len or int(getattr(model.config, "max_position_embeddings", 4096))
    engine = FastEngine(model, tokenizer, max_batch=args.max_batch, kernels=args.kernels)
    batcher = ContinuousBatcher(engine, args.max_batch, min(args.max_prompt_tokens, max_len),
                                min(args.max_tokens, max_len), args.max_prefill_tokens, args.seed)
    batcher.warmup()
    # The batcher thread and the event loop share the GIL: hand it over within 1 ms, not
    # Python's default 5 ms, so neither waits a whole decode step for the other.
    sys.setswitchinterval(0.001)
    batcher.start()  # on CUDA, after prefills of 1, 2, 4, ... prompts on its thread (warm_prefill)
    name = args.served_model_name or Path(args.model.rstrip("/")).name
    limits = Limits(max_model_len=max_len, max_prompt_tokens=batcher.max_prompt_len, max_tokens=batcher.max_new_tokens,
                    max_n=min(args.max_batch, 128), max_request_tokens=args.max_request_tokens, max_queue=args.max_queue)
    app = make_app(Service(batcher, tokenizer, name, limits))
    config = uvicorn.Config(app, http=json_error_protocol(), lifespan="off", log_level="warning",
                            timeout_graceful_shutdown=1)
    host, port = sock.getsockname()[:2]
    # One parseable line: tests and scripts wait for it (with --port 0 it names the chosen port).
    print(f"tirgrpo serve: serving {name!r} on http://{host}:{port}/v1 (max batch {args.max_batch}, "
          f"{engine.kernels.name} kernels, CUDA graphs {'on' if engine.graphs_enabled else 'off'})",
          file=sys.stderr, flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        batcher.stop()
    return 0
