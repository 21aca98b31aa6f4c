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

from detoxedit.bench.human import append_label, judge_version, read_human
from detoxedit.io import atomic_write_text, read_jsonl


def read_records(run: str) -> dict[str, dict]:
    """case id -> record of a run directory's records.jsonl (a torn last line, from a run still writing, is
    skipped; invalid JSON elsewhere fails naming the line: :func:`detoxedit.io.read_jsonl`)."""
    return {str(r["case_id"]): r for r in read_jsonl(Path(run) / "records.jsonl")[0]}


def text_hints(dirs: list[str]) -> dict[str, set[int]]:
    """answer text (stripped) -> the labels readers gave it in the run directories under ``dirs``."""
    out: dict[str, set[int]] = {}
    for d in dirs:
        for labels in sorted(Path(d).rglob("human_labels.jsonl")):
            run = labels.parent
            human = read_human(run)
            if not (run / "records.jsonl").is_file():
                continue
            for cid, r in read_records(str(run)).items():
                for side in ("vanilla", "edited"):
                    for key, text in (r.get(side) or {}).items():
                        e = human.get((cid, side, key))
                        if e and isinstance(text, str):
                            out.setdefault(text.strip(), set()).add(e["label"])
    return out


def token(salt: str, cid: str, key: str, text: str) -> str:
    return hashlib.sha1(f"{salt}|{cid}|{key}|{text}".encode()).hexdigest()[:8]


def dump(runs: list[str], key_file: Path, hints: dict[str, set[int]], out=sys.stdout) -> int:
    """Print the unread answers of the cases every run has, write the token map; return how many tokens."""
    mapping = json.loads(key_file.read_text()) if key_file.is_file() else {}
    salt = mapping.get("_salt") or hashlib.sha1("|".join(runs).encode()).hexdigest()[:12]
    tokens = mapping.setdefault("tokens", {})
    mapping["_salt"] = salt
    records = [read_records(r) for r in runs]
    human = [read_human(r) for r in runs]
    common = sorted(set.intersection(*(set(r) for r in records)), key=lambda c: (len(c), c))
    n = 0
    for cid in common:
        items: dict[tuple[str, str], list[str]] = {}
        for run, recs, hum in zip(runs, records, human):
            for key, text in recs[cid]["edited"].items():
                if (cid, "edited", key) not in hum:
                    items.setdefault((key, text.strip()), []).append(run)
        if not items:
            continue
        r = records[0][cid]
        inputs = r.get("inputs") or {}
        print(f"##### case {cid} [{r.get('category')}/{(r.get('attack') or {}).get('name')}] "
              f"Q: {inputs.get('DG_onlyQ', '')[:200]}", file=out)
        if inputs.get("DG_otherQ"):
            print(f"   otherQ: ...{inputs['DG_otherQ'][-200:]}", file=out)
        order = list(items)
        random.Random(f"{salt}|{cid}").shuffle(order)
        for key, text in order:
            tok = token(salt, cid, key, text)
            tokens[tok] = {"case_id": cid, "key": key, "text": text, "runs": items[(key, text)]}
            hint = hints.get(text)
            print(f"-- {tok} {key}" + (f"  (read before, word for word: {sorted(hint)})" if hint else ""), file=out)
            print(text, file=out)
            n += 1
    atomic_write_text(key_file, json.dumps(mapping))
    return n


def apply(key_file: Path, labels_file: Path, who: str) -> int:
    """Append each token's label to every run behind it; return how many labels were appended."""
    tokens = json.loads(key_file.read_text())["tokens"]
    jv = judge_version("default")
    cache: dict[str, tuple[dict, dict]] = {}
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
                cache[run] = (read_records(run), read_human(run))
            recs, hum = cache[run]
            cid, key = t["case_id"], t["key"]
            if (cid, "edited", key) in hum:
                continue
            r = recs[cid]
            if r["edited"][key].strip() != t["text"]:
                raise SystemExit(f"{run}: case {cid} {key} no longer holds the answer token {parts[0]} was given for")
            judge_label = ((r.get("labels") or {}).get("default") or {}).get("edited", {}).get(key)
            append_label(run, {"case_id": cid, "side": "edited", "key": key, "label": int(parts[1]), "who": who,
                               "judge": "default" if judge_label is not None else None,
                               "judge_label": judge_label, "judge_version": jv if judge_label is not None else None})
            hum[(cid, "edited", key)] = {"label": int(parts[1])}
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
