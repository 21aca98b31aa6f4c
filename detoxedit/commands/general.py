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
    p.add_argument("--run", default=None,
                   help="a bench run dir: take its model, method, settings (and trained artefact) from it, edit on "
                        "its first case (or --case), and write general.json into it for report/compare")
    p.add_argument("--out", default=None, help="output dir (default: the --run dir)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def edits_from_cases(model, tok, cfg_kwargs: dict, case_ids: list[str] | None, k: int | None, method=None):
    """``[(case id, zero-argument callable making that case's edit)]`` with the runner's method setup
    (``method``: an already prepared method, e.g. with its trained artefact loaded)."""
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
    method = method or prepare_method(cfg)

    def maker(index, record):
        def make():
            case = edit_case(record, str(cfg.data), index)
            if not case.unsafe:
                settings = GenerationSettings(max_new_tokens=method.max_new_tokens, prompt_format=method.prompt_format)
                case.unsafe = generate(model, tok, [case_inputs(record)["DS"]], settings)[0]
            return method.editor.edit(model, tok, case)
        return make

    return [(str(r.id), maker(i, r)) for i, r in chosen]


def edits_from_run(model, tok, run_dir, case_ids: list[str] | None):
    """The edit(s) a bench run's method makes, set up exactly as the run was, and the editor.

    A method that uses the instance edits on the given cases (default: the run's first finished case);
    one that does not (SFT, DPO, Ext-Sub, Self-Reminder) contributes its one shared edit.
    """
    from pathlib import Path

    from detoxedit.bench.records import read_records
    from detoxedit.bench.runner import prepare_method
    from detoxedit.bench.training import ensure_artifact
    from detoxedit.config import RunConfig
    from detoxedit.errors import DetoxEditError
    from detoxedit.methods.base import needs_training, uses_instance

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DetoxEditError(f"{run_dir} is not a bench run (no config.yaml)")
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    method = prepare_method(cfg)
    if needs_training(method.editor):
        ensure_artifact(method, cfg, run_dir, model, tok, progress=False)
    if not uses_instance(method.editor):
        return [("shared", lambda: method.editor.edit(model, tok, None))], method.editor, cfg
    if not case_ids:
        recs = read_records(run_dir)
        if not recs:
            raise DetoxEditError(f"{run_dir} has no finished case to edit on; pass --case ID")
        case_ids = [recs[0]["case_id"]]
    fields = dict(model=cfg.model, dtype=cfg.dtype, method=cfg.method, method_config=cfg.method_config,
                  hparams=cfg.hparams, data=cfg.data, split=cfg.split)
    makers = edits_from_cases(model, tok, fields, case_ids, None, method=method)
    return makers, method.editor, cfg


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
    wrapper, out = None, args.out or args.run
    if out is None:
        raise DetoxEditError("give --out DIR (or --run RUN_DIR, which is then the output dir)")
    if args.run:
        from detoxedit.config import RunConfig
        run_cfg = RunConfig.from_yaml(Path(args.run) / "config.yaml")
        args.model, args.dtype, args.device, args.device_map = (run_cfg.model, run_cfg.dtype, run_cfg.device,
                                                                run_cfg.device_map)
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)
    if args.run:
        if args.edit or args.cases:
            raise DetoxEditError("--run takes its edits from the run; drop --edit/--cases (use --case ID)")
        edits, wrapper, _ = edits_from_run(model, tok, args.run, args.case)
    elif args.edit:
        edits = [(Path(p).with_suffix("").name, Edit.load(p)) for p in args.edit]
    else:
        edits = edits_from_cases(model, tok, dict(model=args.model, dtype=args.dtype, method=args.method,
                                                  method_config=args.method_config, data=args.data,
                                                  split=args.split), args.case, args.cases)
    cfg = GeneralConfig(tasks=tasks, limit=args.limit, prompt_format=args.prompt_format,
                        sources={"kqa": args.kqa_source, "csum": args.csum_source,
                                 "overrefusal": args.overrefusal_source})
    cache = ResponseCache(cache_dir(), model_key(model, args.model, args.dtype))
    summary = run_general(model, tok, cfg, edits, Path(out), cache=cache, progress=not args.no_progress,
                          wrapper=wrapper)
    print(format_table(summary))
    print(f"written: {Path(out) / 'general.json'}")
    return 0
