//! tern's block codecs against gguf-py's `gguf.quants` (the oracle).
//!
//! The fixtures under `tests/fixtures/codecs/` are written by
//! `tests/fixtures/gen_codec_fixtures.py` (see its header). These tests require
//! tern's quantized bytes to be IDENTICAL to gguf-py's, tern's dequantization of
//! gguf-py's bytes to equal gguf-py's bit for bit (NaN matches any NaN), ternary
//! packing from codes to reproduce the same bytes, and exact round trips for
//! ternary inputs. When the oracle venv exists they also regenerate the
//! fixtures and require the committed files to be reproduced exactly.

use std::path::Path;

use serde_json::Value;
use tern_tensor::codec::{
    dequantize_into, pack_ternary_into, quantize_into, quantized_len, unpack_ternary_into,
};
use tern_tensor::GgmlType;

struct Case {
    name: String,
    start: usize,
    len: usize,
    ternary_scale: Option<f32>,
    exact_round_trip: bool,
}

struct Set {
    ty: GgmlType,
    block: usize,
    input: Vec<f32>,
    quantized: Vec<u8>,
    dequantized: Vec<f32>,
    cases: Vec<Case>,
}

impl Set {
    fn case_at(&self, element: usize) -> &str {
        self.cases
            .iter()
            .find(|c| (c.start..c.start + c.len).contains(&element))
            .map(|c| c.name.as_str())
            .unwrap_or("<no case>")
    }

    /// Byte range of the quantized data holding elements `start..start+len`.
    fn byte_range(&self, start: usize, len: usize) -> std::ops::Range<usize> {
        let per = self.ty.block_bytes();
        (start / self.block * per)..((start + len) / self.block * per)
    }
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    let p = dir.join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading fixture {}: {e}", p.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    assert_eq!(bytes.len() % 4, 0, "f32 fixture length");
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn load_sets(dir: &Path) -> Vec<Set> {
    let manifest: Value = serde_json::from_slice(&read(dir, "manifest.json")).expect("manifest");
    let types = manifest["types"].as_object().expect("types");
    let mut sets = Vec::new();
    for (name, t) in types {
        let ty = GgmlType::from_name(name).unwrap_or_else(|| panic!("unknown type {name}"));
        let s = |k: &str| t[k].as_str().unwrap_or_else(|| panic!("{name}.{k}"));
        let cases = t["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| Case {
                name: c["name"].as_str().expect("name").to_string(),
                start: c["start"].as_u64().expect("start") as usize,
                len: c["len"].as_u64().expect("len") as usize,
                ternary_scale: c.get("ternary_scale").map(|v| v.as_f64().unwrap() as f32),
                exact_round_trip: c
                    .get("exact_round_trip")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
            .collect();
        sets.push(Set {
            ty,
            block: t["block"].as_u64().expect("block") as usize,
            input: f32s(&read(dir, s("input"))),
            quantized: read(dir, s("quantized")),
            dequantized: f32s(&read(dir, s("dequantized"))),
            cases,
        });
    }
    sets
}

fn sets() -> Vec<Set> {
    load_sets(&tern_tests::fixture("codecs"))
}

fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn manifest_covers_every_type_and_edge_case() {
    let sets = sets();
    let mut types: Vec<GgmlType> = sets.iter().map(|s| s.ty).collect();
    types.sort();
    assert_eq!(
        types,
        [
            GgmlType::F16,
            GgmlType::Q8_0,
            GgmlType::BF16,
            GgmlType::TQ1_0,
            GgmlType::TQ2_0
        ]
    );
    for set in &sets {
        assert_eq!(set.block, set.ty.block_size(), "{}", set.ty);
        assert_eq!(set.input.len(), set.dequantized.len(), "{}", set.ty);
        assert_eq!(
            set.quantized.len(),
            quantized_len(set.ty, set.input.len()).unwrap(),
            "{}",
            set.ty
        );
        // cases tile the input without gaps
        let mut next = 0;
        for c in &set.cases {
            assert_eq!(c.start, next, "{}: case {}", set.ty, c.name);
            assert_eq!(c.len % set.block, 0, "{}: case {}", set.ty, c.name);
            next += c.len;
        }
        assert_eq!(next, set.input.len(), "{}", set.ty);
        let has = |p: &str| set.cases.iter().any(|c| c.name.starts_with(p));
        assert!(has("ties"), "{}: no tie cases", set.ty);
        assert!(has("random"), "{}: no random cases", set.ty);
        if set.block > 1 {
            for p in ["all_zero", "single_", "negative_only", "ternary"] {
                assert!(has(p), "{}: no {p} case", set.ty);
            }
        }
    }
}

#[test]
fn quantized_bytes_are_identical_to_gguf_py() {
    for set in sets() {
        let mut q = vec![0u8; set.quantized.len()];
        quantize_into(set.ty, &set.input, &mut q).unwrap();
        let per = set.ty.block_bytes();
        for (b, (ours, theirs)) in q
            .chunks_exact(per)
            .zip(set.quantized.chunks_exact(per))
            .enumerate()
        {
            assert_eq!(
                ours,
                theirs,
                "{}: block {b} (case {}) differs from gguf-py",
                set.ty,
                set.case_at(b * set.block)
            );
        }
    }
}

#[test]
fn dequantization_equals_gguf_py() {
    for set in sets() {
        let mut y = vec![0f32; set.input.len()];
        dequantize_into(set.ty, &set.quantized, &mut y).unwrap();
        for (i, (&a, &b)) in y.iter().zip(&set.dequantized).enumerate() {
            assert!(
                same_f32(a, b),
                "{}: element {i} (case {}): tern {a:e} ({:#010x}), gguf-py {b:e} ({:#010x})",
                set.ty,
                set.case_at(i),
                a.to_bits(),
                b.to_bits()
            );
        }
    }
}

#[test]
fn ternary_inputs_pack_and_round_trip_exactly() {
    let mut checked = 0;
    for set in sets() {
        for case in &set.cases {
            let Some(scale) = case.ternary_scale else {
                continue;
            };
            let x = &set.input[case.start..case.start + case.len];
            let codes: Vec<i8> = x
                .iter()
                .map(|&v| {
                    if v == scale {
                        1
                    } else if v == -scale {
                        -1
                    } else {
                        assert!(
                            v == 0.0,
                            "{}: case {} holds non-ternary {v}",
                            set.ty,
                            case.name
                        );
                        0
                    }
                })
                .collect();
            let oracle = &set.quantized[set.byte_range(case.start, case.len)];

            if set.ty.is_ternary() {
                // codes + scale -> bytes, without going through floats
                let mut packed = vec![0u8; oracle.len()];
                pack_ternary_into(set.ty, &codes, scale, &mut packed).unwrap();
                assert_eq!(packed, oracle, "{}: case {} packed", set.ty, case.name);
                // bytes -> codes
                let mut back = vec![9i8; codes.len()];
                let mut scales = vec![0f32; codes.len() / set.block];
                unpack_ternary_into(set.ty, oracle, &mut back, &mut scales).unwrap();
                assert_eq!(back, codes, "{}: case {} unpacked", set.ty, case.name);
                for (blk, &d) in scales.iter().enumerate() {
                    let any = codes[blk * set.block..(blk + 1) * set.block]
                        .iter()
                        .any(|&c| c != 0);
                    let want = if any {
                        half::f16::from_f32(scale).to_f32()
                    } else {
                        0.0
                    };
                    assert_eq!(d, want, "{}: case {} block {blk}", set.ty, case.name);
                }
            }

            // floats -> bytes -> floats
            let mut q = vec![0u8; oracle.len()];
            quantize_into(set.ty, x, &mut q).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize_into(set.ty, &q, &mut y).unwrap();
            if case.exact_round_trip {
                assert_eq!(y, x, "{}: case {} round trip", set.ty, case.name);
            } else {
                // only the f16 rounding of the scale may differ
                let d = half::f16::from_f32(if set.ty == GgmlType::Q8_0 {
                    scale / 127.0
                } else {
                    scale
                })
                .to_f32();
                let s = if set.ty == GgmlType::Q8_0 {
                    d * 127.0
                } else {
                    d
                };
                for (&a, &c) in y.iter().zip(&codes) {
                    assert_eq!(a, c as f32 * s, "{}: case {}", set.ty, case.name);
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} ternary cases in the fixtures");
}

#[test]
fn fixtures_are_reproduced_by_the_generator() {
    let Some(python) = tern_tests::oracle_python() else {
        return;
    };
    let committed = tern_tests::fixture("codecs");
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = tern_tests::fixture("gen_codec_fixtures.py");
    tern_tests::run_python(
        &python,
        &[script.as_os_str(), "--out".as_ref(), tmp.path().as_os_str()],
    );
    let mut names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut committed_names: Vec<String> = std::fs::read_dir(&committed)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "README.md")
        .collect();
    committed_names.sort();
    assert_eq!(names, committed_names, "generated file set differs");
    for n in names {
        assert!(
            read(tmp.path(), &n) == read(&committed, &n),
            "{n}: regenerated fixture differs from the committed one; rerun \
             tests/fixtures/gen_codec_fixtures.py and review the diff"
        );
    }
}
