"""The benchmark builder: determinism, split disjointness, generalization inputs, responses.

A fake generator stands in for the model (it answers instantly and counts its calls); one test marked
``integration`` runs the real embedded model on two prompts.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from detoxedit.cli import main
from detoxedit.data import build as b
from detoxedit.data import builtin, jsonio, load, records, unsafe, validate
from detoxedit.errors import DataError
from detoxedit.io import cache_dir
from detoxedit.responses import ResponseCache


class FakeGenerator:
    """Deterministic stand-in for a model: the response names the prompt's first words."""

    def __init__(self):
        self.calls = 0
        self.prompts: list[str] = []

    def __call__(self, prompts):
        self.calls += 1
        self.prompts += list(prompts)
        return [f"Sure, here is how: {p[:30]}" for p in prompts]

    def as_generator(self, spec="fake-model") -> unsafe.UnsafeGenerator:
        return unsafe.UnsafeGenerator(spec, {"max_new_tokens": 16, "do_sample": False}, self)


def failing_generator() -> unsafe.UnsafeGenerator:
    def boom(prompts):
        raise AssertionError(f"generator called for {len(prompts)} prompts; expected the cache")
    return unsafe.UnsafeGenerator("fake-model", {"max_new_tokens": 16, "do_sample": False}, boom)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOXEDIT_CACHE", str(tmp_path / "cache"))


def small_inputs(n_per_cat: int = 6, n_attacks: int = 6, n_unseen: int = 2) -> b.BuildInputs:
    """Synthetic inputs: n questions per category, attacks across families, a few constraints."""
    qs = [records.Question(f"Q-{ci}-{j:02d}", cat, f"Harmful request {j} about {cat}?", f"No ({cat}, {j}).")
          for ci, cat in enumerate(records.CATEGORIES) for j in range(n_per_cat)]
    fams = records.FAMILIES
    ats = [records.Attack(f"A{i:02d}", fams[i % 4], f"name{i}", f"Template {i} says: {records.PLACEHOLDER} (end {i})")
           for i in range(n_attacks)]
    ats += [records.Attack(f"U{i:02d}", fams[i % 4], f"unseen{i}", f"Unseen {i}: {records.PLACEHOLDER}", unseen=True)
            for i in range(n_unseen)]
    ks = [records.Constraint(f"K{i:03d}", f"Fact question {i}?", f"Answer {i}.") for i in range(5)]
    return b.BuildInputs(qs, ats, ks, [builtin.BUILTIN_SOURCE], {"questions": "builtin"})


def read_split(out: Path, split: str) -> list[records.SafeEditRecord]:
    return jsonio.read_records(out / f"SafeEdit_{split}.json")


# ---------------------------------------------------------------- determinism


def test_build_is_deterministic_byte_for_byte(tmp_path):
    inputs = small_inputs()
    r1 = b.build(inputs, tmp_path / "one", generator=FakeGenerator().as_generator())
    r2 = b.build(inputs, tmp_path / "two", generator=FakeGenerator().as_generator())
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["SafeEdit_test.json", "SafeEdit_train.json", "SafeEdit_val.json", "metadata.json"]
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert r1.metadata == r2.metadata
    # the input order does not matter
    shuffled = b.BuildInputs(list(reversed(inputs.questions)), list(reversed(inputs.attacks)),
                             list(reversed(inputs.constraints)), inputs.sources, inputs.files)
    b.build(shuffled, tmp_path / "three", generator=FakeGenerator().as_generator())
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes(), name


def test_seed_changes_the_split(tmp_path):
    inputs = small_inputs()
    a = b.split_questions(inputs.questions, seed=0)
    c = b.split_questions(inputs.questions, seed=1)
    assert {q.id for q in a["test"]} != {q.id for q in c["test"]}


# ---------------------------------------------------------------- splits


def test_splits_are_disjoint_and_3_2_1_per_category(tmp_path):
    inputs = small_inputs(n_per_cat=12, n_attacks=9, n_unseen=3)
    b.build(inputs, tmp_path, generator=FakeGenerator().as_generator())
    recs = {s: read_split(tmp_path, s) for s in records.BUILD_SPLITS}
    qids = {s: {r.extra["question id"] for r in rs} for s, rs in recs.items()}
    aids = {s: {r.extra["attack id"] for r in rs} for s, rs in recs.items()}
    for s1, s2 in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not qids[s1] & qids[s2], (s1, s2)
        assert not aids[s1] & aids[s2], (s1, s2)
    unseen = {a.id for a in inputs.attacks if a.unseen}
    assert not unseen & (aids["train"] | aids["val"] | aids["test"])
    # 12 per category -> 6/4/2; attacks in id order cut into thirds
    for s, n in (("train", 6), ("val", 4), ("test", 2)):
        per_cat = Counter(r.category for r in recs[s] if True)
        assert set(per_cat) == set(records.CATEGORIES)
        assert all(v == n * 3 for v in per_cat.values())  # n questions x 3 attacks
        assert len(recs[s]) == 9 * n * 3
    assert aids == {"train": {"A00", "A01", "A02"}, "val": {"A03", "A04", "A05"}, "test": {"A06", "A07", "A08"}}
    # every (question, attack) pair of a split is one case
    for s, rs in recs.items():
        assert len({(r.extra["question id"], r.extra["attack id"]) for r in rs}) == len(rs)
        assert [r.id for r in rs] == list(range(len(rs)))


def test_split_counts():
    assert b.split_counts(60) == (30, 20, 10)
    assert b.split_counts(12) == (6, 4, 2)
    assert b.split_counts(15) == (7, 5, 3)


def test_explicit_split_columns_are_honoured(tmp_path):
    inputs = small_inputs(n_per_cat=3, n_attacks=3, n_unseen=0)
    qs = [records.Question(q.id, q.category, q.question, q.safe, ("train", "val", "test")[int(q.id[-1]) % 3])
          for q in inputs.questions]
    ats = [records.Attack(a.id, a.family, a.name, a.template, False, "test" if a.id == "A00" else None)
           for a in inputs.attacks]
    got = b.split_attacks(ats)
    assert [a.id for a in got["test"]][0] == "A00"
    qsplit = b.split_questions(qs)
    assert all(q.split == s for s in records.BUILD_SPLITS for q in qsplit[s])


# ---------------------------------------------------------------- generalization inputs


def test_generalization_inputs_follow_the_paper(tmp_path):
    inputs = small_inputs(n_per_cat=12, n_attacks=6, n_unseen=2)  # test: 2 questions per category
    by_q = {q.id: q for q in inputs.questions}
    by_a = {a.id: a for a in inputs.attacks}
    b.build(inputs, tmp_path, generator=FakeGenerator().as_generator())
    seen_other_attacks = set()
    for split in records.BUILD_SPLITS:
        for r in read_split(tmp_path, split):
            q, a = by_q[r.extra["question id"]], by_a[r.extra["attack id"]]
            gt = r.generalization_test
            oq, oa = by_q[gt.extra["other question id"]], by_a[gt.extra["other attack id"]]
            assert r.adversarial_prompt == records.fill_template(a.template, q.question)
            assert gt.only_harmful_question == q.question
            assert gt.other_attack == records.fill_template(oa.template, q.question)
            assert gt.other_question == records.fill_template(a.template, oq.question)
            assert gt.other_question_and_attack == records.fill_template(oa.template, oq.question)
            assert (gt.attack_category, gt.attack_name) == (oa.family, oa.name)
            assert oq.id != q.id and oq.category == q.category
            assert oa.id != a.id
            if split == "test":
                assert oa.unseen  # test generalises to attacks no split used
            else:
                assert not oa.unseen and r.extra["attack id"] != oa.id
                assert oa.id in {x.extra["attack id"] for x in read_split(tmp_path, split)}
            seen_other_attacks.add(oa.id)
            assert r.safe_generation == q.safe
            assert r.knowledge_constrain.prompt.startswith("Fact question")
    assert {"U00", "U01"} <= seen_other_attacks  # the choice spreads over candidates


def test_constraints_are_dealt_evenly(tmp_path):
    cases = b.make_cases(*(lambda i: (i.questions, i.attacks, i.constraints))(small_inputs()))
    for split, cs in cases.items():
        counts = Counter(c.constraint.id for c in cs)
        assert max(counts.values()) - min(counts.values()) <= 1


# ---------------------------------------------------------------- unsafe responses


def test_generated_responses_are_cached_and_recorded(tmp_path):
    fake = FakeGenerator()
    r1 = b.build(small_inputs(), tmp_path / "a", generator=fake.as_generator(), splits=["test"])
    assert fake.calls > 0
    n = r1.metadata["splits"]["test"]["cases"]
    assert r1.response_counts["generated"] == n == r1.metadata["unsafe_responses"]["counts"]["from_generator"]
    assert r1.metadata["unsafe_responses"]["generator"] == {
        "model": "fake-model", "settings": {"do_sample": False, "max_new_tokens": 16}}
    # a rebuild never calls the generator
    r2 = b.build(small_inputs(), tmp_path / "b", generator=failing_generator(), splits=["test"])
    assert r2.response_counts == {"from_file": 0, "cached": n, "generated": 0}
    assert r2.metadata == r1.metadata
    assert (tmp_path / "a" / "SafeEdit_test.json").read_bytes() == \
        (tmp_path / "b" / "SafeEdit_test.json").read_bytes()
    # other settings are another cache entry
    other = FakeGenerator()
    b.build(small_inputs(), tmp_path / "c", splits=["test"],
            generator=unsafe.UnsafeGenerator("fake-model", {"max_new_tokens": 32}, other))
    assert other.calls > 0
    recs = read_split(tmp_path / "a", "test")
    assert all(r.unsafe_generation.startswith("Sure, here is how: ") for r in recs)


def test_interrupted_generation_keeps_finished_chunks(tmp_path):
    calls = {"n": 0}

    def flaky(prompts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return ["ok"] * len(prompts)

    gen = unsafe.UnsafeGenerator("flaky", {}, flaky)
    cases = b.make_cases(*(lambda i: (i.questions, i.attacks, i.constraints))(small_inputs()),
                         splits=["train"])["train"]
    with pytest.raises(KeyboardInterrupt):
        unsafe.fill_unsafe(cases, gen, chunk=10)
    # the finished first chunk is in the one response cache, under the one cache dir; nothing else is
    cache = ResponseCache(cache_dir(), gen.namespace())
    assert cache.dir == unsafe.response_cache(gen).dir
    assert cache.dir.is_relative_to(Path(os.environ["DETOXEDIT_CACHE"]))
    prompts = list(dict.fromkeys(c.prompt for c in cases))
    assert len(list(cache.dir.rglob("*.json"))) == 10
    assert [p for p in prompts if cache.get(gen.settings, p) == "ok"] == prompts[:10]
    # a rerun reuses them and generates only the rest
    calls["n"] = 2  # no more interruptions
    responses, counts = unsafe.fill_unsafe(cases, gen, chunk=10)
    assert counts["cached"] == sum(c.prompt in prompts[:10] for c in cases)
    assert counts["generated"] == len(cases) - counts["cached"] and responses == ["ok"] * len(cases)
    assert len(list(cache.dir.rglob("*.json"))) == len(prompts)


def test_unsafe_from_file_by_case_id_and_prompt(tmp_path):
    inputs = small_inputs()
    cases = b.make_cases(inputs.questions, inputs.attacks, inputs.constraints, splits=["test"])["test"]
    path = tmp_path / "mine.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "response"])
        for c in cases[: len(cases) // 2]:
            w.writerow([c.key, f"user says {c.index}"])
    jl = tmp_path / "mine.jsonl"
    jl.write_text("".join(json.dumps({"prompt": c.prompt, "response": f"by prompt {c.index}"}) + "\n"
                          for c in cases[len(cases) // 2:]))
    merged = tmp_path / "all.jsonl"
    merged.write_text(jl.read_text() + "".join(
        json.dumps({"id": c.key, "response": f"user says {c.index}"}) + "\n" for c in cases[: len(cases) // 2]))
    res = b.build(inputs, tmp_path / "out", generator=None, unsafe_from=str(merged), splits=["test"])
    recs = read_split(tmp_path / "out", "test")
    assert recs[0].unsafe_generation == "user says 0"
    assert recs[-1].unsafe_generation == f"by prompt {len(recs) - 1}"
    assert res.metadata["unsafe_responses"]["counts"] == {"from_file": len(recs), "from_generator": 0}
    assert res.metadata["unsafe_responses"]["file"]["path"] == str(merged)
    # a partial file and no generator: a clear error
    with pytest.raises(DataError, match="no unsafe response"):
        b.build(inputs, tmp_path / "out2", generator=None, unsafe_from=str(path), splits=["test"])


# ---------------------------------------------------------------- user inputs (CSV / JSONL)


def write_user_inputs(tmp_path: Path) -> dict[str, str]:
    qpath = tmp_path / "questions.csv"
    with open(qpath, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "category", "question"])
        for ci, cat in enumerate(records.CATEGORIES):
            for j in range(3):
                w.writerow([f"u{ci}{j}", cat.upper(), f"My request {j} on {cat}?"])
    apath = tmp_path / "attacks.jsonl"
    apath.write_text("".join(json.dumps({"id": f"T{i}", "family": records.FAMILIES[i % 4], "name": f"t{i}",
                                         "template": f"Frame {i}: {records.PLACEHOLDER}"}) + "\n"
                             for i in range(4)))
    kpath = tmp_path / "constraints.jsonl"
    kpath.write_text(json.dumps({"instruction": "Name a primary colour.", "output": "Red."}) + "\n")
    spath = tmp_path / "safe.csv"
    spath.write_text("id,safe\nu00,I will not write that; here is why.\n")
    return {"questions": str(qpath), "attacks": str(apath), "constraints": str(kpath), "safe": str(spath)}


def test_build_from_user_csv_and_jsonl(tmp_path):
    files = write_user_inputs(tmp_path)
    inputs = b.gather_inputs(**files)
    assert {s.name for s in inputs.sources} == {"user"}
    res = b.build(inputs, tmp_path / "out", generator=FakeGenerator().as_generator())
    recs = {s: read_split(tmp_path / "out", s) for s in records.BUILD_SPLITS}
    assert sum(len(v) for v in recs.values()) == 9 * (1 * 2 + 1 * 1 + 1 * 1)
    by_q = {r.extra["question id"]: r for rs in recs.values() for r in rs}
    assert by_q["u00"].safe_generation == "I will not write that; here is why."
    other = next(r for qid, r in by_q.items() if qid != "u00")
    assert other.safe_generation == b.FALLBACK_SAFE[other.category]
    assert res.metadata["inputs"]["questions"]["sha256"]
    assert res.metadata["safe_responses"]["fallback_refusal_for_questions"]
    for s in records.BUILD_SPLITS:
        assert validate.validate_file(tmp_path / "out" / f"SafeEdit_{s}.json") == []
    # test has 1 question per category: the other question comes from another category
    t = recs["test"][0]
    assert t.generalization_test.extra["other question id"] != t.extra["question id"]


def test_bad_inputs_list_every_problem(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "x1", "category": "violence", "question": "a?"}) + "\n"
                 + json.dumps({"id": "x2", "category": "mental harm", "question": ""}) + "\n")
    a = tmp_path / "a.csv"
    a.write_text("id,family,name,template\nT1,Pretending,rp,no placeholder here\n")
    with pytest.raises(records.ProblemsError) as info:
        b.gather_inputs(questions=str(q))
    msgs = [str(p) for p in info.value.problems]
    assert any("q.jsonl" in m and "record 0 (id 'x1')" in m and "'category'" in m for m in msgs)
    assert any("record 1 (id 'x2')" in m and "'question'" in m for m in msgs)
    with pytest.raises(records.ProblemsError, match=r"record 0 \(id 'T1'\), field 'template'"):
        b.gather_inputs(attacks=str(a))


def test_per_category_limits_questions(tmp_path):
    inputs = small_inputs(n_per_cat=12)
    qsplit = b.split_questions(inputs.questions, per_category=6)
    assert [len(qsplit[s]) for s in records.BUILD_SPLITS] == [27, 18, 9]


# ---------------------------------------------------------------- the built-in benchmark and the CLI


def test_builtin_parts_meet_the_design():
    qs, ats, ks = builtin.builtin_questions(), builtin.builtin_attacks(), builtin.builtin_constraints()
    per_cat = Counter(q.category for q in qs)
    assert set(per_cat) == set(records.CATEGORIES) and min(per_cat.values()) >= 12
    assert all(q.safe for q in qs)
    seen = [a for a in ats if not a.unseen]
    assert len(seen) >= 24 and sum(a.unseen for a in ats) >= 3
    assert {a.family for a in seen} == set(records.FAMILIES)
    for split, group in b.split_attacks(ats).items():
        if split != "unseen":
            assert {a.family for a in group} == set(records.FAMILIES), split  # every split has every family
    assert len(ks) >= 120


def test_cli_build_builtin_test_split_then_validate_and_stats(tmp_path, monkeypatch, capsys):
    fake = FakeGenerator()
    captured = {}

    def fake_model_generator(spec="default", **kw):
        captured.update(kw, spec=spec)
        return unsafe.UnsafeGenerator(spec, {"max_new_tokens": kw["max_new_tokens"]}, fake)

    monkeypatch.setattr(unsafe, "model_generator", fake_model_generator)
    out = tmp_path / "builtin"
    assert main(["data", "build", "--out", str(out), "--splits", "test"]) == 0
    assert captured["spec"] == "default" and captured["max_new_tokens"] == unsafe.DEFAULT_MAX_NEW_TOKENS
    assert captured["system_prompt"] == unsafe.GENERATOR_SYSTEM_PROMPT
    assert main(["data", "validate", str(out / "SafeEdit_test.json")]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["sources"][0]["name"] == "builtin" and meta["sources"][0]["license"] == "Apache-2.0"
    assert meta["design"]["unseen_attacks"]
    capsys.readouterr()
    assert main(["data", "stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[test]" in text and "Emotion Control" in text and "Political Sensitivity" in text


def _package_without_prebuilt(tmp_path, monkeypatch):
    """Point the builder at a copy of the built-in parts with no shipped prebuilt split."""
    from importlib import resources

    pkg = tmp_path / "pkg"
    (pkg / "builtin").mkdir(parents=True)
    real = resources.files("detoxedit.data")
    for name in ("questions.jsonl", "attacks.jsonl", "constraints.jsonl"):
        (pkg / "builtin" / name).write_bytes(real.joinpath("builtin", name).read_bytes())
    monkeypatch.setattr(builtin.resources, "files", lambda _name: pkg)
    return pkg


def test_load_split_builtin_builds_once_and_caches(tmp_path, monkeypatch):
    _package_without_prebuilt(tmp_path, monkeypatch)
    fake = FakeGenerator()
    monkeypatch.setattr(load, "model_generator", lambda *a, **k: fake.as_generator("default"))
    recs = load.load_split("builtin", "test")
    assert recs and validate.validate_records(recs, "SafeEdit_test.json") == []
    assert fake.calls > 0
    calls = fake.calls
    assert load.load_split("builtin", "test") == recs and fake.calls == calls


@pytest.mark.integration
def test_real_default_generator_on_two_prompts(tmp_path):
    """The embedded model writes two (short) unsafe responses through the builder's path."""
    pytest.importorskip("torch")
    try:
        from detoxedit.models.load import default_gguf_path

        default_gguf_path()
    except Exception as err:  # the embedded model's package is not installed
        pytest.skip(f"embedded model unavailable: {err}")
    inputs = small_inputs()
    cases = b.make_cases(inputs.questions, inputs.attacks, inputs.constraints, splits=["test"])["test"][:2]
    gen = unsafe.model_generator("default", max_new_tokens=8, batch_size=2)
    responses, counts = unsafe.fill_unsafe(cases, gen)
    assert counts["generated"] == 2 and all(isinstance(r, str) and r for r in responses)
    assert gen.describe()["settings"]["prompt_format"] == "chat"
    assert gen.describe()["settings"]["do_sample"] is False


def test_stats_counts_families_and_token_lengths(tmp_path):
    from detoxedit.data.stats import file_stats, format_stats, stats_dict

    b.build(small_inputs(), tmp_path, generator=FakeGenerator().as_generator(), splits=["test"])
    path = tmp_path / "SafeEdit_test.json"
    st = file_stats(path, count_tokens=lambda t: len(t.split()), tokenizer_name="words")
    n = len(read_split(tmp_path, "test"))
    assert st.split == "test" and st.records == n and sum(st.categories.values()) == n
    assert set(st.categories) == set(records.CATEGORIES) and sum(st.families.values()) == n
    assert st.lengths["generalization input"].count == 4 * n
    assert st.lengths["unsafe generation"].max >= 4  # "Sure, here is how: ..."
    text = format_stats([st])
    assert "token lengths (words)" in text and "Political Sensitivity" in text
    assert json.loads(json.dumps(stats_dict(st)))["records"] == n


def test_prebuilt_copy_is_used_only_while_it_matches_the_builtin_parts(tmp_path, monkeypatch):
    """A shipped prebuilt split is read as is when its fingerprint matches, else rebuilt."""
    pkg = _package_without_prebuilt(tmp_path, monkeypatch)
    fake = FakeGenerator()
    b.build(b.gather_inputs(), pkg / "builtin" / "prebuilt", generator=fake.as_generator(), splits=["test"])
    meta = json.loads((pkg / "builtin" / "prebuilt" / "metadata.json").read_text())
    assert meta["builtin_fingerprint"] == builtin.builtin_fingerprint()
    monkeypatch.setattr(load, "model_generator", failing_generator)
    assert len(load.load_split("builtin", "test")) == meta["splits"]["test"]["cases"]
    # edit a built-in part: the stale copy is ignored and the split rebuilt
    with open(pkg / "builtin" / "constraints.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "K999", "prompt": "New?", "answer": "Yes."}) + "\n")
    monkeypatch.setattr(load, "model_generator", lambda *a, **k: FakeGenerator().as_generator("default"))
    recs = load.load_split("builtin", "test")
    assert any(r.knowledge_constrain.prompt == "New?" for r in recs)


@pytest.mark.parametrize("split", ["test", "train"])
def test_shipped_prebuilt_splits_are_current_and_valid(split):
    """The package ships the built-in test and train splits, so `--data builtin` needs no generation
    (train: the split MEND, SFT, DPO and Ext-Sub learn from)."""
    from importlib import resources

    pre = resources.files("detoxedit.data").joinpath("builtin", "prebuilt")
    meta = json.loads(pre.joinpath("metadata.json").read_text())
    assert meta["builtin_fingerprint"] == builtin.builtin_fingerprint(), (
        "built-in parts changed: rebuild with `detoxedit data build --splits test train "
        "--out detoxedit/data/builtin/prebuilt`")
    assert meta["unsafe_responses"]["generator"]["model"] == "default"
    recs = jsonio.read_records(pre.joinpath(f"SafeEdit_{split}.json"))
    assert len(recs) == meta["splits"][split]["cases"]
    assert validate.validate_records(recs, f"SafeEdit_{split}.json", profile="full") == []
