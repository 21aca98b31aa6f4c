#!/usr/bin/env bash
# The batched engine on one GPU: per-case time and peak GPU memory of --batch-cases K = 1 against 16 and 32,
# bf16, on SafeEdit-sized work (the built-in test split's attack prompts, 300 new tokens, DINM, over-refusal
# on 16 harmless prompts per edit). Prepared for one H200 with no network and at most 10 minutes: it ends
# within about 8 (each step has a hard timeout; results are written after every K, so a step cut short
# still leaves what it measured).
#
#   bash benchmarks/gpu.sh prepare      # here, once: SmolLM2's config and tokenizer (3.5 MB) into .gpu/smollm2
#   bash benchmarks/gpu.sh              # on the GPU machine, with .gpu carried: writes $OUT (or
#                                       # benchmarks/results)/gpu_smollm2.json, gpu_7b.json and gpu.log
#
# What travels to that machine is at most 64 MiB, less than even the embedded model's 98 MB GGUF, and it
# cannot download, so the models are built there with random weights (benchmarks/gpu_batched.py says why
# that bounds a real model's generation time from above): the embedded SmolLM2-135M-Instruct's shape, then
# a LLaMA-2-7B shape (6.9 B parameters, 13 GiB in bf16). With a real 7B checkpoint on a GPU machine, run
#   python3 benchmarks/gpu_batched.py --model /path/to/Llama-2-7b-chat-hf --k 1,16,32 --max-new-tokens 600 \
#       --judge default
# or the benchmark itself:
#   detoxedit bench --model /path/to/Llama-2-7b-chat-hf --dtype bf16 --device cuda --batch-cases 16 --out runs/x
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "prepare" ]; then
    PY=${PYTHON:-.venv/bin/python}
    src=$("$PY" -c "from detoxedit.models.load import resolve_spec; print(resolve_spec('default')[0])") || exit 1
    mkdir -p .gpu/smollm2
    for f in "$src"/*; do
        case "$f" in *.safetensors|*.bin) ;; *) cp "$f" .gpu/smollm2/ ;; esac
    done
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    du -sh .gpu && ls .gpu/smollm2
    exit 0
fi

OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export DETOXEDIT_CACHE=${DETOXEDIT_CACHE:-/tmp/detoxedit-cache} TOKENIZERS_PARALLELISM=false
[ -f .gpu/smollm2/tokenizer.json ] || { echo "no .gpu/smollm2: run 'bash benchmarks/gpu.sh prepare' here and carry .gpu"; exit 2; }

step() {  # step NAME SECONDS COMMAND...: run it under a hard timeout, log it, say how it ended
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s)" | tee -a "$OUT/gpu.log"
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$OUT/gpu.log"
    echo "== $name: exit ${PIPESTATUS[0]} (124: timed out)" | tee -a "$OUT/gpu.log"
}

: > "$OUT/gpu.log"
step environment 40 "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', \
transformers.__version__, torch.cuda.get_device_name(0), f'{torch.cuda.mem_get_info()[0] / 2**30:.0f} GiB free')"
step smollm2-shape 200 "$PY" benchmarks/gpu_batched.py --shape smollm2 --k 1,16,32 --k1-cases 4 \
    --max-new-tokens 300 --out "$OUT/gpu_smollm2.json"
step 7b-shape 220 "$PY" benchmarks/gpu_batched.py --shape 7b --k 1,16 --k1-cases 2 --max-new-tokens 128 \
    --out "$OUT/gpu_7b.json"
