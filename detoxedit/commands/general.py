"""``detoxedit general``: KQA, CSum and over-refusal of the vanilla and the edited model, same inputs.

Edits come from saved files (``--edit FILE`` repeated) or are made here from cases of a SafeEdit split
(``--data D --case ID`` repeated, or ``--cases K`` for the first K) with the method and config of
``detoxedit bench``. Results: OUT/general.json (vanilla, and mean +- std over the K edits) and
OUT/general.records.jsonl (one record per edit; a rerun resumes). ``detoxedit report`` shows them when
OUT is a run directory.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("general", help="general ability (KQA, CSum, over-refusal) before vs after editing",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--device-map", default=None)
    p.add_argument("--edit", action="append", default=[], help="a saved edit (repeat for K edits)")
    p.add_argument("--data", default="builtin", help="SafeEdit data to make edits from (with --case/--cases)")
    p.add_argument("--split", default="test")
    p.add_argument("--case", action="append", default=[], help="case id to edit on (repeat for K edits)")
    p.add_argument("--cases", type=int, default=None, help="edit on the first K cases of the split")
    p.add_argument("--method", default="dinm")
    p.add_argument("--method-config", default=None)
    p.add_argument("--tasks", default="kqa,csum,overrefusal", help="comma-separated: kqa,csum,overrefusal")
    p.add_argument("--limit", type=int, default=None, help="items per task")
    p.add_argument("--kqa-source", default="builtin", help="builtin | hub | hub:ID | FILE.jsonl")
    p.add_argument("--csum-source", default="builtin", help="builtin | hub | hub:ID | FILE.jsonl")
    p.add_argument("--overrefusal-source", default="builtin", help="builtin | FILE.jsonl")
    p.add_argument("--prompt-format", default="chat", choices=["chat", "raw"])
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def edits_from_cases(model, tok, cfg_kwargs: dict, case_ids: list[str] | None, k: int | None):
    """``[(case id, zero-argument callable making that case's edit)]`` with the runner's method setup."""
    from detoxedit.bench.runner import case_inputs, edit_case, prepare_method
    from detoxedit.config import RunConfig
    from detoxedit.data.safeedit import load_split
    from detoxedit.errors import DetoxEditError
    from detoxedit.models.generate import GenerationSettings, generate

    cfg = RunConfig(**cfg_kwargs)
    records = load_split(cfg.data, cfg.split)
    if case_ids:
        by_id = {str(r.id): (i, r) for i, r in enumerate(records)}
        missing = [c for c in case_ids if c not in by_id]
        if missing:
            raise DetoxEditError(f"case id(s) not in {cfg.data} {cfg.split}: {missing}")
        chosen = [by_id[c] for c in case_ids]
    else:
        chosen = list(enumerate(records))[: k or 1]
    method = prepare_method(cfg)

    def maker(index, record):
        def make():
            case = edit_case(record, str(cfg.data), index)
            if not case.unsafe:
                settings = GenerationSettings(max_new_tokens=method.max_new_tokens, prompt_format=method.prompt_format)
                case.unsafe = generate(model, tok, [case_inputs(record)["DS"]], settings)[0]
            return method.editor.edit(model, tok, case)
        return make

    return [(str(r.id), maker(i, r)) for i, r in chosen]


def run(args) -> int:
    from pathlib import Path

    from detoxedit.bench.cache import ResponseCache, model_key
    from detoxedit.errors import DetoxEditError
    from detoxedit.general.evaluate import GeneralConfig, format_table, run_general
    from detoxedit.methods.base import Edit
    from detoxedit.models.load import cache_dir, load_model

    if args.edit and (args.case or args.cases):
        raise DetoxEditError("give either --edit files or --case/--cases, not both")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)
    if args.edit:
        edits = [(Path(p).with_suffix("").name, Edit.load(p)) for p in args.edit]
    else:
        edits = edits_from_cases(model, tok, dict(model=args.model, dtype=args.dtype, method=args.method,
                                                  method_config=args.method_config, data=args.data,
                                                  split=args.split), args.case, args.cases)
    cfg = GeneralConfig(tasks=tasks, limit=args.limit, prompt_format=args.prompt_format,
                        sources={"kqa": args.kqa_source, "csum": args.csum_source,
                                 "overrefusal": args.overrefusal_source})
    cache = ResponseCache(cache_dir(), model_key(model, args.model, args.dtype))
    summary = run_general(model, tok, cfg, edits, Path(args.out), cache=cache, progress=not args.no_progress)
    print(format_table(summary))
    print(f"written: {Path(args.out) / 'general.json'}")
    return 0
