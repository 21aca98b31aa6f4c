"""``detoxedit bench``: run a detoxification method over a SafeEdit split, one record per case.

Resumable: rerun the same command and finished cases are skipped. ``--shard i/n`` lets n processes
split one run (each writes its own records file in the same RUN_DIR); ``detoxedit report RUN_DIR``
aggregates them.
"""

from __future__ import annotations

import argparse


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by `bench` and `demo`; None means 'from --config, else the RunConfig default'."""
    p.add_argument("--config", default=None, help="run config YAML (e.g. a previous RUN_DIR/config.yaml)")
    p.add_argument("--model", default=None, help="default | hub id | local dir | .gguf file")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16", "auto"])
    p.add_argument("--device", default=None)
    p.add_argument("--device-map", default=None)
    p.add_argument("--method", default=None, help="method registry key (default: dinm)")
    p.add_argument("--method-config", default=None, help="the method's hyper-parameter YAML")
    p.add_argument("--data", default=None, help="SafeEdit file or directory, 'builtin', or zjunlp/SafeEdit")
    p.add_argument("--split", default=None, help="train | val | test | test_ALL (default: test)")
    p.add_argument("--judge", default=None, help="default | refusal | classifier:ID_OR_DIR | llm:MODEL_OR_URL")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases")
    p.add_argument("--cases", default=None, help="comma-separated case ids")
    p.add_argument("--per-category", type=int, default=None, help="only the first N cases of each category")
    p.add_argument("--protocol", default=None, choices=["fair", "paper"])
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--save-edits", action="store_true", default=None, help="also save every case's Edit")
    p.add_argument("--hparam", action="append", default=None, metavar="KEY=VALUE",
                   help="override one of the method's hyper-parameters (YAML value; repeatable)")
    p.add_argument("--artifact", default=None,
                   help="trained methods (mend, sft, dpo, ext-sub): artefact directory to reuse or train into "
                        "(default: RUN_DIR/artifact)")
    p.add_argument("--train-split", default=None, help="split trained methods learn from (default: train)")
    p.add_argument("--train-limit", type=int, default=None, help="train on only the first N records")


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a method over a SafeEdit split (resumable, shardable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    p.add_argument("--shard", default=None, help="i/n: this process runs cases i, i+n, i+2n, ...")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def build_config(args):
    from detoxedit.config import RunConfig

    cfg = RunConfig.from_yaml(args.config) if args.config else RunConfig()
    overrides = {
        "model": args.model, "dtype": args.dtype, "device": args.device, "device_map": args.device_map,
        "method": args.method, "method_config": args.method_config, "data": args.data, "split": args.split,
        "judge": args.judge, "limit": args.limit, "per_category": args.per_category,
        "protocol": args.protocol,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "seed": args.seed,
        "save_edits": args.save_edits, "artifact": args.artifact, "train_split": args.train_split,
        "train_limit": args.train_limit,
        "cases": [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else None,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    if args.hparam:
        cfg.hparams = {**cfg.hparams, **parse_hparams(args.hparam)}
    cfg.validate("command line")
    return cfg


def parse_hparams(items: list[str]) -> dict:
    """``["lr=1e-4", "layers=[3]"]`` -> ``{"lr": 0.0001, "layers": [3]}`` (values read as YAML)."""
    import yaml

    from detoxedit.errors import DetoxEditError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DetoxEditError(f"--hparam must look like KEY=VALUE, not {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def run(args) -> int:
    from detoxedit.bench.runner import run_bench
    from detoxedit.config import parse_shard

    cfg = build_config(args)
    path = run_bench(cfg, args.out, parse_shard(args.shard), progress=not args.no_progress)
    print(f"records: {path}\nnext: detoxedit report {args.out}")
    return 0
