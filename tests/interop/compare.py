"""Compare tern's logits with llama.cpp's for the GGUF files of one
`cargo xtask interop` run, print a table, write a JSON report, and exit 1 if
any check fails.

Each CASE is `NAME:BOUND[:TERN_STEM:LLAMA_STEM]` with files in DIR:
  TERN_STEM.npy / TERN_STEM.json     what `tern logits` computed and the ids it ran
                                     (default stem tern-NAME)
  LLAMA_STEM.npy / LLAMA_STEM.json   the same from tests/interop/llamacpp_logits.py
                                     (default stem llama-NAME)

Checks, per case:
  - both tokenizers produced the same ids (at least --min-tokens of them);
  - both logits arrays are finite, of the same shape [T, vocab];
  - max |tern - llama| over every position and vocabulary entry <= BOUND.

A CONTROL is `NAME:STEM:FACTOR`: the logits in STEM.npy (another activation
mode, or the model without its LoRA adapter) against case NAME's llama.cpp
logits must differ by MORE than FACTOR times NAME's bound. It shows that the
comparison can tell the two apart, so a pass is not an artefact of a loose
bound.

usage: compare.py DIR --case f32:1e-4 --case f32-merged:1e-4:tern-f32-lora:llama-f32-merged ...
                      [--control f32:tern-f32-int8:10]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load(dir_: Path, stem: str):
    logits = np.load(dir_ / f"{stem}.npy")
    ids_path = dir_ / f"{stem}.json"
    ids = json.loads(ids_path.read_text()) if ids_path.exists() else None
    return logits, ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--case", action="append", default=[], required=True)
    ap.add_argument("--control", action="append", default=[])
    ap.add_argument("--min-tokens", type=int, default=16)
    ap.add_argument("--report", type=Path)
    args = ap.parse_args()

    failures = []
    report = {"cases": {}, "controls": {}}
    bounds = {}
    llama_stems = {}
    print(f"{'case':<10} {'tokens':>6} {'max|logit|':>10} {'max|diff|':>11} {'mean|diff|':>11} {'bound':>8}  result")
    for case in args.case:
        fields = case.split(":")
        if len(fields) == 2:
            name, bound = fields
            tern_stem, llama_stem = f"tern-{name}", f"llama-{name}"
        elif len(fields) == 4:
            name, bound, tern_stem, llama_stem = fields
        else:
            ap.error(f"--case {case!r}: expected NAME:BOUND or NAME:BOUND:TERN_STEM:LLAMA_STEM")
        bound = float(bound)
        bounds[name] = bound
        llama_stems[name] = llama_stem
        t, t_ids = load(args.dir, tern_stem)
        l, l_ids = load(args.dir, llama_stem)
        ok = True
        if t_ids != l_ids:
            first = next(
                (i for i, (a, b) in enumerate(zip(t_ids or [], l_ids or [])) if a != b),
                min(len(t_ids or []), len(l_ids or [])),
            )
            failures.append(
                f"{name}: tokenizations differ at position {first}: "
                f"tern {t_ids[first:first + 8] if t_ids else t_ids} vs "
                f"llama.cpp {l_ids[first:first + 8] if l_ids else l_ids}"
            )
            ok = False
        elif len(t_ids) < args.min_tokens:
            failures.append(f"{name}: only {len(t_ids)} tokens, need {args.min_tokens}")
            ok = False
        if t.shape != l.shape:
            failures.append(f"{name}: shapes differ: tern {t.shape} vs llama.cpp {l.shape}")
            print(f"{name:<10} shape mismatch")
            continue
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(l))):
            failures.append(f"{name}: non-finite logits")
            ok = False
        diff = np.abs(t.astype(np.float64) - l.astype(np.float64))
        max_diff = float(diff.max())
        pos, tok = np.unravel_index(int(diff.argmax()), diff.shape)
        if not max_diff <= bound:
            failures.append(
                f"{name}: max |diff| {max_diff:.3e} > {bound:.0e} at position {pos}, "
                f"token {tok} (tern {t[pos, tok]:.6f}, llama.cpp {l[pos, tok]:.6f})"
            )
            ok = False
        argmax_agree = float(np.mean(t.argmax(axis=1) == l.argmax(axis=1)))
        report["cases"][name] = {
            "tern": tern_stem,
            "llama.cpp": llama_stem,
            "tokens": len(t_ids or []),
            "vocab": int(t.shape[1]),
            "max_abs_logit": float(np.abs(l).max()),
            "logit_std": float(l.std()),
            "max_abs_diff": max_diff,
            "mean_abs_diff": float(diff.mean()),
            "argmax_agreement": argmax_agree,
            "bound": bound,
            "pass": ok,
        }
        print(
            f"{name:<10} {len(t_ids or []):>6} {float(np.abs(l).max()):>10.4f} "
            f"{max_diff:>11.3e} {float(diff.mean()):>11.3e} {bound:>8.0e}  "
            f"{'ok' if ok else 'FAIL'}"
        )

    for control in args.control:
        name, stem, factor = control.split(":")
        factor = float(factor)
        t, _ = load(args.dir, stem)
        l, _ = load(args.dir, llama_stems[name])
        if t.shape != l.shape:
            failures.append(f"control {stem}: shape {t.shape} vs {llama_stems[name]} {l.shape}")
            continue
        max_diff = float(np.abs(t.astype(np.float64) - l.astype(np.float64)).max())
        need = factor * bounds[name]
        ok = max_diff > need
        report["controls"][f"{stem} vs {llama_stems[name]}"] = {
            "max_abs_diff": max_diff,
            "must_exceed": need,
            "pass": ok,
        }
        print(
            f"control: {stem} vs {llama_stems[name]}: max |diff| {max_diff:.3e} "
            f"(must exceed {need:.0e})  {'ok' if ok else 'FAIL'}"
        )
        if not ok:
            failures.append(
                f"control {stem} vs {llama_stems[name]}: max |diff| {max_diff:.3e} is not above "
                f"{need:.0e}: the {name} comparison cannot tell the two apart"
            )

    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
