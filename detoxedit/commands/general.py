"""``detoxedit general``: KQA, CSum and over-refusal of the vanilla and the edited model, same inputs.

Edits come from saved files (``--edit FILE`` repeated) or are made here from cases of a SafeEdit split
(``--data D --case ID`` repeated, or ``--cases K`` for the first K) with the method and config of
``detoxedit bench``. Results: OUT/general.json (vanilla, and mean +- std over the K edits) and
OUT/general.records.jsonl (one record per edit; a rerun resumes). ``detoxedit report`` shows them when
OUT is a run directory.
"""

from __future__ import annotations

import argparse

from detoxedit.commands import COMMANDS


GENERAL_FLAGS = ("model", "dtype", "device", "device_map", "method", "method_config", "hparams", "data",
                 "split", "cases", "limit", "prompt_format", "batch_size", "seed", "artifact")
"""The run flags ``general`` takes (they mean what they mean in ``bench``: ``--cases`` and ``--limit``
choose the cases edited on)."""


@COMMANDS.register("general", order=90)
def register(sub) -> None:
    from detoxedit.settings import add_run_arguments

    p = sub.add_parser("general", help="general ability (KQA, CSum, over-refusal) before vs after editing",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, only=GENERAL_FLAGS, run_config=False)
    p.add_argument("--edit", action="append", default=[], help="a saved edit (repeat for K edits)")
    p.add_argument("--tasks", default="kqa,csum,overrefusal", help="comma-separated: kqa,csum,overrefusal")
    p.add_argument("--general-limit", type=int, default=None, help="items per task (default: all)")
    p.add_argument("--kqa-source", default="builtin", help="builtin | hub | hub:ID | FILE.jsonl")
    p.add_argument("--csum-source", default="builtin", help="builtin | hub | hub:ID | FILE.jsonl")
    p.add_argument("--overrefusal-source", default="builtin", help="builtin | FILE.jsonl")
    p.add_argument("--run", default=None,
                   help="a bench run dir: take its model, method, settings (and trained artefact) from it, edit on "
                        "its first case (or --cases), and write general.json into it for report/compare")
    p.add_argument("--out", default=None, help="output dir (default: the --run dir)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from detoxedit.errors import DetoxEditError
    from detoxedit.general.edits import edits_from_cases, edits_from_run
    from detoxedit.general.evaluate import GeneralConfig, format_table, run_general
    from detoxedit.io import cache_dir
    from detoxedit.methods.base import Edit
    from detoxedit.models.load import load_model
    from detoxedit.preflight import check_run
    from detoxedit.responses import ResponseCache, model_key
    from detoxedit.settings import run_config

    cfg = run_config(args)
    if args.edit and (cfg.cases or cfg.limit):
        raise DetoxEditError("give either --edit files or --cases/--limit, not both")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    wrapper, out = None, args.out or args.run
    if out is None:
        raise DetoxEditError("give --out DIR (or --run RUN_DIR, which is then the output dir)")
    if args.run:
        if args.edit or cfg.limit:
            raise DetoxEditError("--run takes its edits from the run; drop --edit/--limit (use --cases ID)")
        from detoxedit.config import RunConfig
        run_cfg = RunConfig.from_yaml(Path(args.run) / "config.yaml")
        cfg.model, cfg.dtype, cfg.device, cfg.device_map = (run_cfg.model, run_cfg.dtype, run_cfg.device,
                                                            run_cfg.device_map)
    elif not args.edit:  # edits made here, with --method, from cases of --data: check them first
        check_run(cfg, judge=False, splits=[cfg.split])
    model, tok = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map)
    if args.run:
        edits, wrapper, _ = edits_from_run(model, tok, args.run, cfg.cases)
    elif args.edit:
        edits = [(Path(p).with_suffix("").name, Edit.load(p)) for p in args.edit]
    else:
        edits = edits_from_cases(model, tok, cfg)
    general = GeneralConfig(tasks=tasks, limit=args.general_limit, prompt_format=cfg.prompt_format or "chat",
                            sources={"kqa": args.kqa_source, "csum": args.csum_source,
                                     "overrefusal": args.overrefusal_source})
    cache = ResponseCache(cache_dir(), model_key(model, cfg.model, cfg.dtype))
    summary = run_general(model, tok, general, edits, Path(out), cache=cache, progress=not args.no_progress,
                          wrapper=wrapper)
    print(format_table(summary))
    print(f"written: {Path(out) / 'general.json'}")
    return 0
