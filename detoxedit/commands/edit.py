"""``detoxedit edit``: one DINM edit on one prompt, shown before and after.

Prints the toxic layer, the loss per step, the model's response to the prompt before and after the
edit (formatted identically unless ``--protocol paper``), and timings; optionally saves the edit and
a merged checkpoint.
"""

from __future__ import annotations

import argparse
import textwrap
import time

DEFAULT_CONFIG = "smollm2-135m"


def register(sub) -> None:
    p = sub.add_parser("edit", help="edit a model with DINM on one prompt and show the effect",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
                   help="DINM hyper-parameter YAML (default: the built-in config for the model, "
                        f"configs/dinm/{DEFAULT_CONFIG}.yaml for the default model)")
    p.add_argument("--layer", type=int, default=None, help="edit this layer instead of locating it")
    p.add_argument("--steps", type=int, default=None, help="override num_steps")
    p.add_argument("--lr", type=float, default=None, help="override lr")
    p.add_argument("--reference", action="store_true",
                   help="reproduce the reference code: KL without gradient, raw prompts, layer located once")
    p.add_argument("--prompt-format", choices=["chat", "raw"], default=None,
                   help="chat template (default when the tokenizer has one) or raw text")
    p.add_argument("--protocol", choices=["fair", "paper"], default="fair",
                   help="fair: suffix system prompt before and after; paper: only after (reference asymmetry)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate for the shown responses")
    p.add_argument("--naive", action="store_true", help="use the naive (full forward) training path")
    p.add_argument("--save-edit", default=None, help="write the edit (PATH.safetensors + PATH.json)")
    p.add_argument("--save-model", default=None, help="write the edited model as a checkpoint directory")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def resolve_hparams(args):
    """Settings: the config file (or the built-in one for the default model), then the flags."""
    from detoxedit.configs import builtin_config_path
    from detoxedit.methods.dinm_hparams import DINMHyperParams

    path = args.config or (builtin_config_path("dinm", DEFAULT_CONFIG) if args.model == "default" else None)
    hp = DINMHyperParams.from_yaml(path) if path else DINMHyperParams()
    if args.reference:
        hp.kl_grad, hp.locate, hp.prompt_format = False, "once_per_run", "raw"
    for attr, value in (("num_steps", args.steps), ("lr", args.lr), ("prompt_format", args.prompt_format)):
        if value is not None:
            setattr(hp, attr, value)
    if args.layer is not None:
        hp.layers = [args.layer]
    if args.naive:
        hp.fast_path = False
    hp.validate("command line")
    return hp, path


def _show(title: str, text: str) -> None:
    print(f"\n{title}")
    body = text.strip() or "(empty response)"
    for line in body.splitlines() or [""]:
        print(textwrap.indent(textwrap.fill(line, 100) if line else "", "  "))


def run(args) -> int:
    import torch

    from detoxedit.methods.base import EditCase, save_edited_model
    from detoxedit.methods.dinm import DINM
    from detoxedit.models.generate import GenerationSettings, generate, resolve_format, with_suffix
    from detoxedit.models.load import load_model

    torch.manual_seed(args.seed)
    hp, config_path = resolve_hparams(args)
    t0 = time.perf_counter()
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)
    t_load = time.perf_counter() - t0
    fmt = resolve_format(tok, hp.prompt_format)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, prompt_format=fmt)
    suffix = hp.suffix_system_prompt
    post_input = with_suffix(args.prompt, suffix)
    pre_input = post_input if args.protocol == "fair" else args.prompt

    print(f"model: {args.model} ({model.config.model_type}, {len(list(model.parameters()))} tensors, "
          f"{args.dtype}) loaded in {t_load:.1f}s")
    print(f"config: {config_path or 'defaults'}; prompt format: {fmt}; protocol: {args.protocol}; "
          f"decoding: greedy, {args.max_new_tokens} new tokens")

    t0 = time.perf_counter()
    inputs = [pre_input] if args.unsafe or pre_input == args.prompt else [pre_input, args.prompt]
    outs = generate(model, tok, inputs, settings)
    pre = outs[0]
    unsafe = args.unsafe or outs[-1]
    t_pre = time.perf_counter() - t0
    _show("BEFORE the edit, the model answers:", pre)

    case = EditCase(prompt=args.prompt, safe=args.safe, unsafe=unsafe,
                    knowledge_prompt=args.knowledge_prompt, knowledge_answer=args.knowledge_answer)
    editor = DINM(hp)
    edit = editor.edit(model, tok, case)
    meta = edit.meta
    print(f"\ntoxic layer: {meta['layer']} of {len(meta['distances'] or []) or model.config.num_hidden_layers}"
          + ("" if meta["distances"] is None else
             "  (largest hidden-state distances: " + ", ".join(
                 f"L{i}={d:.1f}" for i, d in sorted(enumerate(meta["distances"]), key=lambda x: -x[1])[:3]) + ")"))
    print(f"edited parameter: {meta['param']}")
    print("step      loss   c*L_edit       L_kl")
    for row in meta["losses"]:
        print(f"{row['step']:>4} {row['loss']:>9.4f} {hp.kl_factor * row['edit_loss']:>10.4f} {row['kl_loss']:>10.5f}")
    if meta["early_stopped"]:
        print(f"(stopped early: loss below {hp.early_stop_loss})")

    t0 = time.perf_counter()
    with edit.applied_to(model):
        post = generate(model, tok, [post_input], settings)[0]
    t_post = time.perf_counter() - t0
    _show("AFTER the edit, the model answers:", post)

    tm = meta["timings"]
    print(f"\ntimings: load {t_load:.1f}s | vanilla generation {t_pre:.1f}s | locate {tm['locate_s']:.2f}s | "
          f"edit {tm['prepare_s'] + tm['train_s']:.2f}s ({meta['steps_run']} steps) | "
          f"edited generation {t_post:.1f}s")
    if args.save_edit:
        path = edit.save(args.save_edit)
        print(f"edit saved: {path} (+ .json)")
    if args.save_model:
        out = save_edited_model(model, tok, edit, args.save_model)
        print(f"edited model saved: {out} (load with AutoModelForCausalLM.from_pretrained)")
    return 0
