//! Safetensors reading and writing against fixtures written by the PyPI
//! `safetensors` package (tests/fixtures/gen_safetensors_fixtures.py), the
//! package itself as a live oracle, a malformed-file corpus, and a fuzz loop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use serde_json::Value;
use tern_io::safetensors::{
    serialize_safetensors, write_safetensors, Checkpoint, Dtype, SafetensorsError,
};
use tern_tests::{fixture, oracle_python, run_python, LargestAlloc};

#[global_allocator]
static A: LargestAlloc = LargestAlloc;

/// The allocation tracker is process-wide and tests run on parallel threads:
/// every test takes this lock so a measurement sees only its own allocations.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn shape_of(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect()
}

/// Compare every tensor of `ck` with the expected JSON written by the generator.
fn check_against_expected(ck: &Checkpoint, expected: &Value) {
    let tensors = expected["tensors"].as_object().unwrap();
    let want_names: Vec<&str> = tensors.keys().map(|s| s.as_str()).collect();
    let got_names: Vec<&str> = ck.names().collect();
    assert_eq!(got_names, want_names, "tensor names (sorted)");

    for (name, exp) in tensors {
        let e = ck.entry(name).unwrap();
        assert_eq!(
            e.dtype.to_string(),
            exp["dtype"].as_str().unwrap(),
            "{name} dtype"
        );
        assert_eq!(e.shape, shape_of(&exp["shape"]), "{name} shape");
        assert_eq!(e.offset, exp["offset"].as_u64().unwrap(), "{name} offset");
        assert_eq!(e.len, exp["bytes"].as_u64().unwrap(), "{name} bytes");
        let file = ck.file_of(e);
        assert_eq!(
            file.file_name().unwrap().to_str().unwrap(),
            exp["file"].as_str().unwrap(),
            "{name} file"
        );

        // The zero-copy view is exactly the file's bytes at the stated offset.
        let raw = std::fs::read(file).unwrap();
        let view = ck.data(name).unwrap();
        assert_eq!(view, &raw[e.offset as usize..(e.offset + e.len) as usize]);

        match exp["f32_bits"].as_array() {
            Some(bits) => {
                let want: Vec<u32> = bits.iter().map(|b| b.as_u64().unwrap() as u32).collect();
                let got: Vec<u32> = ck
                    .to_f32(name)
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                assert_eq!(got, want, "{name} values (f32 bits)");
                let mut buf = vec![f32::NAN; e.numel()];
                ck.to_f32_into(name, &mut buf).unwrap();
                assert_eq!(buf.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);

                match exp["first_non_finite"].as_u64() {
                    None => ck.check_finite(name).unwrap(),
                    Some(i) => {
                        let err = ck.check_finite(name).unwrap_err();
                        assert_eq!(err.kind.name(), "NonFinite");
                        let msg = err.to_string();
                        assert!(msg.contains(&format!("`{name}`")), "{msg}");
                        assert!(msg.contains(&format!("element {i}")), "{msg}");
                        assert!(msg.contains(&file.display().to_string()), "{msg}");
                    }
                }
            }
            None => {
                for err in [
                    ck.to_f32(name).unwrap_err(),
                    ck.to_f32_into(name, &mut vec![0.0; e.numel()]).unwrap_err(),
                    ck.check_finite(name).unwrap_err(),
                ] {
                    assert_eq!(err.kind.name(), "UnsupportedDtype");
                    let msg = err.to_string();
                    let want = format!(
                        "dtype {} of tensor `{name}` in file {} is not supported",
                        e.dtype,
                        file.display()
                    );
                    assert!(msg.starts_with(&want), "{msg}");
                }
            }
        }
    }
}

#[test]
fn single_file_matches_python_fixture() {
    let _g = serial();
    let path = fixture("safetensors/single.safetensors");
    let expected = read_json(&fixture("safetensors/single.expected.json"));
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.files().len(), 1);
    assert!(ck.index_path().is_none());
    let meta: BTreeMap<String, String> =
        serde_json::from_value(expected["metadata"].clone()).unwrap();
    assert_eq!(ck.metadata(), &meta);
    assert_eq!(ck.files()[0].metadata(), &meta);
    check_against_expected(&ck, &expected);

    // The same bytes validated in memory give the same entries.
    let mem = Checkpoint::from_bytes(&path, std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(mem.tensors(), ck.tensors());
    check_against_expected(&mem, &expected);
}

#[test]
fn sharded_model_matches_python_fixture() {
    let _g = serial();
    let dir = fixture("safetensors/sharded");
    let expected = read_json(&dir.join("expected.json"));
    for opened in [dir.clone(), dir.join("model.safetensors.index.json")] {
        let ck = Checkpoint::open(&opened).unwrap();
        assert_eq!(
            ck.index_path().unwrap(),
            dir.join("model.safetensors.index.json")
        );
        // Every shard mapped exactly once, in name order.
        let files: Vec<String> = ck
            .files()
            .iter()
            .map(|f| f.path().file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files,
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        for f in ck.files() {
            assert_eq!(f.file_len(), std::fs::metadata(f.path()).unwrap().len());
        }
        let meta: BTreeMap<String, String> =
            serde_json::from_value(expected["metadata"].clone()).unwrap();
        assert_eq!(ck.metadata(), &meta);
        let index_meta: BTreeMap<String, Value> =
            serde_json::from_value(expected["index_metadata"].clone()).unwrap();
        assert_eq!(ck.index_metadata(), &index_meta);
        check_against_expected(&ck, &expected);
    }
}

#[test]
fn lookups_and_buffers_report_errors_naming_the_file() {
    let _g = serial();
    let path = fixture("safetensors/single.safetensors");
    let ck = Checkpoint::open(&path).unwrap();
    let err = ck.data("no.such.tensor").unwrap_err();
    assert_eq!(err.kind.name(), "TensorNotFound");
    assert!(err.to_string().contains("no.such.tensor"));
    assert!(err.to_string().contains("single.safetensors"));

    let err = ck
        .to_f32_into("layers.0.attn.q_proj.weight", &mut [0.0; 5])
        .unwrap_err();
    assert_eq!(err.kind.name(), "OutputLength");
    assert!(err.to_string().contains("6 elements"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert_eq!(err.kind.name(), "NoCheckpointInDir");
    let err = Checkpoint::open(dir.path().join("absent.safetensors")).unwrap_err();
    assert_eq!(err.kind.name(), "Io");
    assert!(err.to_string().contains("absent.safetensors"));
}

#[test]
fn summary_serializes_and_prints_a_table() {
    let _g = serial();
    let ck = Checkpoint::open(fixture("safetensors/sharded")).unwrap();
    let s = ck.summary();
    let json = serde_json::to_value(&s).unwrap();
    let t = &json["tensors"][0];
    assert_eq!(t["name"], "model.embed_tokens.weight");
    assert_eq!(t["dtype"], "BF16");
    assert_eq!(t["shape"], serde_json::json!([4, 3]));
    assert_eq!(t["bytes"], 24);
    assert_eq!(t["offset"], ck.tensors()[0].offset);
    assert!(t["file"]
        .as_str()
        .unwrap()
        .ends_with("model-00001-of-00002.safetensors"));
    assert_eq!(json["metadata"]["format"], "pt");
    assert_eq!(json["files"].as_array().unwrap().len(), 2);

    let text = s.to_string();
    assert!(text.contains("format: pt"), "{text}");
    assert!(text.contains("index.total_size:"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("model.norm.weight "))
        .expect("a row per tensor");
    let cols: Vec<&str> = row.split_whitespace().collect();
    let e = ck.entry("model.norm.weight").unwrap();
    assert_eq!(
        cols,
        [
            "model.norm.weight",
            "F16",
            "[3]",
            "6",
            &e.offset.to_string(),
            "model-00002-of-00002.safetensors"
        ]
    );
}

/// Tensors covering every width class, in an order the writer must re-sort.
fn sample_tensors() -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut bytes = |n: usize| (0..n).map(|_| rng.random::<u8>()).collect::<Vec<u8>>();
    let f32s: Vec<u8> = [1.5f32, -2.25, 0.0, 3.0e-3, 7.0, -0.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    vec![
        ("z.u8".into(), Dtype::U8, vec![3, 2], bytes(6)),
        ("lora_A".into(), Dtype::F32, vec![2, 3], f32s),
        ("b.bf16".into(), Dtype::BF16, vec![4], bytes(8)),
        ("a.f16".into(), Dtype::F16, vec![2, 2], bytes(8)),
        ("i8".into(), Dtype::I8, vec![5], bytes(5)),
        ("steps".into(), Dtype::I64, vec![], bytes(8)),
        ("mask".into(), Dtype::BOOL, vec![2], vec![0, 1]),
        ("empty".into(), Dtype::F32, vec![0, 4], vec![]),
        ("name \"quoted\" é".into(), Dtype::F32, vec![1], bytes(4)),
    ]
}

#[test]
fn writer_round_trips_through_tern() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter_model.safetensors");
    let tensors = sample_tensors();
    let meta: BTreeMap<String, String> = [("format", "pt"), ("b", "2"), ("a", "1")]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
    write_safetensors(&path, &tensors, Some(meta.clone())).unwrap();

    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.metadata(), &meta);
    assert_eq!(ck.len(), tensors.len());
    for (name, dtype, shape, data) in &tensors {
        let e = ck.entry(name).unwrap();
        assert_eq!((e.dtype, &e.shape), (*dtype, shape));
        assert_eq!(ck.data(name).unwrap(), &data[..]);
    }
    let lora: Vec<f32> = ck.to_f32("lora_A").unwrap();
    assert_eq!(lora, [1.5, -2.25, 0.0, 3.0e-3, 7.0, -0.5]);

    // The in-memory serializer produces the same bytes as the file writer.
    let mem = serialize_safetensors(&tensors, Some(meta)).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), mem);
    // No temporary files are left next to the target.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

const PY_READ: &str = r#"
import json, sys
from safetensors import deserialize, safe_open
p = sys.argv[1]
out = {"tensors": {}}
for name, t in deserialize(open(p, "rb").read()):
    out["tensors"][name] = {"dtype": t["dtype"], "shape": list(t["shape"]), "hex": bytes(t["data"]).hex()}
with safe_open(p, framework="numpy") as f:
    out["metadata"] = f.metadata()
print(json.dumps(out))
"#;

const PY_WRITE: &str = r#"
import json, sys
import numpy as np
import safetensors
spec = json.load(open(sys.argv[1]))
names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "U8": "uint8", "I8": "int8",
         "I64": "int64", "BOOL": "bool", "I32": "int32"}
keep, specs = [], {}
for name, t in spec["tensors"].items():
    a = np.frombuffer(bytes.fromhex(t["hex"]), dtype=np.uint8).copy()
    keep.append(a)
    specs[name] = safetensors.TensorSpec(dtype=names[t["dtype"]], shape=t["shape"],
                                         data_ptr=a.ctypes.data, data_len=a.nbytes)
meta = spec["metadata"]
meta = None if meta is None else {k: meta[k] for k in sorted(meta)}
open(sys.argv[2], "wb").write(bytes(safetensors.serialize(specs, metadata=meta)))
"#;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn writer_matches_python_safetensors_oracle() {
    let _g = serial();
    let Some(py) = oracle_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tensors = sample_tensors();
    for meta in [
        None,
        Some(BTreeMap::from([("format".to_string(), "pt".to_string())])),
        Some(BTreeMap::from([
            ("z".to_string(), "last".to_string()),
            ("alpha".to_string(), "16".to_string()),
            ("format".to_string(), "pt".to_string()),
        ])),
    ] {
        let ours = dir.path().join("ours.safetensors");
        write_safetensors(&ours, &tensors, meta.clone()).unwrap();

        // 1. Python reads what tern wrote.
        let script = dir.path().join("read.py");
        std::fs::write(&script, PY_READ).unwrap();
        let out: Value =
            serde_json::from_str(&run_python(&py, &[script.as_os_str(), ours.as_os_str()]))
                .unwrap();
        let want_meta = meta.clone().map(|m| serde_json::to_value(m).unwrap());
        assert_eq!(out["metadata"], want_meta.clone().unwrap_or(Value::Null));
        assert_eq!(out["tensors"].as_object().unwrap().len(), tensors.len());
        for (name, dtype, shape, data) in &tensors {
            let t = &out["tensors"][name.as_str()];
            assert_eq!(t["dtype"], dtype.to_string(), "{name}");
            assert_eq!(shape_of(&t["shape"]), *shape, "{name}");
            assert_eq!(t["hex"], hex(data), "{name}");
        }

        // 2. Python writes the same dict: the files are byte-identical.
        let spec = serde_json::json!({
            "metadata": want_meta,
            "tensors": tensors.iter().map(|(n, d, s, b)| (n.clone(), serde_json::json!({
                "dtype": d.to_string(), "shape": s, "hex": hex(b)
            }))).collect::<serde_json::Map<_, _>>(),
        });
        let spec_path = dir.path().join("spec.json");
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        let theirs = dir.path().join("theirs.safetensors");
        let script = dir.path().join("write.py");
        std::fs::write(&script, PY_WRITE).unwrap();
        run_python(
            &py,
            &[
                script.as_os_str(),
                spec_path.as_os_str(),
                theirs.as_os_str(),
            ],
        );
        let (a, b) = (
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap(),
        );
        if meta.as_ref().is_some_and(|m| m.len() > 1) {
            // The Python package writes `__metadata__` keys in hash-map order
            // (it varies from run to run); tern sorts them. Everything else
            // (lengths, padding, tensor order, offsets, data) must agree.
            let split = |f: &[u8]| {
                let n = 8 + u64::from_le_bytes(f[..8].try_into().unwrap()) as usize;
                let h: Value = serde_json::from_slice(&f[8..n]).unwrap();
                (f[..8].to_vec(), h, f[n..].to_vec())
            };
            let (pa, ha, da) = split(&a);
            let (pb, hb, db) = split(&b);
            assert_eq!(pa, pb, "header length");
            assert_eq!(ha, hb, "header JSON");
            assert_eq!(da, db, "data section");
            continue;
        }
        assert!(
            a == b,
            "tern and python safetensors differ:\n tern: {}\n py:   {}",
            String::from_utf8_lossy(&a[..a.len().min(600)]),
            String::from_utf8_lossy(&b[..b.len().min(600)])
        );
    }
}

#[test]
fn failed_writes_leave_the_target_untouched() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.safetensors");
    std::fs::write(&target, b"previous contents").unwrap();
    let listing = || {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let before = listing();

    let bad_len = [("w", Dtype::F32, vec![2usize], vec![0u8; 7])];
    let dup = [
        ("w", Dtype::F32, vec![1usize], vec![0u8; 4]),
        ("w", Dtype::F16, vec![2usize], vec![0u8; 4]),
    ];
    let reserved = [("__metadata__", Dtype::U8, vec![1usize], vec![0u8])];
    let overflow = [("big", Dtype::F32, vec![usize::MAX, 2], vec![])];
    for (case, tensors) in [
        ("length", &bad_len[..]),
        ("duplicate", &dup[..]),
        ("reserved", &reserved[..]),
        ("overflow", &overflow[..]),
    ] {
        let err = write_safetensors(&target, tensors, None).unwrap_err();
        assert_eq!(err.kind.name(), "WriteInvalid", "{case}: {err}");
        assert!(err.to_string().contains("out.safetensors"), "{case}: {err}");
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"previous contents",
            "{case}"
        );
        assert_eq!(listing(), before, "{case}: stray files");
    }

    // An I/O failure after the data was written (the rename onto a non-empty
    // directory fails): the temporary file is removed, nothing else changes.
    let blocker = dir.path().join("blocker.safetensors");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), b"x").unwrap();
    let before = listing();
    let ok = [("w", Dtype::U8, vec![1usize], vec![9u8])];
    let err = write_safetensors(&blocker, &ok, None).unwrap_err();
    assert_eq!(err.kind.name(), "Io", "{err}");
    assert_eq!(listing(), before);

    // A missing directory is an error naming the path.
    let err =
        write_safetensors(dir.path().join("no/such/dir/x.safetensors"), &ok, None).unwrap_err();
    assert_eq!(err.kind.name(), "Io");
    assert!(err.to_string().contains("no/such/dir"), "{err}");

    // And a good write replaces the old file in one step.
    write_safetensors(&target, &ok, None).unwrap();
    assert_eq!(Checkpoint::open(&target).unwrap().data("w").unwrap(), [9]);
}

/// Total size of a malformed case: the file, or for an index every file in its directory.
fn case_bytes(path: &Path) -> u64 {
    if path.extension().is_some_and(|e| e == "json") {
        std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    } else {
        std::fs::metadata(path).unwrap().len()
    }
}

/// Slack allowed above the input size for the largest single allocation when
/// opening a hostile file: path buffers, error strings, the JSON parser's and
/// hash maps' small initial buffers (under 1 KiB today). The point of the bound is that no length,
/// offset or shape *claimed* by a file (up to 2^60 bytes in this corpus) is
/// ever used to size an allocation; only bytes actually present are.
const ALLOC_SLACK: usize = 4 << 10;

#[test]
fn malformed_corpus_gives_typed_errors_without_large_allocations() {
    let _g = serial();
    let root = fixture("malformed/safetensors");
    let manifest = read_json(&root.join("manifest.json"));
    let manifest = manifest.as_object().unwrap();

    // Every hostile file and index directory in the corpus is in the manifest.
    for entry in std::fs::read_dir(&root).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let key = if p.is_dir() {
            format!("{name}/model.safetensors.index.json")
        } else if name == "manifest.json" {
            continue;
        } else {
            name
        };
        assert!(manifest.contains_key(&key), "{key} is not in manifest.json");
    }

    for (rel, want) in manifest {
        let path = root.join(rel);
        let size = case_bytes(&path) as usize;
        LargestAlloc::reset();
        let result = Checkpoint::open(&path);
        let largest = LargestAlloc::largest();
        let err: SafetensorsError = match result {
            Ok(_) => panic!("{rel}: opened a malformed file"),
            Err(e) => e,
        };
        assert_eq!(
            err.kind.name(),
            want["kind"].as_str().unwrap(),
            "{rel}: {err}"
        );
        let msg = err.to_string();
        eprintln!("{rel}: largest allocation {largest} B: {msg}");
        for s in want["display_contains"].as_array().unwrap() {
            assert!(
                msg.contains(s.as_str().unwrap()),
                "{rel}: {msg:?} lacks {s}"
            );
        }
        assert!(
            largest <= size + ALLOC_SLACK,
            "{rel}: largest allocation {largest} bytes for a {size}-byte input"
        );
        // Index cases: opening the directory finds the index and fails the same way.
        if rel.ends_with(".json") {
            let err = Checkpoint::open(path.parent().unwrap()).unwrap_err();
            assert_eq!(
                err.kind.name(),
                want["kind"].as_str().unwrap(),
                "{rel} (dir)"
            );
        }
    }
}

/// Open `bytes` and, if accepted, touch everything a caller could.
fn exercise(bytes: Vec<u8>) -> Result<usize, SafetensorsError> {
    let ck = Checkpoint::from_bytes("fuzz.safetensors", bytes)?;
    let mut n = 0;
    for e in ck.tensors() {
        n += ck.data(&e.name)?.len();
        let _ = ck.to_f32(&e.name);
        let _ = ck.check_finite(&e.name);
    }
    let _ = ck.summary().to_string();
    Ok(n)
}

#[test]
fn fuzzed_files_error_or_open_but_never_panic() {
    let _g = serial();
    let seeds = [
        std::fs::read(fixture("safetensors/single.safetensors")).unwrap(),
        std::fs::read(fixture(
            "safetensors/sharded/model-00002-of-00002.safetensors",
        ))
        .unwrap(),
        serialize_safetensors(sample_tensors(), None).unwrap(),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7e57_5afe);
    let (mut ok, mut rejected) = (0usize, 0usize);
    let start = std::time::Instant::now();
    let mut iters = 0;
    while iters < 200_000 && start.elapsed().as_secs_f32() < 3.0 {
        iters += 1;
        let seed = &seeds[rng.random_range(0..seeds.len())];
        let mut b = seed.clone();
        let header_end = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        match rng.random_range(0..7) {
            // Flip bits in the header (where the structure lives).
            0 | 1 => {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..header_end);
                    b[i] ^= 1 << rng.random_range(0..8);
                }
            }
            // Replace a header byte with a JSON-significant character.
            2 => {
                let i = rng.random_range(8..header_end);
                let chars = b"{}[]\",:0123456789-e ";
                b[i] = chars[rng.random_range(0..chars.len())];
            }
            // Truncate anywhere.
            3 => b.truncate(rng.random_range(0..b.len())),
            // Random header length.
            4 => {
                let n: u64 = match rng.random_range(0..3) {
                    0 => rng.random(),
                    1 => rng.random_range(0..b.len() as u64 + 16),
                    _ => 1 << rng.random_range(0..64),
                };
                b[..8].copy_from_slice(&n.to_le_bytes());
            }
            // Flip a data byte: the file stays valid, values change.
            5 if b.len() > header_end => {
                let i = rng.random_range(header_end..b.len());
                b[i] ^= rng.random::<u8>() | 1;
            }
            // Append or delete bytes in the data section.
            _ => {
                if rng.random() {
                    b.extend((0..rng.random_range(1..9)).map(|_| rng.random::<u8>()));
                } else if b.len() > header_end {
                    b.pop();
                }
            }
        }
        match std::panic::catch_unwind(move || exercise(b)) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                assert!(e.to_string().contains("fuzz.safetensors"), "{e}");
                rejected += 1
            }
            Err(_) => panic!("panic on a mutated file (iteration {iters})"),
        }
    }
    eprintln!("fuzz: {iters} cases, {ok} accepted, {rejected} rejected");
    assert!(rejected > iters / 4, "mutations should mostly be rejected");
    assert!(ok > 0, "some mutations (e.g. data-only) must stay valid");
}

#[test]
fn many_tensor_headers_allocate_in_proportion_to_the_header() {
    let _g = serial();
    let names: Vec<String> = (0..20_000).map(|i| format!("t{i}")).collect();
    let tensors: Vec<_> = names
        .iter()
        .map(|n| (n.as_str(), Dtype::U8, [0usize], [0u8; 0]))
        .collect();
    let bytes = serialize_safetensors(&tensors, None).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    LargestAlloc::reset();
    let ck = Checkpoint::from_bytes("many.safetensors", bytes).unwrap();
    let largest = LargestAlloc::largest();
    assert_eq!(ck.len(), names.len());
    eprintln!("{header_len}-byte header: largest allocation {largest} B");
    // The owned image (moved in, not copied) plus per-entry tables: the
    // parser's maps and vectors hold a fixed-size record per tensor, and a
    // header entry is at least ~50 bytes of JSON.
    assert!(largest <= 4 * header_len + ALLOC_SLACK, "{largest}");
}
