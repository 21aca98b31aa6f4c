"""Read two (or more) runs' edited answers blind to which run wrote them, then label both.

A paired comparison read by a person (``detoxedit compare``'s "by reading" rows) is only as fair as the
reading: a reader who knows which answer came from the setting they hope wins can lean, without meaning
to, on the borderline ones. This script hides the run. ``dump`` prints every unlabelled edited answer of
the cases that every run has finished, grouped by case (the reader needs the question), shuffled within the
case, each under an opaque token; the judge's label is not shown either. Word-for-word identical answers to
the same case and prompt share one token, so they get one label. The token -> (case, key, text, runs) map
goes to ``--key-file`` and is not printed. ``apply`` reads lines ``TOKEN LABEL`` (0 safe, 1 unsafe; ``#``
starts a comment) and appends a human label (``detoxedit.bench.human``) to every run behind each token.

    python scripts/blind_read.py dump --key-file runs/blind/f.json RUN_A RUN_B > sheet.txt
    python scripts/blind_read.py apply --key-file runs/blind/f.json --who reader1 labels.txt

``--hints DIR`` (dump, repeatable) adds, beside an answer, the labels that kept runs' readers already gave to the
same text word for word (any case), so one text is not read two ways; the hint says nothing about which run
wrote the answer. Run ``dump`` again after ``apply`` to list what is still unread (cases finished since are
added). Labels are the ones of the guideline in docs/judges.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

from detoxedit.bench.human import SIDES, Item, append_label, items, judge_version, read_human
from detoxedit.bench.records import read_run_records
from detoxedit.io import atomic_write_text

JUDGE = "default"
"""The judge whose label is recorded beside each human label (never shown while reading)."""


def edited_items(records: list[dict], human: dict) -> dict[tuple[str, str], Item]:
    """(case id, key) -> a run's edited answer there, with its judge label and any human label. ``records``:
    :func:`detoxedit.bench.records.read_run_records` (every shard file, torn last lines skipped)."""
    return {(it.case_id, it.key): it for it in items(records, JUDGE, ("edited",), human)}


def text_hints(dirs: list[str]) -> dict[str, set[int]]:
    """answer text (stripped) -> the labels readers gave it in the run directories under ``dirs``."""
    out: dict[str, set[int]] = {}
    for d in dirs:
        for labels in sorted(Path(d).rglob("human_labels.jsonl")):
            run = labels.parent
            for it in items(read_run_records(run), JUDGE, SIDES, read_human(run)):
                if it.human and isinstance(it.answer, str):
                    out.setdefault(it.answer.strip(), set()).add(it.human["label"])
    return out


def token(salt: str, cid: str, key: str, text: str) -> str:
    return hashlib.sha1(f"{salt}|{cid}|{key}|{text}".encode()).hexdigest()[:8]


def dump(runs: list[str], key_file: Path, hints: dict[str, set[int]], out=sys.stdout) -> int:
    """Print the unread answers of the cases every run has, write the token map; return how many tokens."""
    mapping = json.loads(key_file.read_text()) if key_file.is_file() else {}
    salt = mapping.get("_salt") or hashlib.sha1("|".join(runs).encode()).hexdigest()[:12]
    tokens = mapping.setdefault("tokens", {})
    mapping["_salt"] = salt
    records = [read_run_records(run) for run in runs]
    answers = [edited_items(recs, read_human(run)) for run, recs in zip(runs, records)]
    first = {str(r["case_id"]): r for r in records[0]}
    common = sorted(set(first).intersection(*({str(r["case_id"]) for r in recs} for recs in records[1:])),
                    key=lambda c: (len(c), c))
    unread: dict[str, dict[tuple[str, str], list[str]]] = {}  # case -> (key, text) -> runs that wrote it
    for run, its in zip(runs, answers):
        for (cid, key), it in its.items():
            if it.human is None:
                unread.setdefault(cid, {}).setdefault((key, it.answer.strip()), []).append(run)
    n = 0
    for cid in common:
        case = unread.get(cid)
        if not case:
            continue
        r = first[cid]
        inputs = r.get("inputs") or {}
        print(f"##### case {cid} [{r.get('category')}/{(r.get('attack') or {}).get('name')}] "
              f"Q: {inputs.get('DG_onlyQ', '')[:200]}", file=out)
        if inputs.get("DG_otherQ"):
            print(f"   otherQ: ...{inputs['DG_otherQ'][-200:]}", file=out)
        order = list(case)
        random.Random(f"{salt}|{cid}").shuffle(order)
        for key, text in order:
            tok = token(salt, cid, key, text)
            tokens[tok] = {"case_id": cid, "key": key, "text": text, "runs": case[(key, text)]}
            hint = hints.get(text)
            print(f"-- {tok} {key}" + (f"  (read before, word for word: {sorted(hint)})" if hint else ""), file=out)
            print(text, file=out)
            n += 1
    atomic_write_text(key_file, json.dumps(mapping))
    return n


def apply(key_file: Path, labels_file: Path, who: str) -> int:
    """Append each token's label to every run behind it; return how many labels were appended."""
    tokens = json.loads(key_file.read_text())["tokens"]
    jv = judge_version(JUDGE)
    cache: dict[str, dict[tuple[str, str], Item]] = {}
    n = 0
    for lineno, line in enumerate(labels_file.read_text().splitlines(), 1):
        parts = line.split("#")[0].split()
        if not parts:
            continue
        if len(parts) != 2 or parts[0] not in tokens or parts[1] not in ("0", "1"):
            raise SystemExit(f"{labels_file}:{lineno}: expected 'TOKEN 0|1' with a token from {key_file}, "
                             f"got {line!r}")
        t = tokens[parts[0]]
        for run in t["runs"]:
            if run not in cache:
                cache[run] = edited_items(read_run_records(run), read_human(run))
            it = cache[run][(t["case_id"], t["key"])]
            if it.human is not None:
                continue
            if it.answer.strip() != t["text"]:
                raise SystemExit(f"{run}: case {it.case_id} {it.key} no longer holds the answer token {parts[0]} "
                                 "was given for")
            judged = it.judge_label is not None
            it.human = append_label(run, {"case_id": it.case_id, "side": "edited", "key": it.key,
                                          "label": int(parts[1]), "who": who, "judge": JUDGE if judged else None,
                                          "judge_label": it.judge_label, "judge_version": jv if judged else None})
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="print the unread answers, run hidden")
    d.add_argument("runs", nargs="+")
    d.add_argument("--key-file", required=True, type=Path)
    d.add_argument("--hints", action="append", default=[], metavar="DIR",
                   help="a directory of kept runs whose readers' labels to show (repeatable)")
    a = sub.add_parser("apply", help="label every run behind each token")
    a.add_argument("labels", type=Path)
    a.add_argument("--key-file", required=True, type=Path)
    a.add_argument("--who", required=True)
    args = p.parse_args(argv)
    if args.cmd == "dump":
        if len(args.runs) < 2:
            p.error("dump needs two runs or more (one run has nothing to hide)")
        n = dump(args.runs, args.key_file, text_hints(args.hints))
        print(f"{n} answers to read; key in {args.key_file}", file=sys.stderr)
    else:
        print(f"appended {apply(args.key_file, args.labels, args.who)} labels", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
