"""``detoxedit edit``: one edit on one prompt, shown before and after.

Works with every method that learns from the instance (``--method dinm`` by default, ``ft-l``, and
trained editors such as MEND, which read their trained artefact from ``--artifact DIR``). Prints the
edited layer, the loss per step, the model's response to the prompt before and after the edit
(formatted identically unless ``--protocol paper``), and timings; optionally saves the edit and a
merged checkpoint.
"""

from __future__ import annotations

import argparse
import textwrap
import time

DEFAULT_CONFIG = "smollm2-135m"


def register(sub) -> None:
    p = sub.add_parser("edit", help="edit a model on one prompt (DINM, FT-L, MEND, ...) and show the effect",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="dinm",
                   help="registry key of a method that edits on one instance (default: dinm; e.g. ft-l, mend)")
    p.add_argument("--model", default="default",
                   help="'default' (embedded SmolLM2-135M-Instruct), hub id, local dir or .gguf file")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--device-map", default=None, help="e.g. 'auto' to spread a large model over GPUs")
    p.add_argument("--prompt", required=True, help="the adversarial input to edit on")
    p.add_argument("--safe", required=True, help="the safe response the model should give")
    p.add_argument("--unsafe", default=None,
                   help="an unsafe response, to locate the toxic layer (default: the model's own answer)")
    p.add_argument("--knowledge-prompt", default=None, help="general-knowledge instruction (KL constraint)")
    p.add_argument("--knowledge-answer", default=None, help="its answer")
    p.add_argument("--config", default=None,
                   help="the method's hyper-parameter YAML (default for the default model: the built-in "
                        f"configs/METHOD/{DEFAULT_CONFIG}.yaml)")
    p.add_argument("--hparam", action="append", default=None, metavar="KEY=VALUE",
                   help="override one of the method's hyper-parameters (YAML value; repeatable)")
    p.add_argument("--artifact", default=None,
                   help="trained methods (e.g. mend): the artefact directory written by `detoxedit train`")
    p.add_argument("--layer", type=int, default=None, help="edit this layer instead of locating it")
    p.add_argument("--steps", type=int, default=None, help="override num_steps")
    p.add_argument("--lr", type=float, default=None, help="override lr")
    p.add_argument("--reference", action="store_true",
                   help="DINM only: reproduce the reference code (KL without gradient, raw prompts, layer "
                        "located once)")
    p.add_argument("--prompt-format", choices=["chat", "raw"], default=None,
                   help="chat template (default when the tokenizer has one) or raw text")
    p.add_argument("--protocol", choices=["fair", "paper"], default="fair",
                   help="fair: suffix system prompt before and after; paper: only after (reference asymmetry)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate for the shown responses")
    p.add_argument("--naive", action="store_true", help="DINM: use the naive (full forward) training path")
    p.add_argument("--save-edit", default=None, help="write the edit (PATH.safetensors + PATH.json)")
    p.add_argument("--save-model", default=None, help="write the edited model as a checkpoint directory")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def resolve_hparams(args):
    """Settings: the config file (or the built-in one for the default model), ``--hparam``, then the flags."""
    from detoxedit.commands.bench import parse_hparams
    from detoxedit.configs import builtin_config_path, read_yaml_mapping
    from detoxedit.errors import DetoxEditError
    from detoxedit.methods.base import get_method

    method = getattr(args, "method", "dinm")
    hp_cls = getattr(get_method(method), "hparams_class", None)
    if hp_cls is None:
        given = [flag for flag, value in (("--config", args.config), ("--hparam", getattr(args, "hparam", None)),
                                          ("--steps", args.steps), ("--lr", args.lr), ("--layer", args.layer),
                                          ("--reference", args.reference), ("--naive", args.naive)) if value]
        if given:
            raise DetoxEditError(f"method {method!r} has no hyper-parameters, so {', '.join(given)} do(es) not apply")
        return None, None
    path = args.config
    if path is None and args.model == "default":
        try:
            path = builtin_config_path(method, DEFAULT_CONFIG)
        except DetoxEditError:
            path = None
    if path is None:
        raw = {}
    elif hasattr(hp_cls, "from_yaml"):
        raw = hp_cls.from_yaml(path).to_dict()
    else:
        loaded = read_yaml_mapping(path)
        raw = loaded["hparams"] if isinstance(loaded.get("hparams"), dict) else loaded
    raw.update(parse_hparams(getattr(args, "hparam", None) or []))
    hp = hp_cls.from_dict(raw, source=str(path or "command line"))

    def need(attr: str, flag: str):
        if not hasattr(hp, attr):
            raise DetoxEditError(f"{flag} does not apply to method {method!r} (it has no {attr!r} setting)")

    if args.reference:
        if method != "dinm":
            raise DetoxEditError("--reference reproduces the reference DINM code; it applies to --method dinm only")
        hp.kl_grad, hp.locate, hp.prompt_format = False, "once_per_run", "raw"
    for attr, flag, value in (("num_steps", "--steps", args.steps), ("lr", "--lr", args.lr),
                              ("prompt_format", "--prompt-format", args.prompt_format)):
        if value is not None:
            need(attr, flag)
            setattr(hp, attr, value)
    if args.layer is not None:
        need("layers", "--layer")
        hp.layers = [args.layer]
        if hasattr(hp, "layer_selection"):  # FT-L: a given layer overrides causal tracing
            hp.layer_selection = "configured"
    if args.naive:
        need("fast_path", "--naive")
        hp.fast_path = False
    if hasattr(hp, "validate"):
        hp.validate("command line")
    return hp, path


def _show(title: str, text: str) -> None:
    print(f"\n{title}")
    body = text.strip() or "(empty response)"
    for line in body.splitlines() or [""]:
        print(textwrap.indent(textwrap.fill(line, 100) if line else "", "  "))


def check_method(args) -> None:
    """Stop early, before loading a model, for methods ``edit`` cannot run as asked."""
    from pathlib import Path

    from detoxedit.errors import DetoxEditError
    from detoxedit.methods.base import get_method, needs_training, uses_instance

    cls = get_method(args.method)
    if not uses_instance(cls):
        raise DetoxEditError(f"method {args.method!r} does not learn from an instance, so there is nothing to "
                             f"edit on one prompt; evaluate it with: detoxedit bench --method {args.method} --out DIR")
    if needs_training(cls):
        if not args.artifact:
            raise DetoxEditError(f"method {args.method!r} needs a trained artefact: run `detoxedit train --method "
                                 f"{args.method} --out DIR` first, then pass --artifact DIR")
        if not Path(args.artifact).expanduser().is_dir():
            raise DetoxEditError(f"--artifact {args.artifact} does not exist; train it with `detoxedit train "
                                 f"--method {args.method} --out {args.artifact}`")
    elif args.artifact:
        raise DetoxEditError(f"method {args.method!r} is not trained, so --artifact does not apply")


def make_editor(args, hp):
    """The editor for ``--method``; trained methods load ``--artifact`` (``check_method`` ran first)."""
    from pathlib import Path

    from detoxedit.methods.base import get_method, needs_training

    cls = get_method(args.method)
    editor = cls(hp) if hp is not None else cls()
    if needs_training(editor):
        editor.load_artifact(Path(args.artifact).expanduser())
    return editor


def _print_edit(meta: dict, hp, n_layers: int) -> None:
    if meta.get("layer") is not None:
        distances = meta.get("distances")
        line = f"\n{'toxic' if 'distances' in meta else 'edited'} layer: {meta['layer']} of {n_layers}"
        if distances:
            line = f"\ntoxic layer: {meta['layer']} of {len(distances)}  (largest hidden-state distances: " + \
                ", ".join(f"L{i}={d:.1f}" for i, d in sorted(enumerate(distances), key=lambda x: -x[1])[:3]) + ")"
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


def run(args) -> int:
    import torch

    from detoxedit.methods.base import EditCase, edited_side, save_edited_model
    from detoxedit.models import arch
    from detoxedit.models.generate import GenerationSettings, generate, resolve_format, with_suffix
    from detoxedit.models.load import load_model

    torch.manual_seed(args.seed)
    check_method(args)
    hp, config_path = resolve_hparams(args)
    t0 = time.perf_counter()
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)
    t_load = time.perf_counter() - t0
    editor = make_editor(args, hp)
    fmt = resolve_format(tok, args.prompt_format or getattr(hp, "prompt_format", "chat"))
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, prompt_format=fmt)
    suffix = getattr(hp, "suffix_system_prompt", None)
    post_input = with_suffix(args.prompt, suffix)
    pre_input = post_input if args.protocol == "fair" else args.prompt

    print(f"model: {args.model} ({model.config.model_type}, {len(list(model.parameters()))} tensors, "
          f"{args.dtype}) loaded in {t_load:.1f}s")
    print(f"method: {args.method}; config: {config_path or 'defaults'}; prompt format: {fmt}; "
          f"protocol: {args.protocol}; decoding: greedy, {args.max_new_tokens} new tokens")

    t0 = time.perf_counter()
    inputs = [pre_input] if args.unsafe or pre_input == args.prompt else [pre_input, args.prompt]
    outs = generate(model, tok, inputs, settings)
    pre = outs[0]
    unsafe = args.unsafe or outs[-1]
    t_pre = time.perf_counter() - t0
    _show("BEFORE the edit, the model answers:", pre)

    case = EditCase(prompt=args.prompt, safe=args.safe, unsafe=unsafe,
                    knowledge_prompt=args.knowledge_prompt, knowledge_answer=args.knowledge_answer)
    t_edit = time.perf_counter()
    edit = editor.edit(model, tok, case)
    t_edit = time.perf_counter() - t_edit
    meta = edit.meta
    _print_edit(meta, hp, arch.num_layers(model))

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
