"""``detoxedit edit``: one edit on one prompt, shown before and after.

Works with every method that learns from the instance (``--method dinm`` by default, ``ft-l``, and
trained editors such as MEND, which read their trained artefact from ``--artifact DIR``). Prints the
edited layer, the loss per step, the edit's validation (did the safe answer take, does the model still
end its turn, what moved elsewhere), the model's response to the prompt before and after the edit
(formatted identically unless ``--protocol paper``), and timings; optionally saves the edit and a
merged checkpoint. Every argument (method, settings, layer range) is checked before the model loads
(``detoxedit.preflight``).
"""

from __future__ import annotations

import argparse
import textwrap
import time

from detoxedit.commands import COMMANDS

EDIT_FLAGS = ("model", "dtype", "device", "device_map", "method", "method_config", "hparams", "protocol",
              "max_new_tokens", "prompt_format", "seed", "artifact")
"""The run flags ``edit`` takes (generated from ``RunConfig``; they mean what they mean in ``bench``)."""
EDIT_DEFAULTS = {"max_new_tokens": 128}


@COMMANDS.register("edit", order=20)
def register(sub) -> None:
    from detoxedit.settings import add_run_arguments

    p = sub.add_parser("edit", help="edit a model on one prompt (DINM, FT-L, MEND, ...) and show the effect",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", required=True, help="the adversarial input to edit on")
    p.add_argument("--safe", required=True, help="the safe response the model should give")
    p.add_argument("--unsafe", default=None,
                   help="an unsafe response, to locate the toxic layer (default: the model's own answer)")
    p.add_argument("--knowledge-prompt", default=None, help="general-knowledge instruction (KL constraint)")
    p.add_argument("--knowledge-answer", default=None, help="its answer")
    add_run_arguments(p, only=EDIT_FLAGS, defaults=EDIT_DEFAULTS, run_config=False)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)  # refused with a pointer, see run()
    p.add_argument("--layer", type=int, default=None, help="edit this layer instead of locating it")
    p.add_argument("--steps", type=int, default=None, help="shortcut for --hparam num_steps=N")
    p.add_argument("--lr", type=float, default=None, help="shortcut for --hparam lr=X")
    p.add_argument("--reference", action="store_true",
                   help="DINM only: reproduce the reference code (KL without gradient, raw prompts, layer "
                        "located once)")
    p.add_argument("--naive", action="store_true", help="DINM: use the naive (full forward) training path")
    p.add_argument("--save-edit", default=None, help="write the edit (PATH.safetensors + PATH.json)")
    p.add_argument("--save-model", default=None, help="write the edited model as a checkpoint directory")
    p.set_defaults(func=run)


def shortcut_overrides(args, method: str) -> dict:
    """The hyper-parameter overrides the shortcut flags stand for (each refused, naming the flag, when
    the method has no such setting), after ``--hparam``."""
    import dataclasses

    from detoxedit.errors import DetoxEditError
    from detoxedit.methods.base import get_method
    from detoxedit.settings import parse_assignments

    hp_cls = getattr(get_method(method), "hparams_class", None)
    fields = {f.name for f in dataclasses.fields(hp_cls)} if hp_cls is not None else set()
    overrides = parse_assignments(args.hparam)
    if args.reference and method != "dinm":
        raise DetoxEditError("--reference reproduces the reference DINM code; it applies to --method dinm only")
    shortcuts = (("--steps", args.steps, {"num_steps": args.steps}),
                 ("--lr", args.lr, {"lr": args.lr}),
                 ("--layer", args.layer, {"layers": [args.layer]} | (
                     {"layer_selection": "configured"} if "layer_selection" in fields else {})),  # FT-L
                 ("--naive", args.naive or None, {"fast_path": False}),
                 ("--reference", args.reference or None,
                  {"kl_grad": False, "locate": "once_per_run", "prompt_format": "raw"}))
    for flag, value, implied in shortcuts:
        if value is None:
            continue
        if hp_cls is None:
            raise DetoxEditError(f"method {method!r} has no hyper-parameters, so {flag} does not apply")
        missing = [k for k in implied if k not in fields]
        if missing:
            raise DetoxEditError(f"{flag} does not apply to method {method!r} (it has no {missing[0]!r} setting)")
        overrides.update(implied)
    return overrides


def _show(title: str, text: str) -> None:
    print(f"\n{title}")
    body = text.strip() or "(empty response)"
    for line in body.splitlines() or [""]:
        print(textwrap.indent(textwrap.fill(line, 100) if line else "", "  "))


def check_method(cfg) -> None:
    """Stop early, before loading a model, for methods ``edit`` cannot run as asked."""
    from detoxedit.errors import DetoxEditError
    from detoxedit.methods.base import get_method, uses_instance
    from detoxedit.preflight import check_artifact

    cls = get_method(cfg.method)
    if not uses_instance(cls):
        raise DetoxEditError(f"method {cfg.method!r} does not learn from an instance, so there is nothing to "
                             f"edit on one prompt; evaluate it with: detoxedit bench --method {cfg.method} --out DIR")
    check_artifact(cfg.method, cls, cfg.artifact)


def _print_edit(meta: dict, hp, n_layers: int) -> None:
    if meta.get("layer") is not None:
        distances = meta.get("distances")
        line = f"\n{'toxic' if 'distances' in meta else 'edited'} layer: {meta['layer']} of {n_layers}"
        if distances:
            line = f"\ntoxic layer: {meta['layer']} of {len(distances)}  (largest hidden-state distances: " + \
                ", ".join(f"L{i}={d:.1f}" for i, d in sorted(enumerate(distances), key=lambda x: -x[1])[:3]) + ")"
            normalized = meta.get("distances_normalized")
            if normalized:
                line = line[:-1] + "; normalized: " + ", ".join(
                    f"L{i}={d:.2f}" for i, d in sorted(enumerate(normalized), key=lambda x: -x[1])[:3]) + ")"
        trace = meta.get("trace")
        if trace:
            eff = trace["effects"]
            line += "  (causal trace, largest indirect effects: " + ", ".join(
                f"L{i}={e:.2f}" for i, e in sorted(enumerate(eff), key=lambda x: -x[1])[:3]) + " nats)"
        print(line)
    if meta.get("param"):
        print(f"edited parameter: {meta['param']}")
    losses = meta.get("losses") or []
    if losses and "edit_loss" in losses[0] and hasattr(hp, "kl_factor"):  # DINM: L = c * L_edit + L_kl
        print("step      loss   c*L_edit       L_kl")
        for row in losses:
            print(f"{row['step']:>4} {row['loss']:>9.4f} {hp.kl_factor * row['edit_loss']:>10.4f} "
                  f"{row['kl_loss']:>10.5f}")
    elif losses:
        print("step      loss")
        for row in losses:
            print(f"{row['step']:>4} {row['loss']:>9.4f}")
        if meta.get("final_loss") is not None:
            print(f" end {meta['final_loss']:>9.4f}")
    if meta.get("early_stopped"):
        print(f"(stopped early: loss below {getattr(hp, 'early_stop_loss', '?')})")


REFUSAL_NOTE = ("note: the model refused the bare prompt too, so the toxic layer is located between two "
                "refusals (give --unsafe to locate against an unsafe answer)")


def unsafe_text(given: str | None, answer: str, suffixed: str | None = None) -> tuple[str, str]:
    """The unsafe text the edit locates against and where it came from (``EditCase.unsafe_source``):
    ``given`` (``--unsafe``), else the model's own answers chosen as the bench does
    (:func:`detoxedit.cases.pick_unsafe`): ``answer`` to the bare prompt, then ``suffixed`` (to the
    prompt with the suffix system prompt, when there is one); ``refusal-only:attack`` when both refuse."""
    from detoxedit.cases import pick_unsafe

    if given:
        return given, "given"
    return pick_unsafe([("attack", answer)] + ([("attack+suffix", suffixed)] if suffixed is not None else []))


def _num(x, fmt: str = ".3g") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def validation_lines(meta: dict) -> list[str]:
    """The edit's validation (``meta["validation"]``) as short lines: the verdict, then one line per
    group of checks present (success, termination, locality, loss) and the step sizes tried."""
    val = meta.get("validation")
    if not isinstance(val, dict):
        return []
    status, reasons = val.get("status"), [str(r) for r in val.get("reasons") or []]
    head = "validation: " + ("ok" if status == "ok" else "FAILED" if status == "failed" else str(status))
    if reasons:
        head += f" ({'; '.join(reasons)})"
    lines = [head]
    c = val.get("checks") or {}
    success = []
    if "token_accuracy" in c:
        success.append(f"token accuracy {_num(c['token_accuracy'], '.2f')}")
    prefix = c.get("greedy_prefix")
    if prefix is not None:
        safe = c.get("safe_tokens")
        success.append(f"teacher-forced prefix {prefix}/{safe} safe tokens" if safe is not None
                       else f"teacher-forced prefix {prefix} safe tokens")
    if "greedy_matches_safe" in c:
        how = "does not end" if not c.get("greedy_ended", True) else "differs from the safe response"
        success.append("greedy answer follows the safe response and ends" if c["greedy_matches_safe"]
                       else f"greedy answer {how}")
    if success:
        lines.append("success: " + ", ".join(success))
    before, after = c.get("eot_logprob_before"), c.get("eot_logprob_after")
    if before is not None or after is not None:
        parts = ([f"{_num(before, '.2f')} before"] if before is not None else []) + \
                ([f"{_num(after, '.2f')} after"] if after is not None else [])
        lines.append("termination: end-of-turn log-prob after the safe response " + " -> ".join(parts))
    locality = [f"KL {name} {_num(c[key], '.3f')}" for name, key in
                (("knowledge", "kl_knowledge"), ("harmless", "kl_harmless")) if c.get(key) is not None]
    if locality:
        lines.append("locality: " + ", ".join(locality))
    start, end = c.get("loss_start"), c.get("loss_end")
    if start is not None or end is not None:
        lines.append(f"loss: {_num(start, '.2f') if start is not None else '?'} -> "
                     f"{_num(end, '.2f') if end is not None else '?'}")
    attempts = val.get("attempts") or []
    if len(attempts) > 1:
        tried = []
        for a in attempts:
            why = "; ".join(str(r) for r in a.get("reasons") or [])
            st = a.get("status", "?")
            tried.append(f"{_num(a.get('lr'), 'g')} ({st}{': ' + why if why and st != 'ok' else ''})")
        lines.append("step size: tried lr " + ", ".join(tried))
    return lines


def _print_validation(meta: dict) -> None:
    """Print the edit's validation block, when the method reports one (see :func:`validation_lines`)."""
    lines = validation_lines(meta)
    if lines:
        print()
        for line in lines:
            print(line)


def run(args) -> int:
    from pathlib import Path

    import torch

    from detoxedit.errors import DetoxEditError
    from detoxedit.methods.base import EditCase, edited_side, needs_training, save_edited_model
    from detoxedit.models import arch
    from detoxedit.models.generate import GenerationSettings, generate, resolve_format, with_suffix
    from detoxedit.models.load import load_model
    from detoxedit.preflight import check_run
    from detoxedit.settings import prepare_method, run_config

    if args.config:
        raise DetoxEditError("--config is a run config (bench, train, demo); give the method's YAML with "
                             "--method-config")
    cfg = run_config(args, defaults=EDIT_DEFAULTS)
    check_method(cfg)
    cfg.hparams = shortcut_overrides(args, cfg.method)
    check_run(cfg, judge=False, splits=())  # method, settings, layer range: before the model loads
    torch.manual_seed(cfg.seed)
    method = prepare_method(cfg)
    hp, editor = method.hparams, method.editor
    t0 = time.perf_counter()
    model, tok = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map)
    t_load = time.perf_counter() - t0
    if needs_training(editor):
        editor.load_artifact(Path(cfg.artifact).expanduser())
    fmt = resolve_format(tok, method.prompt_format)
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, prompt_format=fmt)
    post_input = with_suffix(args.prompt, method.suffix)
    pre_input = post_input if cfg.protocol == "fair" else args.prompt

    print(f"model: {cfg.model} ({model.config.model_type}, {len(list(model.parameters()))} tensors, "
          f"{cfg.dtype}) loaded in {t_load:.1f}s")
    print(f"method: {cfg.method}; config: {cfg.method_config or 'defaults'}; prompt format: {fmt}; "
          f"protocol: {cfg.protocol}; decoding: greedy, {cfg.max_new_tokens} new tokens")

    t0 = time.perf_counter()
    inputs = [pre_input] if args.unsafe or pre_input == args.prompt else [pre_input, args.prompt]
    outs = generate(model, tok, inputs, settings)
    pre = outs[0]
    # the answer to the suffixed input is ``pre`` under the fair protocol (already generated)
    unsafe, unsafe_source = unsafe_text(args.unsafe, outs[-1],
                                        pre if pre_input == post_input != args.prompt else None)
    t_pre = time.perf_counter() - t0
    _show("BEFORE the edit, the model answers:", pre)
    if unsafe_source.startswith("refusal-only"):
        print(f"\n{REFUSAL_NOTE}")

    case = EditCase(prompt=args.prompt, safe=args.safe, unsafe=unsafe, unsafe_source=unsafe_source,
                    knowledge_prompt=args.knowledge_prompt, knowledge_answer=args.knowledge_answer)
    t_edit = time.perf_counter()
    edit = editor.edit(model, tok, case)
    t_edit = time.perf_counter() - t_edit
    meta = edit.meta
    _print_edit(meta, hp, arch.num_layers(model))
    _print_validation(meta)

    (edited_input,), post_settings = edited_side(editor, [post_input], settings)  # as in the runner
    t0 = time.perf_counter()
    with edit.applied_to(model):
        post = generate(model, tok, [edited_input], post_settings)[0]
    t_post = time.perf_counter() - t0
    _show("AFTER the edit, the model answers:", post)

    tm = meta.get("timings", {})
    parts = [f"load {t_load:.1f}s", f"vanilla generation {t_pre:.1f}s"]
    if "locate_s" in tm:
        parts.append(f"locate {tm['locate_s']:.2f}s")
    if "prepare_s" in tm and "train_s" in tm:
        steps = f" ({meta['steps_run']} steps)" if "steps_run" in meta else ""
        parts.append(f"edit {tm['prepare_s'] + tm['train_s']:.2f}s{steps}")
    else:
        parts.append(f"edit {t_edit:.2f}s")
    parts.append(f"edited generation {t_post:.1f}s")
    print("\ntimings: " + " | ".join(parts))
    if args.save_edit:
        path = edit.save(args.save_edit)
        print(f"edit saved: {path} (+ .json)")
    if args.save_model:
        out = save_edited_model(model, tok, edit, args.save_model)
        print(f"edited model saved: {out} (load with AutoModelForCausalLM.from_pretrained)")
    return 0
