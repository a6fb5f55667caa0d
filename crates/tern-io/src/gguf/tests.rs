//! Round trips through the writer and reader, and the writer's validation.

use std::io::Write;

use tern_tensor::GgmlType;

use super::*;

fn all_values() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::from("bitnet")),
        ("t.u8", Value::U8(250)),
        ("t.i8", Value::I8(-7)),
        ("t.u16", Value::U16(65535)),
        ("t.i16", Value::I16(-32768)),
        ("t.u32", Value::U32(u32::MAX)),
        ("t.i32", Value::I32(i32::MIN)),
        ("t.f32", Value::F32(-0.125)),
        ("t.bool", Value::Bool(true)),
        ("t.str", Value::from("héllo")),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(1e300)),
        ("t.a_u8", Value::from(vec![1u8, 2, 3])),
        ("t.a_i8", Value::from(vec![-1i8, 2])),
        ("t.a_u16", Value::from(vec![7u16])),
        ("t.a_i16", Value::from(vec![-7i16, 8])),
        ("t.a_u32", Value::from(vec![0u32, 9])),
        ("t.a_i32", Value::from(Vec::<i32>::new())),
        ("t.a_f32", Value::from(vec![1.5f32, -2.0])),
        ("t.a_bool", Value::from(vec![true, false])),
        ("t.a_str", Value::from(vec!["", "a", "ünï"])),
        ("t.a_u64", Value::from(vec![u64::MAX])),
        ("t.a_i64", Value::from(vec![i64::MIN, 0])),
        ("t.a_f64", Value::from(vec![0.1f64])),
        (
            "t.a_nested",
            Value::from(vec![
                Array::from(vec![1i32, 2]),
                Array::from(vec!["x", "y"]),
                Array::from(vec![Array::from(vec![true])]),
            ]),
        ),
    ]
}

/// (name, type, ne, bytes)
fn tensors() -> Vec<(&'static str, GgmlType, Vec<u64>, Vec<u8>)> {
    let bytes = |n: u64, seed: u8| {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect::<Vec<u8>>()
    };
    [
        ("token_embd.weight", GgmlType::F16, vec![16, 3]),
        ("blk.0.attn_q.weight", GgmlType::TQ2_0, vec![256, 2]),
        ("blk.0.attn_k.weight", GgmlType::TQ1_0, vec![512]),
        ("blk.0.ffn_up.weight", GgmlType::I2_S, vec![128, 4]),
        ("blk.0.ffn_down.weight", GgmlType::Q8_0, vec![32, 1, 2, 1]),
        ("output_norm.weight", GgmlType::F32, vec![5]),
        ("x.bf16", GgmlType::BF16, vec![3, 3]),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (n, ty, ne))| {
        let nb = ty.tensor_bytes(&ne).unwrap();
        (n, ty, ne, bytes(nb, i as u8))
    })
    .collect()
}

fn write_file(path: &std::path::Path, alignment: Option<u32>) {
    let mut w = GgufWriter::create(path).unwrap();
    for (k, v) in all_values() {
        w.add_kv(k, v).unwrap();
    }
    if let Some(a) = alignment {
        w.add_kv(ALIGNMENT_KEY, Value::U32(a)).unwrap();
    }
    for (n, ty, ne, b) in tensors() {
        assert_eq!(w.add_tensor_info(n, ty, &ne).unwrap(), b.len() as u64);
    }
    let mut sink = w.begin_data().unwrap();
    for (i, (n, _, _, b)) in tensors().into_iter().enumerate() {
        if i % 2 == 0 {
            sink.write_tensor(n, &b).unwrap();
        } else {
            // Stream in small pieces.
            sink.write_tensor_with(n, |w| {
                for c in b.chunks(7) {
                    w.write_all(c)?;
                }
                Ok(())
            })
            .unwrap();
        }
    }
    sink.finish().unwrap();
}

#[test]
fn round_trip_every_value_type_and_tensor_type() {
    let dir = tempfile::tempdir().unwrap();
    for alignment in [None, Some(1), Some(64), Some(4096)] {
        let path = dir.path().join("m.gguf");
        write_file(&path, alignment);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), alignment.unwrap_or(32));
        assert_eq!(f.data_offset() % u64::from(f.alignment()), 0);
        assert!(f.has_sequential_layout());
        let expected = all_values();
        let n_kv = expected.len() + usize::from(alignment.is_some());
        assert_eq!(f.metadata().len(), n_kv);
        for ((k, v), (ek, ev)) in f.metadata().iter().zip(&expected) {
            assert_eq!(k, *ek);
            assert_eq!(v, ev, "{k}");
        }
        for (ek, ev) in &expected {
            assert_eq!(f.get(ek), Some(ev));
        }
        assert_eq!(f.tensors().len(), tensors().len());
        for (t, (n, ty, ne, b)) in f.tensors().iter().zip(tensors()) {
            assert_eq!((t.name.as_str(), t.ty, &t.ne), (n, ty, &ne));
            assert_eq!(t.offset % u64::from(f.alignment()), 0);
            assert_eq!(f.tensor_data(t), &b[..]);
            assert_eq!(f.tensor_data_by_name(n), Some(&b[..]));
            // Zero-copy: the slice points into the file's bytes.
            let start = (f.data_offset() + t.offset) as usize;
            assert!(std::ptr::eq(
                f.tensor_data(t).as_ptr(),
                f.bytes()[start..].as_ptr()
            ));
        }
        assert!(f.tensor("nope").is_none());
        // The same bytes parse identically from memory.
        let g = GgufFile::from_bytes("mem", std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(g.tensors(), f.tensors());
    }
}

#[test]
fn typed_getters_name_key_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_file(&path, None);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get_u32("t.u32").unwrap(), u32::MAX);
    assert_eq!(f.get_i8("t.i8").unwrap(), -7);
    assert_eq!(f.get_f32("t.f32").unwrap(), -0.125);
    assert_eq!(f.get_f64("t.f64").unwrap(), 1e300);
    assert!(f.get_bool("t.bool").unwrap());
    assert_eq!(f.get_str("t.str").unwrap(), "héllo");
    assert_eq!(
        f.get_str_array("t.a_str").unwrap().to_vec(),
        ["", "a", "ünï"]
    );
    assert_eq!(f.get_array("t.a_u32").unwrap().len(), 2);
    let e = f.get_u32("t.i32").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("m.gguf")
            && msg.contains("'t.i32'")
            && msg.contains("u32")
            && msg.contains("i32"),
        "{msg}"
    );
    let e = f.get_str("missing.key").unwrap_err();
    assert!(matches!(
        e.kind,
        GgufErrorKind::Metadata(MetadataError::Missing { ref key, expected: "string" }) if key == "missing.key"
    ));
}

#[test]
fn summary_serializes_with_truncated_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_file(&path, None);
    let f = GgufFile::open(&path).unwrap();
    let s = serde_json::to_value(f.summary(1)).unwrap();
    assert_eq!(s["version"], 3);
    let meta = s["metadata"].as_array().unwrap();
    let a = meta.iter().find(|m| m["key"] == "t.a_str").unwrap();
    assert_eq!(a["type"], "array[string]");
    assert_eq!(a["value"], serde_json::json!(["", "… (3 items)"]));
    let t = &s["tensors"][1];
    assert_eq!(t["name"], "blk.0.attn_q.weight");
    assert_eq!(t["type"], "TQ2_0");
    assert_eq!(t["ne"], serde_json::json!([256, 2]));
    assert_eq!(t["n_bytes"], 132);
}

#[test]
fn writer_validates_at_add_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.gguf");
    let mut w = GgufWriter::create(&path).unwrap();
    w.add_kv("a", 1u32).unwrap();
    let kind = |e: GgufError| e.kind;
    assert!(matches!(
        kind(w.add_kv("a", 2u32).unwrap_err()),
        GgufErrorKind::DuplicateKey { .. }
    ));
    assert!(matches!(
        kind(w.add_kv("", 2u32).unwrap_err()),
        GgufErrorKind::EmptyKey
    ));
    assert!(matches!(
        kind(w.add_kv(ALIGNMENT_KEY, 48u32).unwrap_err()),
        GgufErrorKind::BadAlignment { alignment: 48 }
    ));
    assert!(matches!(
        kind(w.add_kv(ALIGNMENT_KEY, 32u64).unwrap_err()),
        GgufErrorKind::AlignmentType {
            found: ValueType::U64
        }
    ));
    let mut deep = Array::from(vec![1u8]);
    for _ in 0..MAX_ARRAY_DEPTH {
        deep = Array::from(vec![deep]);
    }
    assert!(matches!(
        kind(w.add_kv("deep", deep).unwrap_err()),
        GgufErrorKind::NestingTooDeep { .. }
    ));
    w.add_tensor_info("t", GgmlType::F32, &[4]).unwrap();
    let e = w.add_tensor_info("t", GgmlType::F32, &[4]).unwrap_err();
    assert!(e.to_string().contains("w.gguf"), "{e}");
    assert!(matches!(e.kind, GgufErrorKind::DuplicateTensor { .. }));
    let long = "n".repeat(64);
    assert!(matches!(
        kind(w.add_tensor_info(long, GgmlType::F32, &[4]).unwrap_err()),
        GgufErrorKind::NameTooLong {
            len: 64,
            max: 63,
            ..
        }
    ));
    w.add_tensor_info("n".repeat(63), GgmlType::F32, &[4])
        .unwrap();
    assert!(matches!(
        kind(w.add_tensor_info("", GgmlType::F32, &[4]).unwrap_err()),
        GgufErrorKind::EmptyName
    ));
    assert!(matches!(
        kind(w.add_tensor_info("z", GgmlType::F32, &[]).unwrap_err()),
        GgufErrorKind::BadDimCount { n_dims: 0, .. }
    ));
    assert!(matches!(
        kind(
            w.add_tensor_info("z", GgmlType::F32, &[1, 1, 1, 1, 1])
                .unwrap_err()
        ),
        GgufErrorKind::BadDimCount { n_dims: 5, .. }
    ));
    assert!(matches!(
        kind(w.add_tensor_info("z", GgmlType::F32, &[4, 0]).unwrap_err()),
        GgufErrorKind::BadDim {
            index: 1,
            value: 0,
            ..
        }
    ));
    assert!(matches!(
        kind(w.add_tensor_info("z", GgmlType::TQ2_0, &[100]).unwrap_err()),
        GgufErrorKind::NotBlockAligned {
            ne0: 100,
            block: 256,
            ..
        }
    ));
    assert!(matches!(
        kind(
            w.add_tensor_info("z", GgmlType::F32, &[1 << 40, 1 << 40])
                .unwrap_err()
        ),
        GgufErrorKind::SizeOverflow { .. }
    ));
    drop(w);
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temp file left behind"
    );
}

#[test]
fn sink_enforces_order_size_and_completeness_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.gguf");
    std::fs::write(&path, b"old contents").unwrap();
    let start = || {
        let mut w = GgufWriter::create(&path).unwrap();
        w.add_tensor_info("a", GgmlType::F32, &[2]).unwrap();
        w.add_tensor_info("b", GgmlType::F32, &[3]).unwrap();
        w.begin_data().unwrap()
    };
    let only_target = || {
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("s.gguf")]);
        assert_eq!(std::fs::read(&path).unwrap(), b"old contents");
    };

    let mut sink = start();
    let e = sink.write_tensor("b", &[0; 12]).unwrap_err();
    assert!(matches!(e.kind, GgufErrorKind::OutOfOrder { ref got, .. } if got == "b"));
    let e = sink.write_tensor("a", &[0; 7]).unwrap_err();
    assert!(matches!(
        e.kind,
        GgufErrorKind::WrongSize {
            declared: 8,
            written: 7,
            ..
        }
    ));
    sink.write_tensor("a", &[1; 8]).unwrap();
    let e = sink.finish().unwrap_err();
    assert!(
        matches!(e.kind, GgufErrorKind::MissingTensors { missing: 1, ref next } if next == "b")
    );
    only_target();

    // Streaming more than declared poisons the sink.
    let mut sink = start();
    sink.write_tensor("a", &[1; 8]).unwrap();
    let e = sink
        .write_tensor_with("b", |w| w.write_all(&[0; 13]))
        .unwrap_err();
    assert!(matches!(
        e.kind,
        GgufErrorKind::WrongSize {
            declared: 12,
            written: 13,
            ..
        }
    ));
    assert!(matches!(
        sink.finish().unwrap_err().kind,
        GgufErrorKind::Poisoned
    ));
    only_target();

    // Streaming fewer bytes than declared.
    let mut sink = start();
    let e = sink
        .write_tensor_with("a", |w| w.write_all(&[0; 4]))
        .unwrap_err();
    assert!(matches!(
        e.kind,
        GgufErrorKind::WrongSize {
            declared: 8,
            written: 4,
            ..
        }
    ));
    drop(sink);
    only_target();

    // A closure error is reported as I/O and removes the temp file on drop.
    let mut sink = start();
    let e = sink
        .write_tensor_with("a", |_| Err(std::io::Error::other("source failed")))
        .unwrap_err();
    assert!(e.to_string().contains("source failed"), "{e}");
    drop(sink);
    only_target();

    // Success replaces the target atomically.
    let mut sink = start();
    assert_eq!(sink.next_tensor().unwrap().name, "a");
    sink.write_tensor("a", &[1; 8]).unwrap();
    sink.write_tensor("b", &[2; 12]).unwrap();
    let e = sink.write_tensor("c", &[]).unwrap_err();
    assert!(matches!(e.kind, GgufErrorKind::OutOfOrder { .. }));
    sink.finish().unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensors()[1].offset, 32);
    assert_eq!(f.tensor_data_by_name("b").unwrap(), &[2; 12]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn empty_file_and_no_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.gguf");
    let mut w = GgufWriter::create(&path).unwrap();
    w.add_kv("general.type", "adapter").unwrap();
    w.begin_data().unwrap().finish().unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert!(f.tensors().is_empty());
    assert_eq!(f.get_str("general.type").unwrap(), "adapter");
    assert!(matches!(
        GgufFile::from_bytes("x", Vec::new()).unwrap_err().kind,
        GgufErrorKind::Empty
    ));
}

#[test]
fn reader_accepts_out_of_order_layout_but_reports_it() {
    // Two F32 tensors whose data is stored in reverse order.
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    for (name, off) in [("a", 32u64), ("b", 0)] {
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&off.to_le_bytes());
    }
    b.resize(b.len().next_multiple_of(32), 0);
    let data_offset = b.len();
    b.extend((0..64u8).map(|i| i + 1));
    let f = GgufFile::from_bytes("ooo", b).unwrap();
    assert!(!f.has_sequential_layout());
    assert_eq!(f.data_offset(), data_offset as u64);
    assert_eq!(f.tensor_data_by_name("a").unwrap()[0], 33);
    assert_eq!(f.tensor_data_by_name("b").unwrap()[0], 1);
}
