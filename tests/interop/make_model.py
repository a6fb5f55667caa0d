"""Write the tiny SiLU BitNet checkpoint that `cargo xtask interop` converts
and runs in both tern and llama.cpp.

A Hugging Face checkpoint folder (what `tern convert` reads): `config.json`,
`model.safetensors` with full-precision (latent) f32 weights that the
converter ternarizes with BitNet's absmean rule, and the real byte-level BPE
`tokenizer.json` from tests/fixtures/tokenizer/bytelevel_bpe (340 ids,
Llama-3 pre-tokenizer). Deterministic: the same seed writes the same bytes.

Dims are the smallest that llama.cpp's TQ1_0/TQ2_0 can pack (every
projection's input a multiple of 256) while still exercising GQA (4 query
heads, 2 kv heads, head_dim 64) and more than one 256-block per row in
down_proj (intermediate 512). Embeddings are tied: llama.cpp's `bitnet` graph
uses token_embd as the output matrix.

usage: make_model.py OUT_DIR [--seed N]
"""

import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "tests/fixtures/tokenizer/bytelevel_bpe/tokenizer.json"

HIDDEN = 256
INTERMEDIATE = 512
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS


def write_safetensors(path: Path, tensors: dict) -> None:
    """The safetensors layout: u64 header length, JSON header, raw LE data."""
    header = {}
    blobs = []
    offset = 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=20240)
    args = ap.parse_args()

    tok = json.loads(TOKENIZER.read_text())
    ids = list(tok["model"]["vocab"].values()) + [t["id"] for t in tok["added_tokens"]]
    vocab = max(ids) + 1
    by_content = {t["content"]: t["id"] for t in tok["added_tokens"]}
    bos = by_content["<|begin_of_text|>"]
    eos = by_content["<|end_of_text|>"]

    rng = np.random.default_rng(args.seed)

    def normal(*shape, std=1.0):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_weight(n):
        # Away from 1 so that a norm applied in the wrong place shows.
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    t = {}
    # transformers' default initializer_range. The logits are the final
    # normalized hidden state times this matrix, so their scale (and every
    # absolute difference between two runtimes) is proportional to it: with
    # 0.02 they come out around 0.3 (std) / 3 (max), see docs/interop.md.
    t["model.embed_tokens.weight"] = normal(vocab, HIDDEN, std=0.02)
    kv = KV_HEADS * HEAD_DIM
    for layer in range(LAYERS):
        p = f"model.layers.{layer}"
        t[f"{p}.input_layernorm.weight"] = norm_weight(HIDDEN)
        t[f"{p}.self_attn.q_proj.weight"] = normal(HIDDEN, HIDDEN, std=0.05)
        t[f"{p}.self_attn.k_proj.weight"] = normal(kv, HIDDEN, std=0.05)
        t[f"{p}.self_attn.v_proj.weight"] = normal(kv, HIDDEN, std=0.05)
        t[f"{p}.self_attn.attn_sub_norm.weight"] = norm_weight(HIDDEN)
        t[f"{p}.self_attn.o_proj.weight"] = normal(HIDDEN, HIDDEN, std=0.05)
        t[f"{p}.post_attention_layernorm.weight"] = norm_weight(HIDDEN)
        t[f"{p}.mlp.gate_proj.weight"] = normal(INTERMEDIATE, HIDDEN, std=0.05)
        t[f"{p}.mlp.up_proj.weight"] = normal(INTERMEDIATE, HIDDEN, std=0.05)
        t[f"{p}.mlp.ffn_sub_norm.weight"] = norm_weight(INTERMEDIATE)
        t[f"{p}.mlp.down_proj.weight"] = normal(HIDDEN, INTERMEDIATE, std=0.05)
    t["model.norm.weight"] = norm_weight(HIDDEN)

    config = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": vocab,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": True,
        "max_position_embeddings": 256,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_safetensors(args.out / "model.safetensors", t)
    shutil.copyfile(TOKENIZER, args.out / "tokenizer.json")
    n = sum(a.size for a in t.values())
    print(f"wrote {args.out} ({n} parameters, vocab {vocab}, bos {bos}, eos {eos})")


if __name__ == "__main__":
    main()
