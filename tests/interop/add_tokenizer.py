"""Copy a GGUF model and add the tokenizer metadata of another GGUF to it.

`tern merge` writes no `tokenizer.*` keys, and llama.cpp refuses a model
without them ("key not found in model: tokenizer.ggml.model"). So that
`cargo xtask interop` can still run the merged weights in llama.cpp, this
writes OUT = MODEL's keys and tensors plus every `tokenizer.*` key of BASE
that MODEL lacks. Weights are copied unchanged; only F32 and F16 tensors are
supported (what `tern merge --type f32|f16` writes).

usage: add_tokenizer.py MODEL.gguf BASE.gguf OUT.gguf
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter


def field_value(field):
    """A reader field as (value, type, sub_type) for GGUFWriter.add_key_value."""
    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        return field.contents(), vtype, field.types[-1]
    return field.contents(), vtype, None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("base", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()

    model = GGUFReader(args.model)
    base = GGUFReader(args.base)
    arch = model.fields["general.architecture"].contents()
    w = GGUFWriter(args.out, arch)
    for key, field in model.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        w.add_key_value(key, *field_value(field))
    added = [
        key
        for key in base.fields
        if key.startswith("tokenizer.") and key not in model.fields
    ]
    for key in added:
        w.add_key_value(key, *field_value(base.fields[key]))
    if not any(k == "tokenizer.ggml.model" for k in list(model.fields) + added):
        print(f"{args.base}: no tokenizer.ggml.model to copy", file=sys.stderr)
        return 1
    for t in model.tensors:
        if t.tensor_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            print(f"{args.model}: tensor {t.name} is {t.tensor_type.name}", file=sys.stderr)
            return 1
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{args.out}: {args.model.name} + {len(added)} tokenizer keys of {args.base.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
