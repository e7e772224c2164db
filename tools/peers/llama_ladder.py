"""llama.cpp's quantization ladder of a GGUF model, for docs/COMPRESSION.md (benchmark-time only).

Run with the peers venv (scripts/setup-peers.sh installs the pinned `gguf` package and builds
`llama-quantize` and `llama-perplexity` natively from the llama-cpp-python sdist's vendored llama.cpp):

    .venv-peers/bin/python tools/peers/llama_ladder.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--out-dir bench-out/ladder] [--slate target/release/slate] [--types Q8_0,Q6_K,...]

1. The dense start, OUT/<stem>.F32.gguf: every tensor of --model dequantized to f32 by gguf-py (for Q4_1
   `d·q + m` and for Q8_0 `d·q`, with f16 `d`, `m`, computed in f32 as ggml does: the values Slate and
   llama.cpp compute with), F32 tensors (the norms) as they are, all metadata and the tokenizer copied
   verbatim except `general.file_type` (now ALL_F32). It is read back and checked bit for bit. F32, not
   F16: most Q4_1 values `d·q + m` are not representable in f16 (the JSON gives the fraction), and
   llama-quantize takes F32 input. This is the starting point of `slate compress` as well.
2. Each rung: `llama-quantize START OUT/<stem>.<TYPE>.gguf TYPE THREADS` (no importance matrix). Rows
   whose width is not a multiple of a k-quant's 256-value super-block (SmolLM2's 576-wide q, k, v,
   attn_output, gate and up; the tied embedding / output head) fall back to other types as
   llama-quantize decides and logs (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> IQ4_NL; the
   tied embedding, quantized as the output head, -> Q8_0): the JSON keeps the log's counts and the
   tensor types of the written file.
   `tensors_identical_to_source` counts the tensors equal to the source's bit for bit (llama-quantize's
   Q4_1 of the dequantized Q4_1 GGUF gives back all of them).
3. Bytes: `file_bytes` (the file), `tensor_bytes` (all tensor data: what a decode step reads, as the
   tied embedding is read whole as the output head) and `weight_bytes` (the 2-D tensors only: all
   linear layers with the tied embedding / head once, the "weight MB" column of docs/COMPRESSION.md;
   `tensor_bytes` minus the 0.14 MB of norms).
4. Perplexity with the protocol of docs/COMPRESSION.md's table, over the same 8,191 tokens: `slate eval
   ppl --model FILE --text TEXT --max-tokens 8192 --json OUT` (ctx 512, stride 256, 2 threads) where every
   tensor type of the file is one Slate loads (F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K); otherwise
   llama.cpp's strided perplexity in two runs whose negative log-likelihoods add up to Slate's:
   `llama-perplexity -m FILE -f TEXT -c 384 -b 384 --ppl-stride 256 --chunks 31 -t 1` (llama-perplexity
   widens the context by stride/2, 384 -> 512: Slate's 31 windows of 512 tokens every 256 over the
   text's first 8,192 tokens, each scoring its last 256 — 7,936 tokens) and `-c 129 -b 129 --ppl-stride
   255 --chunks 1` (one window of 256 tokens scoring tokens 1..255, which Slate's first window scores
   too, with the same context). For the rungs in --cross-check both tools run; `ppl_*_7936` are the
   figures over llama-perplexity's 7,936 tokens alone (Slate's from its run less a 256-token run).

Writes OUT/ladder.json: {"source", "dense_start", "protocol", "rungs": [{"type", "file", "file_bytes",
"tensor_bytes", "weight_bytes", "bits_per_weight", "tensor_types", "fallbacks", "fallback_summary",
"ppl", "ppl_tool", "ppl_slate", "ppl_llama", "ppl_slate_7936", "ppl_llama_7936", ...}]}. Finished files are reused (delete OUT to redo).
"""
import argparse
import collections
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLATE_TYPES = {"F32", "F16", "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"}
DEFAULT_TYPES = "F16,Q8_0,Q6_K,Q5_K_M,Q5_1,Q5_0,Q4_K_M,Q4_1,Q4_0,IQ4_NL,Q3_K_M,Q2_K"
CROSS_CHECK = "F32,Q8_0,Q6_K,Q4_1,Q4_0"


def default_bin_dir():
    venv = os.environ.get("SLATE_PEERS_VENV", os.path.join(ROOT, ".venv-peers"))
    return os.path.join(venv, "llama.cpp", "bin")


def log(msg):
    print(f"[ladder {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def field_value(field):
    return field.contents()


def dense_start(src, dst):
    """Writes `dst`: `src` with every tensor dequantized to f32; returns facts about it."""
    reader = gguf.GGUFReader(src)
    arch = field_value(reader.fields[gguf.Keys.General.ARCHITECTURE])
    tmp = dst + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch)
    copied = []
    for field in reader.fields.values():
        # The writer writes the architecture and the GGUF.* header fields itself.
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
        copied.append(field.name)
    if gguf.Keys.General.ALIGNMENT in reader.fields:
        writer.data_alignment = int(field_value(reader.fields[gguf.Keys.General.ALIGNMENT]))
    dense = {}
    inexact_f16 = total = 0
    src_types = collections.Counter()
    for t in reader.tensors:
        src_types[t.tensor_type.name] += 1
        shape = tuple(int(x) for x in reversed(t.shape))  # numpy order: rows, cols
        w = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape), dtype=np.float32)
        if not np.all(np.isfinite(w)):
            raise SystemExit(f"{src}: {t.name} has non-finite values")
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            inexact_f16 += int(np.count_nonzero(w.astype(np.float16).astype(np.float32) != w))
            total += w.size
        dense[t.name] = w
        writer.add_tensor(t.name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # Read it back: the same metadata (file type aside), the same tensors in the same order, bit for bit.
    back = gguf.GGUFReader(tmp)
    for name in copied:
        a, b = reader.fields[name].contents(), back.fields[name].contents()
        if name != gguf.Keys.General.FILE_TYPE and a != b:
            raise SystemExit(f"{tmp}: metadata {name} differs from {src}")
    if [t.name for t in back.tensors] != [t.name for t in reader.tensors]:
        raise SystemExit(f"{tmp}: tensor order differs from {src}")
    for t in back.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise SystemExit(f"{tmp}: {t.name} is {t.tensor_type.name}, not F32")
        got = np.asarray(t.data).reshape(dense[t.name].shape)
        if not np.array_equal(got.view(np.uint32), dense[t.name].view(np.uint32)):
            raise SystemExit(f"{tmp}: {t.name} differs from the dequantized source")
    os.replace(tmp, dst)
    return {
        "file": dst,
        "source_tensor_types": dict(src_types),
        "metadata_keys_copied": len(copied),
        "quantized_values": total,
        "f16_inexact_fraction": inexact_f16 / total if total else 0.0,
        "verified": "metadata and tensors read back bit for bit",
    }


def same_tensors(path, source):
    """How many of the file's tensors are bit for bit the source's (same name, type and bytes)."""
    src = {t.name: t for t in gguf.GGUFReader(source).tensors}
    n = 0
    for t in gguf.GGUFReader(path).tensors:
        u = src.get(t.name)
        if u is not None and u.tensor_type == t.tensor_type and np.array_equal(
                np.asarray(t.data).view(np.uint8).ravel(), np.asarray(u.data).view(np.uint8).ravel()):
            n += 1
    return n


def tensor_facts(path):
    r = gguf.GGUFReader(path)
    types = collections.Counter(t.tensor_type.name for t in r.tensors)
    tensor_bytes = sum(int(t.n_bytes) for t in r.tensors)
    mats = [t for t in r.tensors if len([d for d in t.shape if d > 1]) == 2]
    weight_bytes = sum(int(t.n_bytes) for t in mats)
    weight_params = sum(int(t.n_elements) for t in mats)
    per_tensor = {t.name: t.tensor_type.name for t in r.tensors}
    roles = collections.defaultdict(collections.Counter)
    for name, ty in per_tensor.items():
        role = re.sub(r"^blk\.\d+\.", "", name)
        roles[role][ty] += 1
    return {
        "file_bytes": os.path.getsize(path),
        "tensor_bytes": tensor_bytes,
        "weight_bytes": weight_bytes,
        "matrices": len(mats),
        "bits_per_weight": 8.0 * weight_bytes / weight_params,
        "tensor_types": dict(types),
        "types_by_tensor": {k: dict(v) for k, v in sorted(roles.items())},
    }


FALLBACK = re.compile(r"required for (\S+)\s*-\s*using fallback quantization (\S+)")
SUMMARY = re.compile(r"WARNING: (\d+) of (\d+) tensor\(s\) required fallback quantization")


def quantize(bin_dir, start, dst, qtype, threads):
    logf = dst[: -len(".gguf")] + ".quantize.log"
    if not os.path.exists(dst):
        exe = os.path.join(bin_dir, "llama-quantize")
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"{exe}: missing; run scripts/setup-peers.sh")
        cmd = [exe, start, dst + ".tmp", qtype, str(threads)]
        log(" ".join(cmd))
        t0 = time.time()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        with open(logf, "w") as f:
            f.write(p.stdout)
            f.write(f"\n# seconds: {time.time() - t0:.1f}\n")
        if p.returncode != 0:
            sys.stderr.write(p.stdout[-3000:])
            raise SystemExit(f"llama-quantize {qtype} failed (exit {p.returncode})")
        os.replace(dst + ".tmp", dst)
    text = open(logf).read()
    fb = collections.Counter(f"{a} -> {b}" for a, b in FALLBACK.findall(text))
    m = SUMMARY.search(text)
    return {
        "fallbacks": dict(fb),
        "fallback_summary": f"{m.group(1)} of {m.group(2)} tensors required fallback quantization" if m else "",
        "quantize_log": logf,
    }


def slate_ppl(slate, model, text, out_json):
    if not os.path.exists(out_json):
        cmd = [slate, "eval", "ppl", "--model", model, "--text", text, "--max-tokens", "8192", "--json",
               out_json + ".tmp"]
        log(" ".join(cmd))
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        if p.returncode != 0:
            return None, p.stdout.strip().splitlines()[-1] if p.stdout.strip() else f"exit {p.returncode}"
        os.replace(out_json + ".tmp", out_json)
    return json.load(open(out_json)), None


LLAMA_FINAL = re.compile(r"\[(\d+)\]([0-9.]+|nan|inf),")


def llama_ppl(bin_dir, model, text, out_json, threads, head=False):
    """llama-perplexity's strided perplexity: the main run (31 windows of 512 tokens every 256, each
    scoring its last 256: 7,936 tokens) or, with `head`, one window of 256 tokens scoring tokens 1..255
    (what Slate's first window scores beyond those), so the two add up to Slate's 8,191 tokens."""
    if os.path.exists(out_json):
        return json.load(open(out_json))
    exe = os.path.join(bin_dir, "llama-perplexity")
    # In strided mode llama-perplexity widens -c by stride/2 (384 -> 512; 129 -> 256) and scores positions
    # n_ctx - stride - 1 .. n_ctx - 2 of each window; -b equal to -c keeps it from packing several sequences
    # into one context (which would widen the windows again).
    c, stride, chunks, want_ctx, tokens = (129, 255, 1, 256, 255) if head else (384, 256, 31, 512, 31 * 256)
    cmd = [exe, "-m", model, "-f", text, "-c", str(c), "-b", str(c), "--ppl-stride", str(stride),
           "--chunks", str(chunks), "-t", str(threads)]
    log(" ".join(cmd))
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    secs = time.time() - t0
    with open(out_json[: -len(".json")] + ".log", "w") as f:
        f.write(p.stdout)
    chunk = re.search(r"Calculation chunk = (\d+)", p.stdout)
    nchunks = re.search(r"calculating perplexity over (\d+) chunks", p.stdout)
    runs = LLAMA_FINAL.findall(p.stdout)
    if p.returncode != 0 or not runs or not chunk or not nchunks:
        sys.stderr.write(p.stdout[-3000:])
        raise SystemExit(f"llama-perplexity failed (exit {p.returncode}): {' '.join(cmd)}")
    if int(chunk.group(1)) != want_ctx or int(nchunks.group(1)) != chunks or int(runs[-1][0]) != chunks:
        raise SystemExit(f"llama-perplexity ran {nchunks.group(1)} windows of {chunk.group(1)} tokens, "
                         f"not {chunks} of {want_ctx}: {' '.join(cmd)}")
    out = {"perplexity": float(runs[-1][1]), "tokens": tokens, "windows": chunks, "ctx": want_ctx,
           "stride": stride, "model": model, "text": text, "seconds": secs, "command": " ".join(cmd)}
    with open(out_json, "w") as f:
        json.dump(out, f, indent=2)
    return out


def slate_head(slate, model, text, out_json):
    """Slate's NLL over tokens 1..255 (one window of 256 tokens): its full run less this is its NLL over
    exactly the 7,936 tokens llama-perplexity's main run scores."""
    if not os.path.exists(out_json):
        cmd = [slate, "eval", "ppl", "--model", model, "--text", text, "--ctx", "256", "--stride", "256",
               "--max-tokens", "256", "--json", out_json + ".tmp"]
        log(" ".join(cmd))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        os.replace(out_json + ".tmp", out_json)
    return json.load(open(out_json))


def combine(full_ppl, full_n, part_ppl, part_n, sign):
    """exp of the mean NLL of `full` plus (sign +1) or less (sign -1) `part`."""
    n = full_n + sign * part_n
    return math.exp((full_n * math.log(full_ppl) + sign * part_n * math.log(part_ppl)) / n), n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out-dir", default="bench-out/ladder")
    ap.add_argument("--types", default=DEFAULT_TYPES, help="llama-quantize types, comma-separated")
    ap.add_argument("--cross-check", default=CROSS_CHECK,
                    help="rungs Slate loads that llama-perplexity also measures (F32 = the dense start)")
    ap.add_argument("--text", default="data/text/eval.txt")
    ap.add_argument("--slate", default=os.environ.get("SLATE_BIN", "target/release/slate"))
    ap.add_argument("--bin-dir", default=default_bin_dir())
    ap.add_argument("--threads", type=int, default=2, help="llama-quantize threads")
    ap.add_argument("--llama-threads", type=int, default=1,
                    help="llama-perplexity threads (its result does not depend on them; ggml's spinning "
                         "threads slow down badly on a shared 2-core machine)")
    ap.add_argument("--json", help="default OUT_DIR/ladder.json")
    a = ap.parse_args()

    os.makedirs(a.out_dir, exist_ok=True)
    stem = os.path.basename(a.model)
    stem = re.sub(r"\.gguf$", "", stem)
    stem = re.sub(r"\.(Q\d\w*|F16|F32|BF16)$", "", stem)
    start = os.path.join(a.out_dir, f"{stem}.F32.gguf")
    start_json = start[: -len(".gguf")] + ".start.json"
    if not os.path.exists(start) or not os.path.exists(start_json):
        log(f"dense start: {a.model} dequantized to f32 -> {start}")
        facts = dense_start(a.model, start)
        with open(start_json, "w") as f:
            json.dump(facts, f, indent=2)
    start_facts = json.load(open(start_json))
    cross = {t for t in a.cross_check.split(",") if t}
    version = ""
    vfile = os.path.join(os.path.dirname(os.path.abspath(a.bin_dir)), "VERSION")
    if os.path.exists(vfile):
        version = open(vfile).read().strip()

    rungs = []
    for qtype in ["F32"] + [t for t in a.types.split(",") if t and t != "F32"]:
        if qtype == "F32":
            path, qinfo = start, {"fallbacks": {}, "fallback_summary": "", "quantize_log": None}
        else:
            path = os.path.join(a.out_dir, f"{stem}.{qtype}.gguf")
            qinfo = quantize(a.bin_dir, start, path, qtype, a.threads)
        facts = tensor_facts(path)
        rung = {"type": qtype, "file": path, **facts, **qinfo,
                "tensors_identical_to_source": same_tensors(path, a.model)}
        base = path[: -len(".gguf")]
        slate_ok = set(facts["tensor_types"]) <= SLATE_TYPES
        ppl_slate = ppl_llama = None
        if slate_ok:
            res, err = slate_ppl(a.slate, path, a.text, base + ".slate.ppl.json")
            if res:
                ppl_slate = res
            else:
                rung["slate_error"] = err
        if ppl_slate is None or qtype in cross:
            ppl_llama = llama_ppl(a.bin_dir, path, a.text, base + ".llama.ppl.json", a.llama_threads)
            head = llama_ppl(a.bin_dir, path, a.text, base + ".llama.head.json", a.llama_threads, head=True)
            # llama.cpp on Slate's protocol: its 7,936 tokens plus tokens 1..255 of the first window.
            rung["ppl_llama"], n = combine(ppl_llama["perplexity"], ppl_llama["tokens"], head["perplexity"],
                                           head["tokens"], +1)
            rung["ppl_llama_7936"] = ppl_llama["perplexity"]
        else:
            rung["ppl_llama"] = rung["ppl_llama_7936"] = None
        if ppl_slate:
            head = slate_head(a.slate, path, a.text, base + ".slate.head.json")
            rung["ppl_slate"] = ppl_slate["perplexity"]
            rung["ppl_slate_7936"], n = combine(ppl_slate["perplexity"], ppl_slate["tokens"], head["perplexity"],
                                                head["tokens"], -1)
        else:
            rung["ppl_slate"] = rung["ppl_slate_7936"] = None
        rung["ppl"] = rung["ppl_slate"] if ppl_slate else rung["ppl_llama"]
        rung["ppl_tool"] = "slate eval ppl" if ppl_slate else "llama-perplexity"
        log(f"{qtype}: {facts['weight_bytes'] / 1e6:.1f} MB weights, {facts['bits_per_weight']:.2f} bpw, "
            f"types {facts['tensor_types']}, ppl {rung['ppl']:.3f} ({rung['ppl_tool']})"
            + (f", llama.cpp {rung['ppl_llama']:.4f}" if ppl_slate and ppl_llama else ""))
        rungs.append(rung)

    out = {
        "source": a.model,
        "source_file_bytes": os.path.getsize(a.model),
        "dense_start": start_facts,
        "llama_cpp": version,
        "gguf_py": gguf.__version__ if hasattr(gguf, "__version__") else "",
        "text": a.text,
        "protocol": {
            "slate eval ppl": "ctx 512, stride 256, --max-tokens 8192: 31 windows, 8,191 tokens scored",
            "llama-perplexity": "-c 384 -b 384 --ppl-stride 256 --chunks 31: 31 windows of 512 tokens every "
                                "256 over the first 8,192 tokens, each scoring its last 256 (7,936 tokens), plus "
                                "-c 129 -b 129 --ppl-stride 255 --chunks 1: tokens 1..255 of the first window",
            "ppl, ppl_slate, ppl_llama": "over Slate's 8,191 tokens (llama.cpp's two runs added up)",
            "ppl_slate_7936, ppl_llama_7936": "over llama-perplexity's 7,936 tokens (Slate's run less its "
                                              "first 255 tokens, from a 256-token run)",
        },
        "threads": a.threads,
        "rungs": rungs,
    }
    try:
        from importlib.metadata import version as pkg_version
        out["gguf_py"] = pkg_version("gguf")
    except Exception:
        pass
    path = a.json or os.path.join(a.out_dir, "ladder.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=2)
    os.replace(path + ".tmp", path)
    f = lambda v: f"{v:.3f}" if v is not None else ""
    print("| type | weight MB | bits/weight | perplexity | tool | slate (8,191) | llama.cpp (8,191) "
          "| slate (7,936) | llama.cpp (7,936) | fallbacks |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---|")
    for r in rungs:
        fb = ", ".join(f"{k} ×{v}" for k, v in r["fallbacks"].items())
        print(f"| {r['type']} | {r['weight_bytes'] / 1e6:.1f} | {r['bits_per_weight']:.2f} | {r['ppl']:.3f} | "
              f"{r['ppl_tool']} | {f(r['ppl_slate'])} | {f(r['ppl_llama'])} | {f(r['ppl_slate_7936'])} | "
              f"{f(r['ppl_llama_7936'])} | {fb} |")
    print(f"ladder: {path}")


if __name__ == "__main__":
    main()
