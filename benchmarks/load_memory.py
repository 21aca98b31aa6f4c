"""Peak memory (RSS) of loading the embedded default model, each load in a fresh subprocess.

    python benchmarks/load_memory.py [--dtypes fp32,bf16] [--tokens 8]

For each dtype, two ways of loading the same weights:

* ``load_model``: ``detoxedit.models.load.load_model("default", dtype)``, which maps a checkpoint stored
  in that dtype (bf16 and fp16 get their own copy of the dequantized GGUF, made once);
* ``cast at load``: the fp32 conversion loaded with ``dtype=`` (what ``load_model`` did before: every
  fp32 tensor is read and cast, so the process holds the fp32 file and the bf16 copy at once).

Each subprocess reports ``ru_maxrss`` after the load (before: Python, torch and transformers imported)
and again after greedily generating ``--tokens`` tokens for one prompt, which touches every weight (a
mapped file's pages count once they are read). Results: ``benchmarks/results/load_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch, transformers
from detoxedit.models.load import load_model, _attn_for, resolve_dtype, resolve_spec
from detoxedit.models.generate import GenerationSettings, generate
mode, dtype, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
source = resolve_spec("default", "fp32")[0]  # before measuring: the conversion exists (made once)
if mode == "load_model":
    resolve_spec("default", dtype)
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(source)
before = peak()
t0 = time.perf_counter()
if mode == "load_model":
    model, tok = load_model("default", dtype=dtype)
else:
    attn = _attn_for(resolve_dtype(dtype), "cpu", None)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype),
                                                 **({"attn_implementation": attn} if attn else {})).eval()
load_s = time.perf_counter() - t0
after_load = peak()
generate(model, tok, ["Explain why the sky is blue."], GenerationSettings(max_new_tokens=tokens))
print("RESULT " + json.dumps({"mode": mode, "dtype": dtype, "before_mib": before, "load_peak_mib": after_load,
      "generate_peak_mib": peak(), "load_s": load_s,
      "param_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
      "param_dtypes": sorted({str(p.dtype) for p in model.parameters()})}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/load_memory.json")
    args = ap.parse_args()
    rows = []
    for dtype in args.dtypes.split(","):
        for mode in ("load_model", "cast at load"):
            if mode == "cast at load" and dtype == "fp32":
                continue  # the same file either way
            proc = subprocess.run([sys.executable, "-c", CHILD, mode, dtype, str(args.tokens)],
                                  stdout=subprocess.PIPE, text=True, check=True)
            row = json.loads(next(l[7:] for l in proc.stdout.splitlines() if l.startswith("RESULT ")))
            rows.append(row)
            print(f"{dtype:5} {mode:13} peak RSS {row['load_peak_mib']:5.0f} MiB after the load, "
                  f"{row['generate_peak_mib']:5.0f} MiB after generating {args.tokens} tokens "
                  f"(imports alone: {row['before_mib']:.0f} MiB; weights {row['param_mib']:.0f} MiB "
                  f"{','.join(row['param_dtypes'])}; load {row['load_s']:.1f} s)", flush=True)
    import torch
    import transformers

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "torch": torch.__version__,
                               "transformers": transformers.__version__, "args": vars(args), "rows": rows},
                              indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
