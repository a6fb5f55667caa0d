//! GGUF interoperability with gguf-py (the PyPI `gguf` package), an
//! independent reader and writer.
//!
//! - tern reads `fixtures/gguf/pywritten.gguf` (written by gguf-py) exactly as
//!   gguf-py reads it back (`pywritten.json`): metadata, tensor infos and the
//!   dequantized values.
//! - gguf-py reads a file written by tern exactly as tern does (needs the
//!   oracle venv; skipped with a message otherwise, required under CI=true).
//! - tern rewriting pywritten.gguf's content produces the same bytes.
//!
//! Both JSON documents come from `fixtures/gen_gguf_fixtures.py`.

use std::ffi::OsStr;
use std::path::Path;

use serde_json::Value as J;
use tern_io::gguf::{Array, GgufFile, GgufWriter, StringArray, Value, ValueType};
use tern_tensor::codec::{dequantize_into, quantize_into};
use tern_tensor::GgmlType;
use tern_tests::{fixture, oracle_python, run_python};

/// gguf-py's `GGUFValueType` names.
fn py_type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::U8 => "UINT8",
        ValueType::I8 => "INT8",
        ValueType::U16 => "UINT16",
        ValueType::I16 => "INT16",
        ValueType::U32 => "UINT32",
        ValueType::I32 => "INT32",
        ValueType::F32 => "FLOAT32",
        ValueType::Bool => "BOOL",
        ValueType::String => "STRING",
        ValueType::Array => "ARRAY",
        ValueType::U64 => "UINT64",
        ValueType::I64 => "INT64",
        ValueType::F64 => "FLOAT64",
    }
}

/// Assert that tern's `v` equals gguf-py's JSON `j` (see the script's docstring).
fn assert_value_eq(ctx: &str, j: &J, v: &Value) {
    let ok = match v {
        Value::U8(x) => j.as_u64() == Some(u64::from(*x)),
        Value::U16(x) => j.as_u64() == Some(u64::from(*x)),
        Value::U32(x) => j.as_u64() == Some(u64::from(*x)),
        Value::U64(x) => j.as_u64() == Some(*x),
        Value::I8(x) => j.as_i64() == Some(i64::from(*x)),
        Value::I16(x) => j.as_i64() == Some(i64::from(*x)),
        Value::I32(x) => j.as_i64() == Some(i64::from(*x)),
        Value::I64(x) => j.as_i64() == Some(*x),
        // JSON carries the exact double of the f32; compare bit for bit.
        Value::F32(x) => {
            j.as_f64().map(|d| d as f32).map(f32::to_bits) == Some(x.to_bits())
                && j.as_f64() == Some(f64::from(*x))
        }
        Value::F64(x) => j.as_f64().map(f64::to_bits) == Some(x.to_bits()),
        Value::Bool(x) => j.as_bool() == Some(*x),
        Value::String(s) => j.as_str() == Some(s.as_str()),
        Value::Array(a) => {
            assert_eq!(
                j["elem_type"],
                py_type_name(a.elem_type()),
                "{ctx}: element type"
            );
            let items = j["items"]
                .as_array()
                .unwrap_or_else(|| panic!("{ctx}: no items in {j}"));
            assert_eq!(items.len(), a.len(), "{ctx}: array length");
            for (i, item) in items.iter().enumerate() {
                let elem = a.get(i).expect("index in range");
                assert_value_eq(&format!("{ctx}[{i}]"), item, &elem);
            }
            true
        }
    };
    assert!(ok, "{ctx}: tern has {v:?}, gguf-py has {j}");
}

fn dequantize(f: &GgufFile, name: &str) -> Vec<f32> {
    let t = f.tensor(name).expect("tensor exists");
    let mut out = vec![0f32; t.n_elements() as usize];
    dequantize_into(t.ty, f.tensor_data(t), &mut out).unwrap_or_else(|e| panic!("{name}: {e}"));
    out
}

/// Compare everything tern reads from `f` with gguf-py's JSON of the same file.
fn assert_file_matches_json(f: &GgufFile, j: &J) {
    assert_eq!(j["version"], f.version());
    assert_eq!(j["alignment"], f.alignment());
    assert_eq!(j["data_offset"], f.data_offset());

    let meta = j["metadata"].as_array().expect("metadata list");
    assert_eq!(meta.len(), f.metadata().len(), "number of KV pairs");
    for (m, (key, value)) in meta.iter().zip(f.metadata().iter()) {
        assert_eq!(m["key"], key, "KV order");
        assert_eq!(m["type"], py_type_name(value.value_type()), "{key}: type");
        assert_value_eq(key, &m["value"], value);
    }

    let tensors = j["tensors"].as_array().expect("tensor list");
    assert_eq!(tensors.len(), f.tensors().len(), "number of tensors");
    for (jt, t) in tensors.iter().zip(f.tensors()) {
        let name = t.name.as_str();
        assert_eq!(jt["name"], name, "tensor order");
        assert_eq!(jt["type"], t.ty.name(), "{name}: type");
        assert_eq!(jt["type_id"], t.ty.id(), "{name}: type id");
        assert_eq!(jt["ne"], serde_json::json!(t.ne), "{name}: ne");
        assert_eq!(jt["offset"], t.offset, "{name}: offset");
        assert_eq!(jt["n_bytes"], t.n_bytes, "{name}: n_bytes");
        let expected: Vec<f32> = jt["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|x| x.as_f64().expect("finite value") as f32)
            .collect();
        let got = dequantize(f, name);
        assert_eq!(got.len(), expected.len(), "{name}: element count");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                g.to_bits() == e.to_bits(),
                "{name}[{i}]: tern {g}, gguf-py {e}"
            );
        }
    }
}

#[test]
fn tern_reads_gguf_py_file_like_gguf_py() {
    let f = GgufFile::open(fixture("gguf/pywritten.gguf")).expect("pywritten.gguf opens");
    let j: J =
        serde_json::from_str(&std::fs::read_to_string(fixture("gguf/pywritten.json")).unwrap())
            .unwrap();
    assert_file_matches_json(&f, &j);
    // The fixture covers what it claims to.
    let types: Vec<GgmlType> = f.tensors().iter().map(|t| t.ty).collect();
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
    ] {
        assert!(types.contains(&ty), "{ty} missing from the fixture");
    }
    let vtypes: Vec<ValueType> = f.metadata().iter().map(|(_, v)| v.value_type()).collect();
    for vt in ValueType::ALL {
        assert!(vtypes.contains(&vt), "{vt} missing from the fixture");
    }
    assert_eq!(f.alignment(), 64);
    assert!(f.has_sequential_layout());
    assert_eq!(f.get_f32("test.f32").unwrap(), 1234.5678f32);
    assert_eq!(f.get_u64("test.u64").unwrap(), (1u64 << 63) + 5);
    assert_eq!(
        f.get_str_array("test.arr_str").unwrap().get(3),
        Some("✓ unicode")
    );
}

#[test]
fn tern_rewrites_gguf_py_file_byte_for_byte() {
    let src = GgufFile::open(fixture("gguf/pywritten.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rewritten.gguf");
    let mut w = GgufWriter::create(&out).unwrap();
    for (k, v) in src.metadata().iter() {
        w.add_kv(k, v.clone()).unwrap();
    }
    for t in src.tensors() {
        w.add_tensor_info(t.name.clone(), t.ty, &t.ne).unwrap();
    }
    let mut sink = w.begin_data().unwrap();
    for t in src.tensors() {
        sink.write_tensor(&t.name, src.tensor_data(t)).unwrap();
    }
    sink.finish().unwrap();
    let a = std::fs::read(fixture("gguf/pywritten.gguf")).unwrap();
    let b = std::fs::read(&out).unwrap();
    assert_eq!(a.len(), b.len(), "file sizes differ");
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!(
            "first difference at byte {i}: gguf-py {:#04x}, tern {:#04x}",
            a[i], b[i]
        );
    }
}

/// Deterministic pseudo-random floats in [-1, 1).
fn floats(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn write_tern_file(path: &Path) {
    let mut w = GgufWriter::create(path).unwrap();
    w.add_kv("general.architecture", "bitnet").unwrap();
    w.add_kv("general.alignment", 128u32).unwrap();
    w.add_kv("t.u8", 7u8).unwrap();
    w.add_kv("t.i8", -7i8).unwrap();
    w.add_kv("t.u16", 65535u16).unwrap();
    w.add_kv("t.i16", -32768i16).unwrap();
    w.add_kv("t.u32", u32::MAX).unwrap();
    w.add_kv("t.i32", i32::MIN).unwrap();
    w.add_kv("t.f32", 0.1f32).unwrap();
    w.add_kv("t.bool", false).unwrap();
    w.add_kv("t.string", "tern ✓").unwrap();
    w.add_kv("t.u64", u64::MAX).unwrap();
    w.add_kv("t.i64", i64::MIN).unwrap();
    w.add_kv("t.f64", -1.0f64 / 3.0).unwrap();
    w.add_kv("t.a_u8", vec![0u8, 255]).unwrap();
    w.add_kv("t.a_i8", vec![-128i8, 127]).unwrap();
    w.add_kv("t.a_u16", vec![1u16, 2]).unwrap();
    w.add_kv("t.a_i16", vec![-1i16]).unwrap();
    w.add_kv("t.a_u32", vec![3u32, 4, 5]).unwrap();
    w.add_kv("t.a_i32", vec![-3i32, 4]).unwrap();
    w.add_kv("t.a_f32", vec![0.25f32, -8.5]).unwrap();
    w.add_kv("t.a_bool", vec![true, false, true]).unwrap();
    w.add_kv(
        "t.a_str",
        ["", "<s>", "▁the", "ünï"]
            .into_iter()
            .collect::<StringArray>(),
    )
    .unwrap();
    w.add_kv("t.a_u64", vec![u64::MAX, 0]).unwrap();
    w.add_kv("t.a_i64", vec![i64::MIN, i64::MAX]).unwrap();
    w.add_kv("t.a_f64", vec![1e-300f64, 2.5]).unwrap();
    w.add_kv("t.a_empty", Vec::<u32>::new()).unwrap();
    w.add_kv(
        "t.a_nested",
        vec![
            Array::from(vec![1i32, 2]),
            Array::from(vec!["a", "b"]),
            Array::from(vec![Array::from(vec![0.5f64])]),
        ],
    )
    .unwrap();
    for (name, ty, ne) in tern_tensors() {
        w.add_tensor_info(name, ty, &ne).unwrap();
    }
    let mut sink = w.begin_data().unwrap();
    for (i, (name, ty, ne)) in tern_tensors().into_iter().enumerate() {
        let n: u64 = ne.iter().product();
        let x = floats(n as usize, i as u64 + 1);
        let mut bytes = vec![0u8; ty.tensor_bytes(&ne).unwrap() as usize];
        quantize_into(ty, &x, &mut bytes).unwrap();
        // Stream row by row to exercise the closure path.
        let row = ty.row_bytes(ne[0]).unwrap() as usize;
        sink.write_tensor_with(name, |w| {
            for r in bytes.chunks(row) {
                std::io::Write::write_all(w, r)?;
            }
            Ok(())
        })
        .unwrap();
    }
    sink.finish().unwrap();
}

fn tern_tensors() -> Vec<(&'static str, GgmlType, Vec<u64>)> {
    vec![
        ("token_embd.weight", GgmlType::F16, vec![16, 5]),
        ("blk.0.attn_q.weight", GgmlType::TQ2_0, vec![256, 3]),
        ("blk.0.attn_k.weight", GgmlType::TQ1_0, vec![512, 2]),
        ("blk.0.ffn_down.weight", GgmlType::Q8_0, vec![96, 2]),
        ("blk.0.attn_norm.weight", GgmlType::BF16, vec![7]),
        ("output_norm.weight", GgmlType::F32, vec![3, 2, 2]),
    ]
}

#[test]
fn gguf_py_reads_tern_file_like_tern() {
    let Some(python) = oracle_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tern.gguf");
    write_tern_file(&path);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.alignment(), 128);
    assert!(f.has_sequential_layout());
    let script = fixture("gen_gguf_fixtures.py");
    let out = run_python(
        &python,
        &[script.as_os_str(), OsStr::new("--read"), path.as_os_str()],
    );
    let j: J = serde_json::from_str(&out).expect("reader printed JSON");
    assert_file_matches_json(&f, &j);
}
