"""Generation time per prompt against the batch size, on the embedded default model (CPU).

    python benchmarks/batch_rows.py [--dtype fp32] [--sizes 1,4,8,16,32] [--prompts 32] [--max-new-tokens 32]

The first ``--prompts`` inputs of the built-in test split (five per case, with DINM's suffix and the chat
template, about 100 tokens each) are decoded greedily in batches of each size. This is where ``models/memory.py`` takes the
CPU's cap on automatic batch sizes (``MAX_ROWS["cpu"]``) from. Results: ``benchmarks/results/batch_rows_DTYPE.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--sizes", default="1,4,8,16,32")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    from detoxedit.cases import case_inputs
    from detoxedit.data.load import load_split
    from detoxedit.data.records import SUFFIX_SYSTEM_PROMPT
    from detoxedit.models.generate import GenerationSettings, generate, with_suffix
    from detoxedit.models.load import load_model

    model, tok = load_model("default", dtype=args.dtype)
    prompts = [with_suffix(text, SUFFIX_SYSTEM_PROMPT) for r in load_split("builtin", "test")
               for text in case_inputs(r).values()][:args.prompts]
    generate(model, tok, prompts[:2], GenerationSettings(max_new_tokens=4, batch_size=2))  # warm-up
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        t0 = time.perf_counter()
        generate(model, tok, prompts, GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=size))
        seconds = time.perf_counter() - t0
        rows.append({"batch_size": size, "seconds": seconds, "per_prompt_s": seconds / len(prompts)})
        print(f"{args.dtype} batch size {size:3d}: {seconds:6.1f} s for {len(prompts)} prompts x "
              f"{args.max_new_tokens} tokens = {seconds / len(prompts):.2f} s per prompt", flush=True)
    out = Path(args.out or f"benchmarks/results/batch_rows_{args.dtype}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "args": vars(args), "rows": rows}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
