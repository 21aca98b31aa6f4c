"""``detoxedit detox``: one detoxified model from the edits of N cases, saved as a Hugging Face checkpoint.

Edits the first N selected cases of a split (``--limit N``, or ``--cases`` / ``--per-category``) with a
per-instance method and combines them (``--combine``):

  sequential  each case edited on the model as the kept edits before it left it (any per-instance method:
              dinm, ft-l, mend); an edit that fails validation (the method's checks, or the greedy answer
              to the edited input judged unsafe or not ending) is reverted, skipped and reported
  joint       one delta trained on all N cases at once on the layer located most often (dinm), then every
              case validated on it; the run reports how many pass

Writes OUT/model (``AutoModelForCausalLM.from_pretrained(OUT/model)`` loads it) with a model card
(OUT/model/README.md), and OUT/summary.json. Resumable: rerun the same command after an interruption.
Every argument is checked before the model loads. docs/detox.md has the details.
"""

from __future__ import annotations

import argparse

from detoxedit.commands import COMMANDS

DETOX_FLAGS = ("model", "dtype", "device", "device_map", "method", "method_config", "hparams", "data", "split",
               "limit", "cases", "per_category", "per_category_by", "judge", "protocol", "max_new_tokens",
               "prompt_format", "batch_size", "seed", "artifact")
"""The run flags ``detox`` takes (generated from ``RunConfig``; they mean what they mean in ``bench``)."""
DETOX_DEFAULTS = {"split": "train", "max_new_tokens": 128}


@COMMANDS.register("detox", order=25)
def register(sub) -> None:
    from detoxedit.detox.run import COMBINES, DEFAULT_JOINT_BATCH
    from detoxedit.settings import add_run_arguments

    p = sub.add_parser("detox", help="edit a model on N cases and save ONE detoxified checkpoint (sequential or "
                                     "joint)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, only=DETOX_FLAGS, defaults=DETOX_DEFAULTS, run_config=False)
    p.add_argument("--combine", required=True, choices=COMBINES,
                   help="sequential: edit case after case, skipping edits that fail validation; joint: one "
                        "delta trained on all cases at once (dinm)")
    p.add_argument("--joint-batch", type=int, default=DEFAULT_JOINT_BATCH, metavar="B",
                   help=f"joint: cases per optimizer step (default: {DEFAULT_JOINT_BATCH}; N or more: exact "
                        "full-batch steps)")
    p.add_argument("--joint-epochs", type=int, default=None, metavar="E",
                   help="joint: most passes over the cases (default: the method's max_steps, or num_steps "
                        "with step_size: fixed)")
    p.add_argument("--out", required=True, help="output directory (created; reused to resume)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from detoxedit.detox.run import DetoxOptions, run_detox
    from detoxedit.settings import run_config

    cfg = run_config(args, defaults=DETOX_DEFAULTS)
    options = DetoxOptions(combine=args.combine, joint_batch=args.joint_batch, joint_epochs=args.joint_epochs)
    summary = run_detox(cfg, options, args.out, progress=not args.no_progress)
    print(summary_text(summary, args.out))
    return 0


def summary_text(summary: dict, out) -> str:
    """What ``detox`` prints at the end: each case's fate, the before/after check, where the model is."""
    from pathlib import Path

    n, lines = summary["n_cases"], []
    if summary["combine"] == "sequential":
        lines.append(f"{summary['method']} sequential on {n} case(s): {summary['kept']} edit(s) kept, "
                     f"{len(summary['skipped'])} skipped")
    else:
        j = summary["joint"]
        hist = ", ".join(f"{k}: {v}" for k, v in (j.get("layer_histogram") or {}).items())
        lines.append(f"{summary['method']} joint on {n} case(s): layer {j['layer']} (located layers {hist}), "
                     f"{j['steps_run']} steps at lr {j['lr']:.3g}; {summary['passed']} of {n} cases pass validation")
    for r in summary["cases"]:
        why = f": {'; '.join(r['reasons'])}" if r["status"] in ("skipped", "failed") and r["reasons"] else ""
        lines.append(f"  case {r['case_id']} ({r['category']}), layer {r['edit'].get('layer')}: {r['status']}{why}")
    tc = summary["train_cases"]

    def pct(cell):
        return f"{cell['value']:.1f} [{cell['ci_low']:.1f}, {cell['ci_high']:.1f}]"

    lines.append(f"DS on the {n} edited inputs (judge {summary['judge']}): vanilla {pct(tc['DS_vanilla'])} -> "
                 f"detoxified {pct(tc['DS_detoxified'])}; answers that ended: {tc['ended_vanilla']} -> "
                 f"{tc['ended_detoxified']} of {n}")
    lines.append(summary["judge_accuracy"])
    model_dir = Path(out) / "model"
    lines.append(f"model: {model_dir} (AutoModelForCausalLM.from_pretrained; card: {model_dir / 'README.md'})")
    return "\n".join(lines)
