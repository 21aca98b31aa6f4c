"""The edits whose general ability ``detoxedit general`` (and the demo) measure: made from cases of a
SafeEdit split with a run's method and settings, or exactly as a finished bench run made them."""

from __future__ import annotations

from pathlib import Path

from detoxedit.config import RunConfig
from detoxedit.errors import DetoxEditError


def edits_from_cases(model, tok, cfg: RunConfig, method=None):
    """``[(case id, zero-argument callable making that case's edit)]`` for the cases ``cfg`` selects
    (``--cases``, ``--per-category``, ``--limit``; the first case when none is given), with the run's
    method setup (``method``: an already prepared method, e.g. with its trained artefact loaded)."""
    from detoxedit.cases import select_records, to_edit_case, with_unsafe_answer
    from detoxedit.data.load import load_split, split_source
    from detoxedit.models.generate import GenerationSettings
    from detoxedit.settings import prepare_method

    records = load_split(cfg.data, cfg.split)
    if cfg.cases is None and cfg.per_category is None and cfg.limit is None:
        cfg = RunConfig(**{**cfg.to_dict(), "limit": 1})
    chosen = select_records(records, cfg)
    method = method or prepare_method(cfg)
    source = split_source(cfg.data, cfg.split)
    settings = GenerationSettings(max_new_tokens=method.max_new_tokens, prompt_format=method.prompt_format)

    def maker(index, record):
        def make():
            case = with_unsafe_answer(to_edit_case(record, source, index), model, tok, settings)
            return method.editor.edit(model, tok, case)
        return make

    return [(str(r.id), maker(i, r)) for i, r in chosen]


def edits_from_run(model, tok, run_dir, case_ids: list[str] | None):
    """The edit(s) a bench run's method makes, set up exactly as the run was, and the editor.

    A method that uses the instance edits on the given cases (default: the run's first finished case);
    one that does not (SFT, DPO, Ext-Sub, Self-Reminder) contributes its one shared edit.
    """
    from detoxedit.bench.records import read_run_records
    from detoxedit.bench.training import ensure_artifact
    from detoxedit.methods.base import needs_training, uses_instance
    from detoxedit.settings import prepare_method

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DetoxEditError(f"{run_dir} is not a bench run (no config.yaml)")
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    method = prepare_method(cfg)
    if needs_training(method.editor):
        ensure_artifact(method, cfg, run_dir, model, tok, progress=False)
    if not uses_instance(method.editor):
        return [("shared", lambda: method.editor.edit(model, tok, None))], method.editor, cfg
    if not case_ids:
        recs = read_run_records(run_dir)
        if not recs:
            raise DetoxEditError(f"{run_dir} has no finished case to edit on; pass --cases ID")
        case_ids = [recs[0]["case_id"]]
    chosen = RunConfig(**{**cfg.to_dict(), "cases": list(case_ids), "limit": None, "per_category": None})
    return edits_from_cases(model, tok, chosen, method=method), method.editor, cfg
