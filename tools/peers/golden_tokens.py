#!/usr/bin/env python3
"""Golden token ids of tests/slm_text.rs, from llama.cpp's own tokenizer.

Runs the `llama-tokenize` binary of a native llama.cpp build over the default model for every string
tests/slm_text.rs checks, and prints the Rust arrays to paste there. The strings live here and in the
test; keep them equal.

    python3 tools/peers/golden_tokens.py --llama-tokenize PATH [--model GGUF]

PATH is llama.cpp's `llama-tokenize` (scripts/setup-peers.sh builds llama.cpp); GGUF defaults to
models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-models.sh). Needs only the Python standard library.
Each string goes in on stdin with escape processing and BOS off, so llama.cpp sees exactly its bytes and
adds nothing (Slate's `encode` adds no BOS either; SmolLM2's `add_bos_token` is false).
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# tests/slm_text.rs `known_ids`: checked with and without special-token parsing (none occurs in them).
KNOWN = [
    "Hello world",
    " 12345 and 3.14159",
    'fn main() {\n    println!("hi");\n}\n',
    "Café crème brûlée",
    "日本語のテキスト",
    "emoji 🎉🚀",
]
# tests/slm_text.rs `control_tokens`: a control token's text, parsed as the token and as plain text.
CONTROL = "<|im_start|>"
# tests/slm_text.rs `chat_template_adds_the_default_system_prompt`: the rendered prompt (the test
# asserts the rendering itself).
CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
)


def tokenize(binary, model, text, parse_special):
    """llama.cpp's token ids of `text`."""
    cmd = [binary, "-m", model, "--stdin", "--ids", "--log-disable", "--no-escape", "--no-bos"]
    if not parse_special:
        cmd.append("--no-parse-special")
    out = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr.decode(errors='replace')}")
    # `--ids` prints one line `[1, 2, 3]`; anything before it is logging that escaped --log-disable.
    lines = [l for l in out.stdout.decode().splitlines() if l.startswith("[")]
    if len(lines) != 1:
        sys.exit(f"unexpected llama-tokenize output for {text!r}:\n{out.stdout.decode(errors='replace')}")
    return json.loads(lines[0])


def rust_str(s):
    """`s` as a Rust string literal."""
    body = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{body}"'


def rust_ids(ids):
    return "[" + ", ".join(str(i) for i in ids) + "]"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-tokenize", required=True, help="llama.cpp's llama-tokenize binary")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="the GGUF file (default: %(default)s)")
    a = ap.parse_args()
    if not os.path.isfile(a.model):
        sys.exit(f"{a.model} is missing: run scripts/fetch-models.sh")
    tok = lambda text, special=True: tokenize(a.llama_tokenize, a.model, text, special)

    print("// known_ids: `cases`")
    for text in KNOWN:
        ids = tok(text)
        plain = tok(text, special=False)
        if ids != plain:
            sys.exit(f"{text!r}: ids differ with and without special parsing: {ids} vs {plain}")
        print(f"        ({rust_str(text)}, &{rust_ids(ids)}),")
    print(f"// control_tokens: {CONTROL} parsed as a control token")
    print(f"    vec!{rust_ids(tok(CONTROL))}")
    print(f"// control_tokens: {CONTROL} as plain text")
    print(f"    vec!{rust_ids(tok(CONTROL, special=False))}")
    print("// chat_template_adds_the_default_system_prompt: the rendered prompt")
    print(f"    vec!{rust_ids(tok(CHAT))}")


if __name__ == "__main__":
    main()
