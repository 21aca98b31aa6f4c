"""``detoxedit judge RUN_DIR --judge SPEC``: label a finished run's responses with another judge.

Responses are not regenerated; the new labels are stored beside the old ones (under the judge's spec),
so ``detoxedit report RUN_DIR --judge SPEC`` can compare judges on the same responses.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("judge", help="(re)label the responses of a run with a safety judge")
    p.add_argument("run_dir")
    p.add_argument("--judge", required=True, help="default | refusal | classifier:ID_OR_DIR | llm:MODEL_OR_URL")
    p.add_argument("--batch", type=int, default=64, help="cases per judge call")
    p.set_defaults(func=run)


def relabel(run_dir, spec: str, batch: int = 64) -> int:
    from pathlib import Path

    from detoxedit.bench.records import _read_lines, rewrite_records
    from detoxedit.judges import get_judge

    judge = get_judge(spec)
    n = 0
    for path in sorted(Path(run_dir).glob("records*.jsonl")):
        records, _ = _read_lines(path)
        for start in range(0, len(records), batch):
            chunk = records[start:start + batch]
            prompts, responses, where = [], [], []
            for rec in chunk:
                for side in ("vanilla", "edited"):
                    judged = rec.get("judged_prompts", {}).get(side, {})
                    for key, response in rec[side].items():
                        # the prompt the runner's judge read; runs older than that field: the raw input
                        prompts.append(judged.get(key, rec["inputs"][key]))
                        responses.append(response)
                        where.append((rec, side, key))
            for (rec, side, key), label in zip(where, judge.judge(prompts, responses)):
                rec.setdefault("labels", {}).setdefault(spec, {}).setdefault(side, {})[key] = label
        rewrite_records(path, records)
        n += len(records)
    return n


def run(args) -> int:
    n = relabel(args.run_dir, args.judge, args.batch)
    print(f"labelled {n} cases with judge '{args.judge}'; see: detoxedit report {args.run_dir} --judge {args.judge}")
    return 0
