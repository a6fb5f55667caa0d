"""Load a GGUF in llama.cpp (through llama-cpp-python) and write what it
computes for a prompt: the token ids its tokenizer produces and the logits
of every position.

Settings chosen so that llama.cpp's own arithmetic is as close to float as it
gets: f32 KV cache (the default f16 would round K and V), flash attention off,
one batch holding the whole prompt, logits for all positions. What stays is
the weights' own path: with F32 projections ggml multiplies float
activations; with TQ1_0/TQ2_0 it quantizes activations to 8 bits per
256-value block (Q8_K) first.

With `--lora ADAPTER.gguf` llama.cpp applies a LoRA adapter GGUF at scale 1.0
(`llama_set_adapters_lora`): a targeted projection adds `(alpha / r) * B (A x)`
in float, alpha from the file's `adapter.lora.alpha`, r from the tensors'
shapes (for `bitnet`'s ffn_gate / ffn_up before their `.scale` multiplies the
sum; docs/interop.md).

usage: llamacpp_logits.py MODEL.gguf --prompt-file P --ids OUT.json --logits OUT.npy [--lora A.gguf]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from llama_cpp import GGML_TYPE_F32, Llama


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--prompt-file", type=Path, required=True)
    ap.add_argument("--ids", type=Path, required=True, help="token ids as a JSON array")
    ap.add_argument("--logits", type=Path, required=True, help="[T, vocab] f32 .npy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora", type=Path, help="a LoRA adapter GGUF to apply at scale 1.0")
    args = ap.parse_args()

    prompt = args.prompt_file.read_text(encoding="utf-8")
    t0 = time.perf_counter()
    lora = {}
    if args.lora is not None:
        lora = {"lora_path": str(args.lora), "lora_scale": 1.0}
    llm = Llama(
        model_path=str(args.model),
        n_ctx=256,
        n_batch=256,
        n_ubatch=256,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=True,
        flash_attn=False,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        n_gpu_layers=0,
        seed=0,
        verbose=False,
        **lora,
    )
    # add_bos follows the file (tokenizer.ggml.add_bos_token); special=False
    # treats the text as text, as `tern logits -p` does.
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    if not ids:
        print(f"{args.model}: the prompt tokenizes to nothing", file=sys.stderr)
        return 1
    if len(ids) > llm.n_ctx():
        print(f"{args.model}: {len(ids)} tokens exceed n_ctx {llm.n_ctx()}", file=sys.stderr)
        return 1
    llm.eval(ids)
    n_vocab = llm.n_vocab()
    logits = np.asarray(llm.scores[: len(ids), :n_vocab], dtype=np.float32)
    if not np.all(np.isfinite(logits)):
        print(f"{args.model}: llama.cpp produced non-finite logits", file=sys.stderr)
        return 1
    args.ids.write_text(json.dumps(ids) + "\n")
    np.save(args.logits, logits)
    with_lora = f" + LoRA {args.lora.name}" if args.lora is not None else ""
    print(
        f"llama.cpp {args.model.name}{with_lora}: {len(ids)} tokens, vocab {n_vocab}, "
        f"{time.perf_counter() - t0:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
