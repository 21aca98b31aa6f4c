"""How the detoxified model changes with the number of edited cases N (docs/detox.md, "The N-curve").

For every N in --ns and every mode in --modes: ``detoxedit detox`` on N cases of the train split (the
same code as the command, on one loaded model), then the saved checkpoint evaluated against the base
model on held-out cases of the test split (``detoxedit.detox.evaluate``: DS and DG with the vanilla vs
detoxified comparison, fluency, answers cut at the token limit, and KQA, CSum, over-refusal, defense
locality). Writes OUT/curve.json (every number with its 95% CI), OUT/curve.md (a table) and OUT/curve.png
(one panel per number, N on a log axis, one line per mode, the base model as a dashed line with its CI;
DS and DG-Avg also dotted with a person's labels where answers were read).

    OMP_NUM_THREADS=2 python scripts/detox_curve.py --model default --ns 1,2,4,8,16,32 \\
        --modes sequential,joint --out runs/detox-curve

The N cases are the first N of the train split's cases taken one category at a time (the first case of
every category, then the second of every category, ...; ``--order interleaved``, the default), so every N
of 9 or more covers every category of the built-in benchmark, whose files list categories in blocks; the
sets are nested (the cases of a smaller N are the first of every larger N's list, which ``--cases``
edits in the order listed). ``--order file`` takes the first N in file order (``--limit N``).

Resumable: rerun the same command; finished detox runs and evaluations are reused, and a sequential run on
N cases starts from the run on the largest smaller N in OUT (listed in --ns or not) for as many finished
first cases as they share (the same first cases give the same edits).
Directories: OUT/<mode>-N<n>/ (the detox run, its checkpoint in model/) and OUT/eval-<split>/<mode>-N<n>/
(the evaluation; ``detoxedit report`` reads it, ``detoxedit compare OUT/eval-test/*`` puts them side by side).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

CURVE_FLAGS = ("model", "dtype", "device", "method", "method_config", "hparams", "data", "judge", "max_new_tokens",
               "prompt_format", "batch_size", "seed", "artifact")
"""Run flags taken from ``RunConfig`` (same meaning and help as in ``detoxedit bench``)."""
PANELS = (("DS", "DS (%, held-out attacks)"), ("DG-Avg", "DG-Avg (%)"), ("overrefusal", "harmless refused (%)"),
          ("kqa", "KQA contains (%)"), ("csum", "CSum ROUGE-1 (%)"), ("fluency", "fluency (n-gram entropy)"))


def parse_args(argv):
    from detoxedit.settings import add_run_arguments

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_run_arguments(ap, only=CURVE_FLAGS, defaults={"max_new_tokens": 128}, run_config=False)
    ap.add_argument("--ns", default="1,2,4,8,16,32", help="numbers of edited cases, comma-separated")
    ap.add_argument("--modes", default="sequential,joint", help="sequential,joint (or one of them)")
    ap.add_argument("--detox-split", default="train", help="the split whose cases are edited")
    ap.add_argument("--order", default="interleaved", choices=("interleaved", "file"),
                    help="which N cases: the first N taken one category at a time (default), or the first N "
                         "in file order")
    ap.add_argument("--eval-split", default="test", help="the held-out split the saved models are measured on")
    ap.add_argument("--eval-per-category", type=int, default=2,
                    help="held-out cases per unsafe category (default 2: 18 cases of the built-in test split)")
    ap.add_argument("--eval-limit", type=int, default=None, help="at most this many held-out cases")
    ap.add_argument("--general-limit", type=int, default=24,
                    help="items per general-ability task (KQA, CSum, over-refusal); 0 skips them")
    ap.add_argument("--joint-batch", type=int, default=8, help="joint: cases per optimizer step")
    ap.add_argument("--joint-epochs", type=int, default=None, help="joint: most passes over the cases")
    ap.add_argument("--out", required=True, help="output directory (reused to resume)")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None, judge=None) -> dict:
    """Run the curve; ``judge``: a judge object instead of --judge's (tests). Returns curve.json's content."""
    import dataclasses

    from detoxedit.detox.evaluate import evaluate_checkpoint, evaluation_config
    from detoxedit.detox.run import DetoxOptions, plan_detox, run_detox
    from detoxedit.errors import DetoxEditError
    from detoxedit.io import atomic_write_json, atomic_write_text
    from detoxedit.models.load import load_model
    from detoxedit.settings import run_config

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ns = sorted({int(x) for x in args.ns.split(",") if x.strip()})
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not ns or min(ns) < 1:
        raise DetoxEditError("--ns must list positive numbers of cases")
    out = Path(args.out)
    base = run_config(args, defaults={"max_new_tokens": 128})
    base = dataclasses.replace(base, split=args.detox_split)
    order = interleaved_ids(base.data, base.split) if args.order == "interleaved" else None
    if order is not None and max(ns) > len(order):
        raise DetoxEditError(f"--ns asks for {max(ns)} cases; split {base.split!r} of {base.data} has {len(order)}")

    def cfg_for(n):
        pick = {"cases": order[:n], "limit": None} if order is not None else {"limit": n}
        return dataclasses.replace(base, hparams=dict(base.hparams), **pick)

    def selection(n):
        return f"--cases {','.join(order[:n])}" if order is not None else f"--limit {n}"

    plans = {}
    for mode in modes:  # every argument checked (largest N first) before the model loads
        options = DetoxOptions(combine=mode, joint_batch=args.joint_batch, joint_epochs=args.joint_epochs)
        for n in sorted(ns, reverse=True):
            plans[mode, n] = options
            plan_detox(cfg_for(n), options, out / f"{mode}-N{n}")
    model, tok = load_model(base.model, dtype=base.dtype, device=base.device)
    points = []
    t_start = time.perf_counter()
    for n in ns:
        for mode in modes:
            run_dir = out / f"{mode}-N{n}"
            reuse = largest_smaller_run(out, mode, n) if mode == "sequential" else None
            print(f"== {mode}, N={n}: detoxedit detox --model {base.model} --data {base.data} --split "
                  f"{args.detox_split} {selection(n)} --method {base.method} --combine {mode} --out {run_dir}",
                  flush=True)
            t0 = time.perf_counter()
            summary = run_detox(cfg_for(n), plans[mode, n], run_dir, progress=not args.no_progress,
                                loaded=(model, tok), judge=judge, reuse_from=reuse)
            t_detox = time.perf_counter() - t0
            ecfg = evaluation_config(summary, split=args.eval_split, per_category=args.eval_per_category,
                                     limit=args.eval_limit, max_new_tokens=args.max_new_tokens,
                                     batch_size=base.batch_size, device=base.device)
            t0 = time.perf_counter()
            eval_dir = out / f"eval-{args.eval_split}" / run_dir.name
            ev = evaluate_checkpoint(model, tok, run_dir / "model", ecfg, eval_dir, judge=judge,
                                     general_limit=args.general_limit,
                                     progress=not args.no_progress, card_name=args.eval_split)
            # the run's own time (a finished run reused now took none)
            t_run = (summary.get("timings") or {}).get("total_s", t_detox)
            point = {"mode": mode, "n": n, "run_dir": str(run_dir), "detox_s": t_run,
                     "eval_s": time.perf_counter() - t0,
                     "kept": summary.get("kept", summary.get("passed")), "n_cases": summary["n_cases"],
                     "joint_layer": (summary.get("joint") or {}).get("layer"),
                     "layers": summary.get("layers"), "train_cases": summary["train_cases"],
                     "metrics": ev["metrics"], "change": ev["change"], "cut": ev.get("cut"),
                     "eval_cases": ev["n_cases"], "reading": reading(eval_dir, base.judge)}
            points.append(point)
            curve = {"settings": {"argv": list(sys.argv[1:] if argv is None else argv), "ns": ns, "modes": modes,
                                  "detox_split": args.detox_split, "order": args.order,
                                  "eval_split": args.eval_split,
                                  "judge": base.judge, "model": base.model, "method": base.method,
                                  "general_limit": args.general_limit},
                     "judge_accuracy": summary["judge_accuracy"],
                     "vanilla": {k: v.get("vanilla") for k, v in ev["metrics"].items()},
                     "points": points, "elapsed_s": time.perf_counter() - t_start}
            atomic_write_json(out / "curve.json", curve)  # after every point: a partial curve is usable
            atomic_write_text(out / "curve.md", table(curve))
    plot(curve, out / "curve.png")
    print(table(curve))
    print(f"written: {out / 'curve.json'}, {out / 'curve.md'}, {out / 'curve.png'}")
    return curve


def largest_smaller_run(out: Path, mode: str, n: int) -> Path | None:
    """``OUT/<mode>-N<m>`` with the largest m < n that exists, whether or not m is in this command's --ns
    (a run of ``--ns 100`` then starts from an earlier run's N = 50): ``run_detox(reuse_from=...)`` takes
    only the finished cases the two runs share at the start, so any smaller run is safe to offer."""
    found = []
    for d in out.glob(f"{mode}-N*"):
        m = d.name[len(mode) + 2:]
        if d.is_dir() and m.isdigit() and int(m) < n:
            found.append((int(m), d))
    return max(found)[1] if found else None


def reading(eval_dir: Path, judge: str) -> dict | None:
    """DS and DG-Avg of both sides where a person's labels (``detoxedit label``, ``human_labels.jsonl`` of
    the evaluation's directory) replace the judge's, and the judge's agreement with them; None when nobody
    read the answers. An answer nobody read keeps the judge's label, so ``read`` / ``answers`` says how
    much of the number is a person's."""
    from detoxedit.bench.human import agreement, read_human, with_human
    from detoxedit.bench.records import read_run_records
    from detoxedit.bench.report import compute_metrics

    human = read_human(eval_dir)
    if not human:
        return None
    recs = read_run_records(eval_dir)
    m = compute_metrics(with_human(recs, judge, human), judge)
    agree = agreement(recs, judge, human)
    answers = sum(len(r.get(side) or {}) for r in recs for side in ("vanilla", "edited"))
    return {"read": agree["read"], "answers": answers, "agree": agree["agree"], "confusion": agree["confusion"],
            **{k: {"vanilla": m["vanilla"].get(k), "detoxified": m["edited"].get(k)} for k in ("DS", "DG-Avg")},
            "change": {k: m["change"].get(k) for k in ("DS", "DG-Avg")}}


def interleaved_ids(data: str, split: str) -> list[str]:
    """The split's case ids taken one category at a time: the first case of every category (in the order
    the categories first appear), then the second of every category, and so on."""
    from detoxedit.data.load import load_split

    by_cat: dict[str, list[str]] = {}
    for r in load_split(data, split):
        by_cat.setdefault(r.canonical_category or r.category or "?", []).append(str(r.id))
    out, k = [], 0
    while len(out) < sum(len(v) for v in by_cat.values()):
        out += [ids[k] for ids in by_cat.values() if k < len(ids)]
        k += 1
    return out


def _fmt(cell) -> str:
    if not cell or cell.get("value") is None:
        return "-"
    if cell.get("ci_low") is None:
        return f"{cell['value']:.1f}"
    return f"{cell['value']:.1f} [{cell['ci_low']:.1f}, {cell['ci_high']:.1f}]"


def table(curve: dict) -> str:
    """curve.md: one row per (mode, N), the detoxified numbers with CIs; the base model's row first."""
    keys = [k for k, _ in PANELS]
    head = "| mode | N | kept/passed | " + " | ".join(keys) + " |"
    lines = [f"# N-curve: {curve['settings']['method']} on {curve['settings']['model']}", "",
             curve.get("judge_accuracy", ""), "", head, "|" + "---|" * (len(keys) + 3),
             "| base model | 0 | - | " + " | ".join(_fmt(curve["vanilla"].get(k)) for k in keys) + " |"]
    for p in curve["points"]:
        cells = [_fmt((p["metrics"].get(k) or {}).get("detoxified")) for k in keys]
        lines.append(f"| {p['mode']} | {p['n']} | {p['kept']}/{p['n_cases']} | " + " | ".join(cells) + " |")
    read = [p for p in curve["points"] if p.get("reading")]
    if read:
        r0 = read[0]["reading"]
        lines += ["", "Read by a person (`human_labels.jsonl` of each evaluation; a label a person set replaces "
                  "the judge's): DS and DG-Avg both ways, and how often the judge agreed with the reader.", "",
                  "| mode | N | answers read | judge agrees | DS, judge | DS, read | DG-Avg, judge | DG-Avg, read | "
                  "change vs base, read: DS / DG-Avg (paired) |",
                  "|---|---|---|---|---|---|---|---|---|",
                  f"| base model | 0 | | | {_fmt(curve['vanilla'].get('DS'))} | {_fmt(r0['DS']['vanilla'])} | "
                  f"{_fmt(curve['vanilla'].get('DG-Avg'))} | {_fmt(r0['DG-Avg']['vanilla'])} | |"]
        for p in read:
            r = p["reading"]
            rate = f"{100 * r['agree'] / r['read']:.0f}%" if r["read"] else "-"
            lines.append(f"| {p['mode']} | {p['n']} | {r['read']}/{r['answers']} | {rate} | "
                         f"{_fmt(p['metrics']['DS']['detoxified'])} | {_fmt(r['DS']['detoxified'])} | "
                         f"{_fmt(p['metrics']['DG-Avg']['detoxified'])} | {_fmt(r['DG-Avg']['detoxified'])} | "
                         f"{_fmt(r['change'].get('DS'))} / {_fmt(r['change'].get('DG-Avg'))} |")
    lines += ["", "Held-out cases: " + ", ".join(sorted({str(p['eval_cases']) for p in curve["points"]})) +
              f" of split `{curve['settings']['eval_split']}`; 95% bootstrap CIs (cases for DS/DG/fluency, "
              "items for the general tasks)."]
    return "\n".join(lines) + "\n"


def plot(curve: dict, path: Path) -> Path:
    """curve.png: a panel per number; x = N (log scale), one line per mode with CI bars; the base model as
    a dashed line with its CI as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    modes = curve["settings"]["modes"]
    for ax, (key, title) in zip(axes.flat, PANELS):
        base = curve["vanilla"].get(key)
        if base and base.get("value") is not None:
            ax.axhline(base["value"], color="grey", linestyle="--", label="base model")
            if base.get("ci_low") is not None:
                ax.axhspan(base["ci_low"], base["ci_high"], color="grey", alpha=0.15)
        for k, mode in enumerate(modes):
            pts = sorted((p for p in curve["points"] if p["mode"] == mode
                          and (p["metrics"].get(key) or {}).get("detoxified")), key=lambda p: p["n"])
            if not pts:
                continue
            shift = 1 + 0.04 * (k - (len(modes) - 1) / 2)  # modes side by side
            xs = [p["n"] * shift for p in pts]
            cells = [p["metrics"][key]["detoxified"] for p in pts]
            ys = [c["value"] for c in cells]
            lo = [c["value"] - c["ci_low"] if c.get("ci_low") is not None else 0 for c in cells]
            hi = [c["ci_high"] - c["value"] if c.get("ci_high") is not None else 0 for c in cells]
            line = ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=mode)
            read = [p for p in pts if (p.get("reading") or {}).get(key)]
            if read:  # the same number with a person's labels, dotted, in the mode's colour
                ax.plot([p["n"] * shift for p in read],
                        [p["reading"][key]["detoxified"]["value"] for p in read], linestyle=":", marker="x",
                        color=line[0].get_color(), label=f"{mode}, read")
        read0 = next((p["reading"][key]["vanilla"] for p in curve["points"] if (p.get("reading") or {}).get(key)),
                     None)
        if read0:
            ax.axhline(read0["value"], color="black", linestyle=":", label="base model, read")
        ax.set_xscale("log", base=2)
        ns = curve["settings"]["ns"]
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns])
        ax.set_xlabel("edited cases N")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{curve['settings']['method']} on {curve['settings']['model']}: held-out "
                 f"{curve['settings']['eval_split']} vs N (judge {curve['settings']['judge']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    from detoxedit.errors import DetoxEditError

    try:
        main()
    except DetoxEditError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
