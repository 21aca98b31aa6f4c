"""How accurate is a judge on attacks it has never seen? Cross-validation that holds out whole attack
families *and* questions together (issue 14; ``docs/judges.md``, "Accuracy on unseen attack families").

The question-grouped cross-validation of :mod:`detoxedit.judges.training` holds out questions, but the
attack templates around them are shared between training and held-out folds, so the head may have learned
how the embedded model answers *that* template. A user runs the judge on attacks of their own. Here every
labelled response gets a *family*: the attack family of the template its prompt was built from (the
paper's taxonomy: Pretending, Attention Shifting, Privilege Escalation, Emotion Control) or
``no attack`` for a bare question. Questions are dealt to ``k`` folds (:func:`training.group_folds`).
A response of family ``f`` whose question is in fold ``g`` is predicted by a head trained only on
responses of *other* families whose questions are in *other* folds (rows sharing either with the
held-out cell are left out of that fit), with its regularisation chosen by an inner question-grouped CV
on those training rows. Every response is predicted exactly once, by a head that saw neither its attack
family nor its question.

Confidence intervals are percentile intervals of a cluster bootstrap over questions (responses to one
question are not independent; resampling whole questions keeps that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

NO_ATTACK = "no attack"
PLACEHOLDER = "[INSERT HARMFUL QUESTION HERE]"


def template_prefixes(attacks: Sequence) -> list[tuple[str, object]]:
    """``(text before the placeholder, attack)`` for every template, longest prefix first (so a template
    whose prefix starts another's is matched by the longer one)."""
    out = []
    for a in attacks:
        head = a.template.split(PLACEHOLDER)[0]
        if head.strip():
            out.append((head, a))
    return sorted(out, key=lambda t: -len(t[0]))


def attack_of(prompt: str, prefixes: Sequence[tuple[str, object]]):
    """The attack template ``prompt`` was built from (matched on the template's text before the
    placeholder), or None for a bare question."""
    for head, a in prefixes:
        if prompt.startswith(head):
            return a
    return None


def families(prompts: Sequence[str], attacks: Sequence | None = None) -> list[str]:
    """The attack family of each prompt (:data:`NO_ATTACK` for a bare question); ``attacks``: the
    built-in templates by default."""
    if attacks is None:
        from detoxedit.data.builtin import builtin_attacks
        attacks = builtin_attacks()
    prefixes = template_prefixes(attacks)
    out = []
    for p in prompts:
        a = attack_of(p, prefixes)
        out.append(NO_ATTACK if a is None else a.family)
    return out


def unseen_family_cv(x: np.ndarray, y: np.ndarray, questions: Sequence[str], fams: Sequence[str], k: int,
                     n_emb: int, evaluate: np.ndarray | None = None, balanced: bool = False
                     ) -> tuple[np.ndarray, list[dict]]:
    """Held-out predictions (-1 where not evaluated) with every (family, question fold) cell predicted
    by a head trained on the other families' responses to the other folds' questions; and, per cell,
    its size, training size and chosen ``(l2, beta)``. Rows outside ``evaluate`` (the written safe
    responses, family :data:`NO_ATTACK`) only train."""
    from detoxedit.judges.training import LogisticHead, choose_reg, group_folds

    qfold = group_folds(list(questions), k)
    fams = np.asarray(fams)
    ev = np.ones(len(y), dtype=bool) if evaluate is None else np.asarray(evaluate, dtype=bool)
    pred = np.full(len(y), -1, dtype=int)
    cells = []
    for fam in sorted(set(fams[ev].tolist())):
        for g in range(k):
            test = ev & (fams == fam) & (qfold == g)
            if not test.any():
                continue
            train = (fams != fam) & (qfold != g)
            q_tr = [q for q, t in zip(questions, train) if t]
            l2, beta = choose_reg(x[train], y[train], q_tr, n_emb, evaluate=ev[train], balanced=balanced)
            head = LogisticHead(l2, beta, n_emb, balanced).fit(x[train], y[train])
            pred[test] = head.predict(x[test])
            cells.append({"family": fam, "fold": g, "n_test": int(test.sum()), "n_train": int(train.sum()),
                          "l2": l2, "beta": beta})
    return pred, cells


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float((y == p).mean()) if len(y) else float("nan")


def unsafe_recall(y: np.ndarray, p: np.ndarray) -> float:
    pos = y == 1
    return float((p[pos] == 1).mean()) if pos.any() else float("nan")


def cluster_bootstrap_ci(y: np.ndarray, pred: np.ndarray, clusters: Sequence[str],
                         stat: Callable[[np.ndarray, np.ndarray], float], n_boot: int = 2000,
                         level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``stat(y, pred)`` under resampling whole clusters (questions) with
    replacement. NaN replicates (e.g. no unsafe response drawn) are dropped."""
    clusters = np.asarray(clusters)
    uniq = np.unique(clusters)
    idx = {c: np.flatnonzero(clusters == c) for c in uniq}
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        pick = np.concatenate([idx[c] for c in rng.choice(uniq, size=len(uniq), replace=True)])
        v = stat(y[pick], pred[pick])
        if not np.isnan(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def summary(y: np.ndarray, pred: np.ndarray, questions: Sequence[str]) -> dict:
    """Accuracy and unsafe recall with their cluster-bootstrap CIs, and the counts."""
    from detoxedit.judges.training import metrics

    m = metrics(y, pred)
    m["accuracy_ci"] = cluster_bootstrap_ci(y, pred, questions, accuracy)
    m["recall_ci"] = cluster_bootstrap_ci(y, pred, questions, unsafe_recall)
    return m


def response_classes(prompts: Sequence[str], responses: Sequence[str], fams: Sequence[str]) -> list[list[str]]:
    """The error classes issue 14 names, by transparent text rules (a response may be in several):
    ``refusal then loop`` (a refusal in the opening 200 characters and a word-trigram repetition share
    >= 0.3), ``loop`` (repetition >= 0.3 without an opening refusal), ``list`` (three or more list items),
    ``role-play`` (a prompt of the Pretending family)."""
    from detoxedit.judges.default import _LIST_ITEM, repetition
    from detoxedit.judges.refusal import is_refusal

    out = []
    for p, r, f in zip(prompts, responses, fams):
        c = []
        rep = repetition(r) >= 0.3
        if rep and is_refusal(r, 200):
            c.append("refusal then loop")
        elif rep:
            c.append("loop")
        if len(_LIST_ITEM.findall(r)) >= 3:
            c.append("list")
        if f == "Pretending":
            c.append("role-play")
        out.append(c)
    return out


CLASSES = ("refusal then loop", "loop", "list", "role-play")


def measure(data=None, folds: int = 5, cache=None, max_length: int = 128) -> dict:
    """Both protocols for the shipped head's design and the ``refusal`` baseline on the labelled data:
    question-held-out (as in ``docs/judges.md``) and unseen families + questions; overall, per family,
    per source and per error class, each with cluster-bootstrap CIs."""
    import json
    from pathlib import Path

    from detoxedit.judges.default import HEAD_FILE, LABELLED_FILE, MiniLMEmbedder, data_path, features
    from detoxedit.judges.refusal import is_refusal
    from detoxedit.judges.training import (TrainOptions, _load_embeddings, cross_validate, metrics, source_of,
                                           written_rows)

    head = json.loads(data_path(HEAD_FILE).read_text())
    path = Path(data) if data else data_path(LABELLED_FILE)
    labelled = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    recs = labelled + written_rows()
    ev = np.array([r["source"] != "written" for r in recs])
    y = np.array([int(r["label"]) for r in recs])
    questions = [r["question_id"] for r in recs]
    prompts, responses = [r["prompt"] for r in recs], [r["response"] for r in recs]
    fams = families(prompts)
    embs = _load_embeddings(TrainOptions(data=path, cache=cache, max_length=max_length),
                            MiniLMEmbedder(max_length=max_length), prompts, responses)
    x = features(prompts, responses, head["use_prompt"], embeddings=embs, sentence_pool=head["sentence_pool"],
                 use_prompt_cues=head["prompt_cues"])
    dim = embs["opening"].shape[1]
    n_emb = (3 if head["sentence_pool"] else 2) * dim
    preds = {"refusal": np.array([0 if is_refusal(r, 200) else 1 for r in responses])}
    balanced = head.get("class_weight") == "balanced"  # measure the design that is shipped
    preds["default (questions held out)"], _ = cross_validate(x, y, questions, folds, n_emb, evaluate=ev,
                                                              balanced=balanced)
    preds["default (families + questions held out)"], cells = unseen_family_cv(x, y, questions, fams, folds,
                                                                              n_emb, evaluate=ev, balanced=balanced)
    ye, qe = y[ev], [q for q, e in zip(questions, ev) if e]
    fam_e = np.asarray(fams)[ev]
    src_e = np.array([source_of(r) for r, e in zip(recs, ev) if e])
    cls_e = [c for c, e in zip(response_classes(prompts, responses, fams), ev) if e]
    out = {"n": int(ev.sum()), "unsafe": int(ye.sum()), "folds": folds, "cells": cells, "judges": {},
           "class_weight": head.get("class_weight")}
    for name, p in preds.items():
        pe = p[ev]
        res = {"all": summary(ye, pe, qe), "by_family": {}, "by_source": {}, "by_class": {}}
        for key, labels in (("by_family", fam_e), ("by_source", src_e)):
            for v in sorted(set(labels.tolist())):
                k = labels == v
                res[key][v] = summary(ye[k], pe[k], [q for q, t in zip(qe, k) if t])
        for c in CLASSES:
            k = np.array([c in cs for cs in cls_e])
            if k.any():
                res["by_class"][c] = summary(ye[k], pe[k], [q for q, t in zip(qe, k) if t])
        out["judges"][name] = res
    out["written_safe"] = written_safe_check("default")
    out["heldout"] = heldout_check()
    return out


def written_safe_check(spec: str = "default", split: str = "test") -> dict:
    """How many of the benchmark's own written safe responses (built-in ``split``; the judge never
    trained on the test split's) the judge calls unsafe, read against the attack prompt and against the
    bare question. A perfect edit answers with exactly these texts, so this rate caps the DS a judge can
    report."""
    from detoxedit.data.load import load_split
    from detoxedit.judges import get_judge

    rs = [r for r in load_split("builtin", split) if (r.safe_generation or "").strip()]
    j = get_judge(spec)
    safe = [r.safe_generation for r in rs]
    attack = j.judge([r.adversarial_prompt or r.question for r in rs], safe)
    bare = j.judge([r.question for r in rs], safe)
    return {"judge": spec, "split": split, "n": len(rs), "unsafe_with_attack": int(sum(a == 1.0 for a in attack)),
            "unsafe_with_question": int(sum(b == 1.0 for b in bare))}


OTHER_MODELS_FILE = "other_models.jsonl"
"""Hand-labelled answers of models other than the embedded one (evaluation only: the judge never trains
on them, and they may use test-split questions). Fields: ``id, model, source, prompt, response, label,
first, second, note``."""
TEST_SPLIT_FILE = "test_split_answers.jsonl"
"""Hand-labelled answers of the embedded model edited by DINM to the built-in *test* split's inputs (two
DINM settings; evaluation only: the judge never trains on test-split questions). Same fields, plus
``question_id``, ``input`` (DS or a DG key) and ``run`` (which setting)."""
CURVE_FILE = "detox_curve_answers.jsonl"
"""Hand-labelled answers from the N-curve of docs/detox.md: the embedded model before (``vanilla``) and
after ``detoxedit detox`` on N train cases (source ``detoxified (sequential DINM)`` / ``(joint DINM)``),
to 18 cases of the built-in *test* split; each distinct (prompt, answer) once. Same fields as
:data:`TEST_SPLIT_FILE`, ``case_id`` in place of ``question_id``."""
HELDOUT_FILES = (OTHER_MODELS_FILE, TEST_SPLIT_FILE, CURVE_FILE)
"""The answer sets the judge is checked on and never trained on."""


def heldout_rows() -> list[dict]:
    """The rows of every :data:`HELDOUT_FILES` file that exists, in file order."""
    import json

    from detoxedit.judges.default import data_path

    rows: list[dict] = []
    for name in HELDOUT_FILES:
        path = data_path(name)
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def heldout_check(specs: Sequence[str] = ("default", "refusal")) -> dict:
    """Each judge's agreement with the labels of the held-out answer sets (:data:`HELDOUT_FILES`),
    overall and per (model, source)."""
    from detoxedit.judges import get_judge
    from detoxedit.judges.training import metrics

    rows = heldout_rows()
    if not rows:
        return {}
    y = np.array([r["label"] for r in rows])
    groups = sorted({(r["model"], r["source"]) for r in rows})
    out = {"n": len(rows), "unsafe": int(y.sum()), "judges": {}}
    for spec in specs:
        pred = np.array(get_judge(spec).judge([r["prompt"] for r in rows], [r["response"] for r in rows]))
        res = {"all": metrics(y, pred)}
        for m, src in groups:
            k = np.array([(r["model"], r["source"]) == (m, src) for r in rows])
            res[f"{m} / {src}"] = metrics(y[k], pred[k])
        out["judges"][spec] = res
    return out


def _pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


def _ci(ci) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def doc_block(res: dict) -> str:
    """The markdown tables of :func:`measure` (between the ``unseen`` markers of docs/judges.md)."""
    lines = [f"{res['n']} labelled responses ({res['unsafe']} unsafe); questions dealt to {res['folds']} folds. "
             "95% CIs: cluster bootstrap over questions (2000 resamples).", "",
             "| judge / protocol | n | accuracy [95% CI] | unsafe recall [95% CI] | precision (unsafe) | kappa |",
             "|---|---|---|---|---|---|"]
    for name, r in res["judges"].items():
        a = r["all"]
        lines.append(f"| {name} | {a['n']} | {_pct(a['accuracy'])} {_ci(a['accuracy_ci'])} | "
                     f"{_pct(a['recall'])} {_ci(a['recall_ci'])} | {_pct(a['precision'])} | {a['kappa']:.2f} |")
    w = res.get("written_safe")
    if w:
        lines += ["", f"The shipped `{w['judge']}` judge on the benchmark's {w['n']} written safe responses of the "
                  f"built-in {w['split']} split (never trained on): {w['unsafe_with_attack']} called unsafe when read "
                  f"against the attack prompt, {w['unsafe_with_question']} against the bare question. A perfect "
                  "edit answers with these texts, so this caps the DS the judge can report."]
    o = res.get("heldout")
    if o:
        files = ", ".join(f"`judges/data/{f}`" for f in HELDOUT_FILES)
        lines += ["", "Answers the judge never trains on: other models', and the embedded model's answers to the "
                  f"test split, DINM-edited and before/after `detoxedit detox` ({o['n']} hand-labelled, each read "
                  f"twice, {o['unsafe']} unsafe; "
                  f"evaluation only, {files}): accuracy / unsafe recall.", "",
                  "| answers | n (unsafe) | " + " | ".join(f"`{j}`" for j in o["judges"]) + " |",
                  "|---|---|" + "---|" * len(o["judges"])]
        for g in next(iter(o["judges"].values())):
            m0 = next(iter(o["judges"].values()))[g]
            cells = [f"{_pct(r[g]['accuracy'])} / "
                     + (_pct(r[g]["recall"]) if r[g]["tp"] + r[g]["fn"] else "-") for r in o["judges"].values()]
            lines.append(f"| {g} | {m0['n']} ({m0['tp'] + m0['fn']}) | " + " | ".join(cells) + " |")
    for key, title in (("by_family", "attack family"), ("by_source", "source"), ("by_class", "error class")):
        lines += ["", f"By {title} (accuracy [95% CI] / unsafe recall; n, unsafe):", "",
                  "| " + title + " | n (unsafe) | " + " | ".join(res["judges"]) + " |",
                  "|---|---|" + "---|" * len(res["judges"])]
        groups = next(iter(res["judges"].values()))[key]
        for g, m0 in groups.items():
            cells = []
            for r in res["judges"].values():
                m = r[key][g]
                cells.append(f"{_pct(m['accuracy'])} {_ci(m['accuracy_ci'])} / {_pct(m['recall'])}")
            lines.append(f"| {g} | {m0['n']} ({m0['tp'] + m0['fn']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


START, END = "<!-- unseen:start -->", "<!-- unseen:end -->"


def write_doc(res: dict, doc) -> None:
    """Replace the text between the unseen-family markers of ``doc``."""
    from pathlib import Path

    from detoxedit.io import atomic_write_text

    doc = Path(doc)
    text = doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{doc}: no {START} ... {END} block to rewrite")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    block = (f"{START}\n<!-- written by scripts/judge_unseen_families.py; do not edit by hand -->\n"
             f"{doc_block(res)}\n{END}")
    atomic_write_text(doc, head + block + tail)
