"""llama.cpp peer for `slate bench slm` (benchmark-time only; never a runtime dependency of Slate).

Runs the same GGUF through llama-cpp-python with the same thread count and prints one JSON line:
{"version": ..., "prefill": {"128": tok/s, ...}, "decode": tok/s} (medians over --rounds).
Prefill: eval of P prompt tokens in one batch from an empty cache. Decode: one token per eval after a
128-token prompt, greedy (argmax of the last logits), G tokens.
"""
import argparse
import json
import statistics
import time

import llama_cpp
import numpy as np

TEXT = (
    "The history of the printing press begins in the fifteenth century, when movable type changed how "
    "books were made, sold and read across Europe, and with them how ideas travelled."
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", default="128,512")
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    prompts = [int(p) for p in a.prompt_tokens.split(",")]
    n_ctx = max(prompts + [128]) + a.gen_tokens + 16
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        n_ctx=n_ctx,
        n_batch=max(prompts + [128]),
        n_ubatch=max(prompts + [128]),
        verbose=False,
    )
    ids = llm.tokenize(TEXT.encode(), add_bos=False, special=False)

    def prompt(n):
        return [ids[i % len(ids)] for i in range(n)]

    # Warm-up.
    llm.reset()
    llm.eval(prompt(16))
    prefill = {}
    for p in prompts:
        rates = []
        for _ in range(a.rounds):
            llm.reset()
            toks = prompt(p)
            t0 = time.perf_counter()
            llm.eval(toks)
            rates.append(p / (time.perf_counter() - t0))
        prefill[str(p)] = statistics.median(rates)
    decode = []
    for _ in range(a.rounds):
        llm.reset()
        llm.eval(prompt(128))
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t0 = time.perf_counter()
        for _ in range(a.gen_tokens - 1):
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        decode.append((a.gen_tokens - 1) / (time.perf_counter() - t0))
    print(json.dumps({"version": "llama-cpp-python " + llama_cpp.__version__, "prefill": prefill, "decode": statistics.median(decode)}))


if __name__ == "__main__":
    main()
