"""Load a tern-written PEFT adapter folder in peft and write the logits it
computes (used by tests/tests/peft_export.rs).

The base is a BitNet checkpoint folder whose config.json carries the online
bitnet quantization_config (tests/fixtures/bitnet/<case>), loaded as
tests/fixtures/gen_bitnet_parity.py and gen_peft_parity.py load it:
`BitNetForCausalLM.from_pretrained(dir, dtype=float32, attn_implementation="eager")`,
so every projection is `AutoBitLinear(online_quant=True)` (W1.58A8). The
adapter is applied with `PeftModel.from_pretrained`; the script then checks
that every projection of every layer is a `lora.Linear` over that
AutoBitLinear with the scaling alpha / r of the folder's config, and that
every lora_A / lora_B weight in the model equals the tensor of the same name
in adapter_model.safetensors (so a name peft did not recognise fails here,
not as a silently re-initialised weight).

Run with the torch venv (tests/requirements-torch.txt + peft 0.21.2):

    TORCHDYNAMO_DISABLE=1 target/torchenv/bin/python tests/interop/peft_load.py \
        --model tests/fixtures/bitnet/relu2_gqa --adapter DIR --tokens 1,2,3 --out OUT.npy

writes OUT.npy: float32 [T, vocab] logits of one sequence.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import BitNetForCausalLM  # noqa: E402
from transformers.integrations.bitnet import AutoBitLinear  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="BitNet checkpoint folder")
    ap.add_argument("--adapter", type=Path, required=True, help="PEFT adapter folder")
    ap.add_argument("--tokens", required=True, help="token ids, comma-separated")
    ap.add_argument("--out", type=Path, required=True, help="[T, vocab] f32 .npy")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ids = [int(t) for t in args.tokens.split(",") if t.strip()]
    config = json.loads((args.adapter / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]

    base = BitNetForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="eager"
    )
    for name, mod in base.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS:
            if not (isinstance(mod, AutoBitLinear) and mod.online_quant):
                print(f"{name}: {type(mod).__name__}, not an online AutoBitLinear", file=sys.stderr)
                return 1
    model = PeftModel.from_pretrained(base, args.adapter)
    model.eval()

    failures = []
    wrapped = 0
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] not in TARGETS:
            continue
        if not isinstance(mod, peft.tuners.lora.Linear):
            failures.append(f"{name}: {type(mod).__name__}, not a lora.Linear")
            continue
        if not (isinstance(mod.base_layer, AutoBitLinear) and mod.base_layer.online_quant):
            failures.append(f"{name}: base layer {type(mod.base_layer).__name__}")
        if mod.scaling["default"] != scaling:
            failures.append(f"{name}: scaling {mod.scaling['default']} != {scaling}")
        wrapped += 1
    layers = base.config.num_hidden_layers
    if wrapped != len(TARGETS) * layers:
        failures.append(f"{wrapped} lora.Linear modules, expected {len(TARGETS) * layers}")

    saved = load_file(str(args.adapter / "adapter_model.safetensors"))
    params = {
        n.replace(".default", ""): p
        for n, p in model.named_parameters()
        if ".lora_A." in n or ".lora_B." in n
    }
    if sorted(params) != sorted(saved):
        missing = sorted(set(saved) - set(params))[:3]
        extra = sorted(set(params) - set(saved))[:3]
        failures.append(f"adapter keys differ: file only {missing}, model only {extra}")
    for key, value in saved.items():
        if key in params and not torch.equal(params[key].detach(), value):
            failures.append(f"{key}: the model's weight differs from the file's")

    if failures:
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        return 1

    with torch.no_grad():
        logits = model(torch.tensor([ids], dtype=torch.long)).logits[0]
    out = logits.to(torch.float32).numpy()
    if not np.all(np.isfinite(out)):
        print("peft produced non-finite logits", file=sys.stderr)
        return 1
    np.save(args.out, out)
    print(
        f"peft {peft.__version__}: {args.adapter} on {args.model}: {wrapped} lora.Linear, "
        f"scaling {scaling}, {len(ids)} tokens -> {out.shape}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
