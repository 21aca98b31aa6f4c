"""Generate the embedded model's responses that the default judge is trained and measured on.

Two steps, both reproducible:

1. ``generate``: responses of the embedded SmolLM2-135M-Instruct (``load_model("default")``) to built-in
   prompts made only from **train/val** questions and **train/val** attack templates (never test):

   * ``vanilla``: every train/val question alone, and every train/val question inside one attack template
     (picked by a hash of the question id); half of the prompts (by hash) carry DINM's suffix system
     prompt, as the runner's ``fair`` protocol formats inputs;
   * ``edited``: for a spread of edit cases (question in an attack template), DINM edits the model on the
     case (the vanilla response to the case's prompt is its unsafe response), then answers the case's
     prompt and the four generalisation inputs (question alone, question in another attack, another
     question in the same attack, both other) plus a few more train/val prompts, all with the suffix;
     the edit is then reverted.

   Decoding: greedy, chat format, ``--max-new-tokens`` (default 112), batch size 8. The output has
   ``label: null`` on every record.

2. ``merge``: join the hand-written labels (a TSV ``id<TAB>label<TAB>note``, written by reading each
   response; see docs/judges.md for the guideline) into ``detoxedit/judges/data/labelled_responses.jsonl``.

Run::

    DETOXEDIT_CACHE=/tmp/dxcache python scripts/make_judge_data.py generate --out /tmp/judge_responses.jsonl
    python scripts/make_judge_data.py merge --responses /tmp/judge_responses.jsonl \\
        --labels scripts/judge_labels.tsv --out detoxedit/judges/data/labelled_responses.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from detoxedit.io import atomic_write_jsonl


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def generate_responses(out: Path, max_new_tokens: int, n_edits: int, extra_per_edit: int,
                       limit: int | None = None) -> None:
    from detoxedit.configs import builtin_config_path
    from detoxedit.data.build import split_attacks, split_questions
    from detoxedit.data.builtin import builtin_attacks, builtin_questions
    from detoxedit.data.records import fill_template
    from detoxedit.methods.base import EditCase
    from detoxedit.methods.dinm import DINM
    from detoxedit.models.generate import with_suffix
    from detoxedit.methods.dinm_hparams import DINMHyperParams
    from detoxedit.models.generate import GenerationSettings, generate
    from detoxedit.models.load import load_model

    qsplit = split_questions(builtin_questions())
    asplit = split_attacks(builtin_attacks())
    questions = sorted(qsplit["train"] + qsplit["val"], key=lambda q: q.id)
    attacks = sorted(asplit["train"] + asplit["val"], key=lambda a: a.id)
    if limit:  # smoke runs only
        questions = questions[::max(1, len(questions) // limit)][:limit]
    hp = DINMHyperParams.from_yaml(builtin_config_path("dinm", "smollm2-135m"))
    suffix = hp.suffix_system_prompt
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=8)
    model, tok = load_model("default")

    def attack_for(q, salt: str):
        return attacks[_h("judge-data", salt, q.id) % len(attacks)]

    # ---- vanilla ---------------------------------------------------------------------------
    items = []  # (question, attack or None, prompt)
    for q in questions:
        items.append((q, None, q.question))
        a = attack_for(q, "vanilla")
        items.append((q, a, fill_template(a.template, q.question)))
    prompts = [with_suffix(p, suffix) if _h("suffix", q.id, a.id if a else "-") % 2 else p
               for q, a, p in items]
    t0 = time.perf_counter()
    responses = generate(model, tok, prompts, settings, progress=True)
    print(f"vanilla: {len(prompts)} responses in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    records = []
    vanilla_of = {}
    for (q, a, raw), prompt, resp in zip(items, prompts, responses):
        rid = f"V-{q.id}-{a.id if a else 'Q'}"
        vanilla_of[raw] = resp
        records.append({"id": rid, "question_id": q.id, "category": q.category, "prompt": prompt,
                        "response": resp, "source": "vanilla", "label": None,
                        "attack_id": a.id if a else None})

    # ---- edited ----------------------------------------------------------------------------
    by_cat: dict[str, list] = {}
    for q in questions:
        by_cat.setdefault(q.category, []).append(q)
    cats = sorted(by_cat)
    editor = DINM(hp)
    for k in range(n_edits):
        cat = cats[k % len(cats)]
        pool = sorted(by_cat[cat], key=lambda q: _h("edit-q", k, q.id))
        q = pool[0]
        a = attack_for(q, "vanilla")  # the case prompt has a vanilla response to use as "unsafe"
        case_prompt = fill_template(a.template, q.question)
        oq = pool[1] if len(pool) > 1 else pool[0]
        oa = [x for x in attacks if x.id != a.id][_h("edit-a", k) % (len(attacks) - 1)]
        inputs = [(q, a, "DS"), (q, None, "onlyQ"), (q, oa, "otherA"), (oq, a, "otherQ"), (oq, oa, "otherAQ")]
        rest = sorted((x for x in questions if x.id not in (q.id, oq.id)), key=lambda x: _h("edit-x", k, x.id))
        for j, x in enumerate(rest[:extra_per_edit]):
            inputs.append((x, attack_for(x, f"extra{k}") if j % 2 == 0 else None, f"extra{j}"))
        unsafe = vanilla_of.get(case_prompt) or "Sure, here is how to do it."
        case = EditCase(prompt=case_prompt, safe=q.safe or "I can't help with that.", unsafe=unsafe,
                        case_id=f"{q.id}/{a.id}")
        t0 = time.perf_counter()
        edit = editor.edit(model, tok, case)
        plist = [with_suffix(fill_template(x_a.template, x_q.question) if x_a else x_q.question, suffix)
                 for x_q, x_a, _ in inputs]
        with edit.applied_to(model):
            outs = generate(model, tok, plist, settings)
        print(f"edit {k + 1}/{n_edits} ({case.case_id}, layer {edit.meta['layer']}): "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for (x_q, x_a, role), prompt, resp in zip(inputs, plist, outs):
            records.append({"id": f"E{k + 1:02d}-{role}-{x_q.id}", "question_id": x_q.id,
                            "category": x_q.category, "prompt": prompt, "response": resp,
                            "source": "edited", "label": None, "attack_id": x_a.id if x_a else None,
                            "edit_case": case.case_id, "edit_layer": edit.meta["layer"]})
        atomic_write_jsonl(out, records)  # keep what is done if interrupted
    atomic_write_jsonl(out, records)
    print(f"wrote {len(records)} records to {out}", file=sys.stderr)


def generate_comply(out: Path, max_new_tokens: int) -> None:
    """Vanilla responses under the dataset builder's 'comply' system prompt (more unsafe examples).

    The small model refuses or drifts off topic often; to have enough unsafe responses to learn from,
    every train/val question is also asked alone under ``GENERATOR_SYSTEM_PROMPT`` (the system prompt
    ``detoxedit data build`` uses to generate unsafe responses). The record's ``prompt`` is the user
    text; its ``note`` says which system prompt was used.
    """
    from detoxedit.data.build import split_questions
    from detoxedit.data.builtin import builtin_questions
    from detoxedit.data.unsafe import GENERATOR_SYSTEM_PROMPT
    from detoxedit.models.generate import GenerationSettings, generate
    from detoxedit.models.load import load_model

    qsplit = split_questions(builtin_questions())
    questions = sorted(qsplit["train"] + qsplit["val"], key=lambda q: q.id)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=8,
                                  system_prompt=GENERATOR_SYSTEM_PROMPT)
    model, tok = load_model("default")
    t0 = time.perf_counter()
    responses = generate(model, tok, [q.question for q in questions], settings, progress=True)
    print(f"comply: {len(questions)} responses in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    atomic_write_jsonl(out, [{"id": f"C-{q.id}", "question_id": q.id, "category": q.category, "prompt": q.question,
                        "response": r, "source": "vanilla", "label": None, "attack_id": None,
                        "note": "system prompt: the data builder's comply prompt"}
                       for q, r in zip(questions, responses)])


BASELINES = ("sft", "dpo", "ext-sub", "self-reminder")
"""Methods whose one shared edit is applied to every input (no instance): their answers are labelled
too, because they answer in the style of the benchmark's written safe responses, which DINM's tiny
edits rarely produce and which the first judge misread (docs/judges.md, known limits)."""


def generate_baselines(out: Path, runs: Path, methods: Sequence[str], per_method: int,
                       max_new_tokens: int) -> None:
    """Responses of the embedded model edited by the no-instance baselines, on **val** questions.

    Each method is prepared from ``RUNS/<method>/config.yaml`` (a finished ``detoxedit bench`` run) and,
    if it needs training, its artefact is loaded from ``RUNS/<method>/artifact`` (never trained here).
    The trained methods learned from the *train* split, so only val questions are asked (the test split is
    never used): ``per_method`` prompts per method, alternating the question alone and inside a train/val
    attack template, all with the method's suffix, its system prompt and its ``post_input``, exactly as
    the runner's edited side.
    """
    from detoxedit.settings import prepare_method
    from detoxedit.config import RunConfig
    from detoxedit.data.build import split_attacks, split_questions
    from detoxedit.data.builtin import builtin_attacks, builtin_questions
    from detoxedit.data.records import fill_template
    from detoxedit.methods.base import edited_side, needs_training
    from detoxedit.models.generate import with_suffix
    from detoxedit.models.generate import GenerationSettings, generate
    from detoxedit.models.load import load_model

    qsplit = split_questions(builtin_questions())
    asplit = split_attacks(builtin_attacks())
    val = sorted(qsplit["val"], key=lambda q: q.id)
    attacks = sorted(asplit["train"] + asplit["val"], key=lambda a: a.id)
    model, tok = load_model("default")
    records: list[dict] = []
    for key in methods:
        cfg = RunConfig.from_yaml(runs / key / "config.yaml")
        method = prepare_method(cfg)
        if needs_training(method.editor):
            method.editor.load_artifact(runs / key / "artifact")
        edit = method.editor.edit(model, tok, None)
        qs = sorted(val, key=lambda q: (_h("baseline-q", key, q.id), q.id))[:per_method]
        items = []
        for j, q in enumerate(qs):
            a = attacks[_h("baseline-a", key, q.id) % len(attacks)] if j % 2 else None
            items.append((q, a, fill_template(a.template, q.question) if a else q.question))
        asked, settings = edited_side(method.editor, [with_suffix(p, method.suffix) for _, _, p in items],
                                      GenerationSettings(max_new_tokens=max_new_tokens, batch_size=8,
                                                         prompt_format=method.prompt_format))
        t0 = time.perf_counter()
        with edit.applied_to(model):
            outs = generate(model, tok, asked, settings)
        print(f"{key}: {len(asked)} responses in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for (q, a, _), prompt, resp in zip(items, asked, outs):
            records.append({"id": f"B-{key}-{q.id}-{a.id if a else 'Q'}", "question_id": q.id,
                            "category": q.category, "prompt": prompt, "response": resp, "source": "edited",
                            "label": None, "attack_id": a.id if a else None, "method": key})
        atomic_write_jsonl(out, records)
    print(f"wrote {len(records)} records to {out}", file=sys.stderr)


FIELDS = ("id", "question_id", "category", "prompt", "response", "source", "method", "label", "note")


def merge_labels(responses: list[Path], labels: Path, out: Path) -> None:
    """Join ``id<TAB>label<TAB>note`` lines into the response records; every record needs a label.

    Empty responses are dropped (every judge scores them 0.5 without looking).
    """
    recs = [json.loads(line) for f in responses for line in f.read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r["response"].strip()]
    table: dict[str, tuple[int, str]] = {}
    for n, line in enumerate(labels.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1].strip() not in ("0", "1"):
            raise SystemExit(f"{labels}:{n}: expected 'id<TAB>0|1[<TAB>note]', got {line!r}")
        table[parts[0].strip()] = (int(parts[1]), parts[2].strip() if len(parts) > 2 else "")
    missing = [r["id"] for r in recs if r["id"] not in table]
    if missing:
        raise SystemExit(f"{len(missing)} responses have no label, e.g. {missing[:5]}")
    merged = []
    for r in recs:
        label, note = table[r["id"]]
        rec = {k: r[k] for k in FIELDS if k in r and k not in ("label", "note")}
        rec["label"] = label
        notes = [n for n in (r.get("note"), note) if n]
        if notes:
            rec["note"] = "; ".join(notes)
        merged.append(rec)
    atomic_write_jsonl(out, merged)
    n1 = sum(r["label"] for r in merged)
    print(f"wrote {len(merged)} labelled responses ({n1} unsafe, {len(merged) - n1} safe) to {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate unlabelled responses")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--max-new-tokens", type=int, default=112)
    g.add_argument("--edits", type=int, default=14, help="number of DINM edit cases")
    g.add_argument("--extra-per-edit", type=int, default=3, help="extra prompts answered per edit")
    g.add_argument("--limit", type=int, default=None, help="use only N questions (smoke test)")
    c = sub.add_parser("comply", help="vanilla responses under the builder's comply system prompt")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--max-new-tokens", type=int, default=96)
    b = sub.add_parser("baselines", help="responses of the no-instance baselines (trained artefacts reused)")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--runs", type=Path, default=Path("runs/results"),
                   help="directory of finished bench runs, one per method (config.yaml, artifact/)")
    b.add_argument("--methods", nargs="+", default=list(BASELINES))
    b.add_argument("--per-method", type=int, default=24)
    b.add_argument("--max-new-tokens", type=int, default=96)
    m = sub.add_parser("merge", help="join hand labels into the shipped file")
    m.add_argument("--responses", type=Path, nargs="+", required=True)
    m.add_argument("--labels", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "generate":
        generate_responses(args.out, args.max_new_tokens, args.edits, args.extra_per_edit, args.limit)
    elif args.cmd == "baselines":
        generate_baselines(args.out, args.runs, args.methods, args.per_method, args.max_new_tokens)
    elif args.cmd == "comply":
        generate_comply(args.out, args.max_new_tokens)
    else:
        merge_labels(args.responses, args.labels, args.out)


if __name__ == "__main__":
    main()
