"""The batched engine on one GPU: per-case time and peak GPU memory of ``--batch-cases`` K against K = 1.

    python3 benchmarks/gpu_batched.py --shape smollm2 --k 1,16,32 --out OUT.json   # what gpu.sh runs
    python3 benchmarks/gpu_batched.py --model /path/to/Llama-2-7b-chat-hf --k 1,16,32 --judge default

``--model DIR``: a real checkpoint, loaded in bf16 on the GPU (what a user with a 7B checkpoint runs).
``--shape smollm2|7b``: a model built on the GPU with *random* weights, for a machine that holds no
checkpoint (gpu.sh's device machine has no network, and what travels there is at most 64 MiB, less than
even the 98 MB GGUF of the embedded model): the embedded SmolLM2-135M-Instruct's config, or a LLaMA-2-7B
shape (32 blocks, hidden 4096, MLP 11008, 32 heads) with the same vocabulary, and SmolLM2's tokenizer
(``.gpu/smollm2``, copied there by ``gpu.sh prepare``). Random weights answer nonsense that seldom ends
its turn, so every row decodes all ``--max-new-tokens``: the most work a batch can take, an upper bound on
a real model's generation time. DINM runs the paper's fixed 10 steps (``step_size: fixed``), since an
adaptive edit of a random model would retry to its limit, at the last block, where localisation puts
most cases of the real embedded model (a random model's distances mean nothing; a low block would make a
group's stacked edit hold every block's activations); its validation still runs.

Each K runs ``Runner`` on the built-in test split with a fresh response cache (vanilla answers timed),
``--batch-size`` chosen automatically (logged; ``models/memory.py``), the ``refusal`` judge unless
``--judge`` says otherwise, and over-refusal on 16 harmless prompts per edit; K = 1 runs ``--k1-cases``
cases, K > 1 one group of K cases. Results are written after every K.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

CARRIED = Path(".gpu/smollm2")
SHAPES = {
    "smollm2": {},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "head_dim": 128, "tie_word_embeddings": False},
}


def random_model(shape: str, tokenizer_dir: Path, spec_dir: Path, device: str = "cuda"):
    """A model of ``shape`` with random bf16 weights, built on ``device``, and ``spec_dir``: its config and
    tokenizer (no weights), which the run's config names as its model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tokenizer_dir)
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
    spec_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(spec_dir)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.save_pretrained(spec_dir)
    model.detoxedit_spec = str(spec_dir)
    return model, tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a checkpoint directory (real weights); else --shape")
    ap.add_argument("--shape", default="smollm2", choices=sorted(SHAPES))
    ap.add_argument("--k", default="1,16,32", help="batch_cases values")
    ap.add_argument("--k1-cases", type=int, default=4, help="cases of the K=1 run")
    ap.add_argument("--max-new-tokens", type=int, default=300)
    ap.add_argument("--overrefusal-items", type=int, default=16)
    ap.add_argument("--judge", default="refusal")
    ap.add_argument("--out", default="benchmarks/results/gpu_batched.json")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of this script's code path (no timings)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("detoxedit.models.memory").setLevel(logging.INFO)

    import torch
    import yaml

    from detoxedit.bench.records import read_run_records
    from detoxedit.bench.runner import Runner
    from detoxedit.config import RunConfig
    from detoxedit.judges import get_judge
    from detoxedit.models.load import load_model

    tmp = Path(tempfile.mkdtemp(prefix="detoxedit-gpu-"))
    t0 = time.perf_counter()
    if args.model:
        model, tok = load_model(args.model, dtype="bf16", device=args.device)
        spec, hparams = args.model, {}
    else:
        spec = str(tmp / f"random-{args.shape}")
        model, tok = random_model(args.shape, CARRIED, Path(spec), args.device)
        # the paper's fixed 10 steps, at the last block (where localisation puts most real cases)
        hparams = {"step_size": "fixed", "num_steps": 10, "layers": [model.config.num_hidden_layers - 1]}
    load_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    judge = get_judge(args.judge)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cuda = args.device.startswith("cuda")
    doc = {"gpu": torch.cuda.get_device_name(0) if cuda else args.device, "torch": torch.__version__,
           "model": args.model or f"random {args.shape}", "params": params, "load_s": load_s, "args": vars(args),
           "rows": []}
    print(f"{doc['model']}: {params / 1e9:.2f} B parameters, bf16, built/loaded in {load_s:.1f} s on {doc['gpu']}",
          flush=True)
    for k in [int(x) for x in args.k.split(",")]:
        n = args.k1_cases if k == 1 else k
        cfg = RunConfig(model=spec, dtype="bf16", device=args.device, method="dinm", data="builtin", split="test",
                        limit=n, judge=args.judge, max_new_tokens=args.max_new_tokens, hparams=dict(hparams),
                        overrefusal_items=args.overrefusal_items, batch_cases=k)
        run_dir = tmp / f"run-k{k}"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        Runner(cfg, run_dir, response_cache=tmp / f"responses-k{k}", loaded=(model, tok, judge)).run(progress=False)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        recs = read_run_records(run_dir)
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        row = {"batch_cases": k, "batch_size": saved.get("batch_size"), "cases": len(recs), "wall_s": wall,
               "per_case_s": wall / max(len(recs), 1),
               "mean": {key: statistics.mean(r["timings"].get(key, 0.0) for r in recs)
                        for key in ("vanilla_generation_s", "edit_s", "edited_generation_s", "overrefusal_s",
                                    "judge_s", "total_s")},
               "peak_gpu_allocated_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else 0.0,
               "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / 2 ** 30 if cuda else 0.0}
        doc["rows"].append(row)
        out.write_text(json.dumps(doc, indent=2))
        m = row["mean"]
        print(f"K={k:<3} batch size {row['batch_size']}: {len(recs)} cases in {wall:.1f} s = {row['per_case_s']:.2f} "
              f"s/case (edit {m['edit_s']:.2f}, vanilla {m['vanilla_generation_s']:.2f}, edited "
              f"{m['edited_generation_s']:.2f}, over-refusal {m['overrefusal_s']:.2f}); peak GPU "
              f"{row['peak_gpu_allocated_gib']:.1f} GiB allocated, {row['peak_gpu_reserved_gib']:.1f} GiB reserved",
              flush=True)
    base = next((r for r in doc["rows"] if r["batch_cases"] == 1), None)
    if base:
        for r in doc["rows"]:
            print(f"  K={r['batch_cases']:<3} {base['per_case_s'] / r['per_case_s']:.1f}x the per-case speed of K=1")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
