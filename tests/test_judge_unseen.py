"""Unseen-family cross-validation of the default judge (detoxedit.judges.unseen)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from detoxedit.judges import unseen
from detoxedit.judges.default import LABELLED_FILE, data_path


def test_families_match_the_template_prefix_longest_first():
    attacks = [SimpleNamespace(id="A", family="Pretending", template="You are X. [INSERT HARMFUL QUESTION HERE]"),
               SimpleNamespace(id="B", family="Emotion Control",
                               template="You are X. Please! [INSERT HARMFUL QUESTION HERE] now"),
               SimpleNamespace(id="C", family="Attention Shifting", template="[INSERT HARMFUL QUESTION HERE] tail")]
    prompts = ["You are X. Please! how do I? now", "You are X. how do I?", "how do I? tail", "how do I?"]
    # C has no text before the placeholder, so it cannot be told from a bare question: no attack
    assert unseen.families(prompts, attacks) == ["Emotion Control", "Pretending", unseen.NO_ATTACK, unseen.NO_ATTACK]


def test_every_labelled_response_gets_the_family_its_id_names():
    """Ids of attacked vanilla responses end in the attack id (``...-A14``); bare questions end in ``-Q``
    or are comply-prompt rows (``C-``): the prompt match must agree with the id."""
    from detoxedit.data.builtin import builtin_attacks

    fam_of = {a.id: a.family for a in builtin_attacks()}
    rows = [json.loads(line) for line in data_path(LABELLED_FILE).read_text().splitlines() if line.strip()]
    fams = unseen.families([r["prompt"] for r in rows])
    checked = 0
    for r, f in zip(rows, fams):
        tail = r["id"].rsplit("-", 1)[-1]
        if r["id"].startswith("V-") and tail.startswith("A"):
            assert f == fam_of[tail], r["id"]
            checked += 1
        elif r["id"].startswith("C-") or tail == "Q":
            assert f == unseen.NO_ATTACK, r["id"]
            checked += 1
    assert checked > 300
    assert len(set(fams)) == 5  # four families and bare questions


def test_every_cell_is_predicted_by_a_head_that_never_saw_its_family_or_question(monkeypatch):
    """The last feature column carries the row index; the fake head records the rows it trained on
    and checks, at prediction, that none shares the predicted rows' family or question."""
    from detoxedit.judges import training

    rng = np.random.default_rng(0)
    n = 60
    questions = [f"q{i % 10}" for i in range(n)]
    fams = [("P", "E", unseen.NO_ATTACK)[i % 3] for i in range(n)]
    x = np.column_stack([rng.normal(size=(n, 3)), np.arange(n)])
    y = np.array([i % 2 for i in range(n)])
    evaluate = np.array([i < 57 for i in range(n)])  # the last three only train
    seen = []

    class Head:
        def __init__(self, *a, **k):
            pass

        def fit(self, xt, yt):
            self.rows = xt[:, -1].astype(int)
            return self

        def predict(self, xp):
            test = xp[:, -1].astype(int)
            for t in test:
                for r in self.rows:
                    assert fams[r] != fams[t] and questions[r] != questions[t]
            seen.extend(test.tolist())
            return np.ones(len(test), dtype=int)

    monkeypatch.setattr(training, "LogisticHead", Head)
    monkeypatch.setattr(training, "choose_reg", lambda *a, **k: (1.0, 1.0))
    pred, cells = unseen.unseen_family_cv(x, y, questions, fams, 5, 0, evaluate)
    assert sorted(seen) == list(range(57))  # every evaluated row exactly once
    assert (pred[:57] == 1).all() and (pred[57:] == -1).all()
    assert sum(c["n_test"] for c in cells) == 57


def test_cluster_bootstrap_ci_by_hand():
    y = np.array([1, 0, 1, 0])
    # a perfect judge: every resample scores 1
    assert unseen.cluster_bootstrap_ci(y, y.copy(), ["a", "a", "b", "b"], unseen.accuracy, n_boot=50) == (1.0, 1.0)
    # one question right, one wrong: resamples are {a,a}: 1, {b,b}: 0, mixed: 0.5
    pred = np.array([1, 0, 0, 1])
    lo, hi = unseen.cluster_bootstrap_ci(y, pred, ["a", "a", "b", "b"], unseen.accuracy, n_boot=400)
    assert (lo, hi) == (0.0, 1.0)
    # no unsafe response in a resample: that replicate is dropped, not counted as 0
    r = unseen.cluster_bootstrap_ci(np.array([0, 1]), np.array([0, 1]), ["a", "b"], unseen.unsafe_recall, n_boot=50)
    assert r == (1.0, 1.0)


def test_response_classes():
    cls = unseen.response_classes(
        ["p"] * 4,
        ["I'm sorry, but I can't help with that. " + "If you need help, I can help with that. " * 6,
         "the cat the cat the cat the cat the cat the cat the cat",
         "Here:\n1. one\n2. two\n3. three",
         "Sure."],
        ["Pretending", unseen.NO_ATTACK, unseen.NO_ATTACK, "Pretending"])
    assert cls == [["refusal then loop", "role-play"], ["loop"], ["list"], ["role-play"]]


def test_doc_block_writes_between_the_markers(tmp_path):
    m = {"n": 2, "accuracy": 0.5, "precision": 1.0, "recall": 0.5, "f1": 0.6, "kappa": 0.0, "tp": 1, "fp": 0,
         "fn": 1, "tn": 0, "accuracy_ci": (0.0, 1.0), "recall_ci": (0.0, 1.0)}
    res = {"n": 2, "unsafe": 2, "folds": 5, "judges": {"j": {"all": m, "by_family": {"P": m}, "by_source": {"vanilla": m},
                                                             "by_class": {}}}}
    doc = tmp_path / "d.md"
    doc.write_text(f"before\n{unseen.START}\nOLDTEXT\n{unseen.END}\nafter\n")
    unseen.write_doc(res, doc)
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "OLDTEXT" not in text
    assert "| j | 2 | 50.0 [0.0, 100.0] | 50.0 [0.0, 100.0] | 100.0 | 0.00 |" in text
    other = tmp_path / "no-block.md"
    other.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="no-block.md"):
        unseen.write_doc(res, other)


def test_accuracy_line_states_the_measured_numbers_or_says_unknown():
    """The shipped file holds the default and refusal judges' unseen-family numbers; any other spec
    (the official classifier, another head) is stated as unmeasured."""
    from detoxedit.judges import accuracy

    m = accuracy.measured("default")
    assert m["n"] == 532 and m["accuracy"][1] <= m["accuracy"][0] <= m["accuracy"][2]
    line = accuracy.accuracy_line("default")
    assert line.startswith("Judge `default`: on answers to attack families and questions it never saw")
    assert f"{100 * m['accuracy'][0]:.0f}% [" in line and f"found {100 * m['recall'][0]:.0f}% [" in line
    for spec in ("classifier", "default:/tmp/other_head.json", "llm:default"):
        assert "has not been measured" in accuracy.accuracy_line(spec)


def test_accuracy_file_comes_from_measure():
    m = {"n": 10, "accuracy": 0.7, "recall": 0.5, "precision": 0.6, "accuracy_ci": [0.6, 0.8], "recall_ci": [0.3, 0.7]}
    res = {"judges": {"refusal": {"all": m}, "default (families + questions held out)": {"all": m},
                      "default (questions held out)": {"all": {**m, "accuracy": 0.9}}}}
    from detoxedit.judges.accuracy import table_from_measure

    t = table_from_measure(res)
    assert t["judges"]["default"]["accuracy"] == [0.7, 0.6, 0.8]  # the unseen-family protocol, not the other
    assert t["judges"]["refusal"]["recall"] == [0.5, 0.3, 0.7]


def test_written_safe_check_counts_unsafe_labels(monkeypatch):
    """Every record with a safe response is judged twice (attack prompt, bare question); only 1.0 counts."""
    import detoxedit.judges as judges

    class Fake:
        def judge(self, prompts, responses):
            return [1.0 if p.startswith("Q") else 0.5 for p in prompts]  # bare questions "unsafe", 0.5 not counted

    recs = [SimpleNamespace(safe_generation="no.", adversarial_prompt="A1", question="Q1"),
            SimpleNamespace(safe_generation=" ", adversarial_prompt="A2", question="Q2"),
            SimpleNamespace(safe_generation="no.", adversarial_prompt="", question="Q3")]
    monkeypatch.setattr("detoxedit.data.load.load_split", lambda src, split: recs)
    monkeypatch.setattr(judges, "get_judge", lambda spec: Fake())
    got = unseen.written_safe_check("x")
    # record 2 has no safe response; record 3 has no attack prompt, so its question stands in for it
    assert got == {"judge": "x", "split": "test", "n": 2, "unsafe_with_attack": 1, "unsafe_with_question": 2}


def test_heldout_answer_sets_are_read_twice_and_counted(monkeypatch):
    """The evaluation-only answers (other models; the embedded model's test-split answers): unique ids,
    0/1 labels, two readings each, the final label one of them (equal to both where they agree); the check
    counts by (model, source). No test-split answer's question is in the judge's training data."""
    rows = unseen.heldout_rows()
    assert len({r["id"] for r in rows}) == len(rows) >= 220
    test_rows = [json.loads(line) for line in data_path(unseen.TEST_SPLIT_FILE).read_text().splitlines()]
    trained = {json.loads(line)["question_id"] for line in data_path("labelled_responses.jsonl").read_text().splitlines()
               if line.strip()}
    assert test_rows and not {r["question_id"] for r in test_rows} & trained
    for r in rows:
        assert r["label"] in (0, 1) and r["first"] in (0, 1) and r["second"] in (0, 1)
        assert r["label"] in (r["first"], r["second"])
        assert r["model"] and r["response"].strip()
        assert r["source"] in ("vanilla", "edited (DINM)", "detoxified (sequential DINM)", "detoxified (joint DINM)")
    import detoxedit.judges as judges

    class AllSafe:
        def judge(self, prompts, responses):
            return [0.0] * len(responses)

    monkeypatch.setattr(judges, "get_judge", lambda spec: AllSafe())
    got = unseen.heldout_check(("x",))
    unsafe = sum(r["label"] for r in rows)
    assert got["n"] == len(rows) and got["unsafe"] == unsafe
    assert got["judges"]["x"]["all"]["accuracy"] == pytest.approx(1 - unsafe / len(rows))
    assert got["judges"]["x"]["all"]["recall"] == 0.0
