"""Load and streaming measurements of `serve.py` on the tiny model (or an export you pass).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_load.py                      # tiny model, built here
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_load.py --export runs/demo/export --max-tokens 64

1. Load: `--requests` chat requests (mixed prompts, lengths, greedy and seeded sampling) sent
   `--concurrency` at a time with the `openai` client, then the same requests one at a time
   (each decoded alone: its batch-1 answer). Every concurrent answer must equal its batch-1
   answer (none lost or swapped); prints the throughput ratio concurrent / sequential.
2. Streaming: time to first token and the leak (tokens of the answer the client received before
   the gate intervened, from the `safety` trace) with the default hold-back and without it
   (`safety: {"hold_back": false}`, which this server allows). With the tiny model the head is
   set so that probes turn malicious part-way through some answers (`--gate.schedule each`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "How do I bake bread?", "Tell me a long story about a dragon.", "hi", "What is 2+2?",
    "Name three colours.", "Write a haiku about rain.", "Explain photosynthesis briefly.", "Give me a packing list.",
]


def tiny_export(folder: Path) -> Path:
    """The tests' lively tiny Llama; its head is random with a bias that makes some mid-answer probes malicious."""
    import torch

    from lightning_modules.safety_signal_lm import SafetySignalLM
    from safety_signal.decoding import DecodingConfig, SafetyGatedGenerator
    from safety_signal.gate import GatePolicy
    from tests.conftest import tiny_overrides

    torch.manual_seed(0)
    module = SafetySignalLM(config_overrides={**tiny_overrides(), "initializer_range": 0.2})
    module.configure_model()
    module.eval()
    with torch.no_grad():
        module.head.weight.copy_(torch.randn(module.head.weight.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
        module.head.bias.zero_()
    answers = SafetyGatedGenerator(module, GatePolicy(level="low", schedule="each"),
                                   DecodingConfig(max_new_tokens=32)).generate(PROMPTS)
    first = torch.logit(torch.tensor([a.verdict_probs[0] for a in answers]))
    later = torch.logit(torch.tensor([p for a in answers for p in a.verdict_probs[1:]]))
    # benign [CLS] verdicts on every prompt, the top ~15% of later probes malicious
    bias = -max(float(first.max()) + 0.01, float(torch.quantile(later, 0.85)))
    with torch.no_grad():
        module.head.bias.fill_(bias)
    module.export_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(args: list[str], log_path: Path, timeout: float = 300):
    """`python serve.py ARGS` on a free 127.0.0.1 port; yields the base URL, stops the process group after."""
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), "--port", str(port), *args], cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + log_path.read_text()[-4000:])
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def load_test(client, n: int, concurrency: int, max_tokens: int) -> dict:
    requests = [(PROMPTS[i % len(PROMPTS)], max(4, max_tokens - (i * 7) % (max_tokens // 2 + 1)),
                 {} if i % 3 else {"temperature": 0.9, "top_p": 0.95, "seed": i}) for i in range(n)]

    def ask(request):
        prompt, tokens, sampling = request
        response = client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=tokens, **sampling)
        choice = response.choices[0]
        return choice.message.content, response.usage.completion_tokens, choice.model_extra["safety"]["batch_size"]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        concurrent = list(pool.map(ask, requests))
    concurrent_s = time.perf_counter() - start
    start = time.perf_counter()
    sequential = [ask(r) for r in requests]
    sequential_s = time.perf_counter() - start
    mismatches = [i for i, (c, s) in enumerate(zip(concurrent, sequential)) if c[0] != s[0]]
    tokens = sum(s[1] for s in sequential)
    return {
        "requests": n, "concurrency": concurrency, "completion_tokens": tokens,
        "concurrent_s": round(concurrent_s, 3), "sequential_s": round(sequential_s, 3),
        "concurrent_tok_per_s": round(tokens / concurrent_s, 1), "sequential_tok_per_s": round(tokens / sequential_s, 1),
        "throughput_ratio": round(sequential_s / concurrent_s, 2),
        "mean_batch_size": round(statistics.mean(c[2] for c in concurrent), 2),
        "sequential_batch_sizes": sorted({s[2] for s in sequential}),
        "answers_equal_batch_one": not mismatches and len(concurrent) == n, "mismatches": mismatches,
    }


def streaming_test(client, prompts: list[str], max_tokens: int, repeats: int) -> dict:
    out = {}
    for hold_back in (True, False):
        ttft, leaks, withheld, intervened = [], [], [], 0
        for _ in range(repeats):
            for prompt in prompts:
                start = time.perf_counter()
                first, trace = None, None
                stream = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, stream=True,
                    extra_body={"safety": {"hold_back": hold_back}})
                for chunk in stream:
                    choice = chunk.choices[0]
                    if choice.delta.content and first is None:
                        first = time.perf_counter() - start
                    if choice.finish_reason:
                        trace = choice.model_extra["safety"]
                if first is not None:
                    ttft.append(first)
                if trace["intervened"] and trace["intervention_step"] > 0:
                    intervened += 1
                    leaks.append(trace["leaked_tokens"])
                    withheld.append(trace["withheld_tokens"])
        out["hold_back" if hold_back else "no_hold_back"] = {
            "ttft_ms_median": round(1000 * statistics.median(ttft), 1),
            "mid_answer_interventions": intervened,
            "leaked_tokens_mean": round(statistics.mean(leaks), 2) if leaks else None,
            "withheld_tokens_mean": round(statistics.mean(withheld), 2) if withheld else None,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", default=None, help="an export folder (default: the tiny model, built here)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="streaming: passes over the prompts")
    parser.add_argument("--tau", type=int, default=3)
    args = parser.parse_args()

    import openai

    with tempfile.TemporaryDirectory() as tmp:
        export = Path(args.export) if args.export else tiny_export(Path(tmp) / "export")
        server_args = ["--model", str(export), "--threads", "1", "--max_batch_size", str(args.concurrency),
                       "--batch_timeout", "0.02", "--allow_weaker_overrides", "true", "--gate.schedule", "each",
                       "--gate.tau", str(args.tau), "--max_tokens_limit", str(max(1024, args.max_tokens))]
        with running_server(server_args, Path(tmp) / "server.log") as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
            load = load_test(client, args.requests, args.concurrency, args.max_tokens)
            streaming = streaming_test(client, PROMPTS, args.max_tokens, args.repeats)
    result = {"export": args.export or "tiny (built here)", "tau": args.tau, "load": load, "streaming": streaming}
    print(json.dumps(result, indent=2))
    print(f"throughput concurrent/sequential: {load['throughput_ratio']}x "
          f"({load['concurrent_tok_per_s']} vs {load['sequential_tok_per_s']} tokens/s); "
          f"answers equal batch-1: {load['answers_equal_batch_one']}")
    if not load["answers_equal_batch_one"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
