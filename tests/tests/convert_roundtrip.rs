//! `tern convert` end to end: a tiny transformers BitNet checkpoint (BF16,
//! tests/fixtures/gen_convert_fixtures.py) converted to every projection type
//! and both targets, then checked against independent oracles: gguf-py reads
//! each file and its dequantized projections equal transformers' absmean
//! ternarization; tern's logits from each file match transformers' W1.58A8
//! logits.

use std::path::{Path, PathBuf};
use tern_backend::Cpu;
use tern_convert::{convert, ConvertOptions, ConvertReport, Input};
use tern_io::gguf::GgufFile;
use tern_io::npy;
use tern_model::export::Target;
use tern_model::{GgufWeights, Model, WeightSource};
use tern_tensor::GgmlType;
use tern_tests::{fixture, oracle_python, run_python};

const TINY: &str = "convert/tiny_relu2";

fn opts(input: &Path, out: &Path, ty: GgmlType, target: Target, embed: GgmlType) -> ConvertOptions {
    let mut o = ConvertOptions::new(Input::Dir(input.to_path_buf()), out);
    o.proj_type = Some(ty);
    o.target = target;
    o.embed_type = embed;
    o
}

fn logits_of(src: &dyn WeightSource, toks: &[u32]) -> Vec<f32> {
    let mut m = Model::load(Cpu::with_threads(2), src).unwrap();
    m.forward(toks, true).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn tiny_tokens() -> Vec<u32> {
    let a = npy::read(&fixture("convert/tiny_relu2.input_ids.npy")).unwrap();
    a.data.iter().map(|&v| v as u32).collect()
}

fn tiny_oracle() -> Vec<f64> {
    npy::read(&fixture("convert/tiny_relu2.logits_quant.npy"))
        .unwrap()
        .data
}

fn oracle_json(py: &Path, gguf: &Path) -> serde_json::Value {
    let script = fixture("convert/gguf_oracle.py");
    let npz = fixture("convert/tiny_relu2.ternary.npz");
    let out = run_python(py, &[script.as_os_str(), gguf.as_os_str(), npz.as_os_str()]);
    serde_json::from_str(&out).expect("oracle JSON")
}

const CASES: [(Target, GgmlType); 7] = [
    (Target::LlamaCpp, GgmlType::TQ2_0),
    (Target::LlamaCpp, GgmlType::TQ1_0),
    (Target::LlamaCpp, GgmlType::I2_S),
    (Target::LlamaCpp, GgmlType::Q8_0),
    (Target::LlamaCpp, GgmlType::F16),
    (Target::LlamaCpp, GgmlType::F32),
    (Target::BitnetCpp, GgmlType::I2_S),
];

#[test]
fn tiny_checkpoint_converts_to_every_type_and_matches_the_oracles() {
    let dir = tempfile::tempdir().unwrap();
    let toks = tiny_tokens();
    let want = tiny_oracle();
    let py = oracle_python();
    for (target, ty) in CASES {
        let out = dir.path().join(format!("tiny-{target:?}-{ty}.gguf"));
        let rep = convert(&opts(&fixture(TINY), &out, ty, target, GgmlType::F32)).unwrap();
        eprint!("{}", rep.summary());
        assert!(
            rep.checkpoint_kind.contains("BF16"),
            "{}",
            rep.checkpoint_kind
        );

        // Rows of 32 values (down_proj) fill no 256- or 128-block: Q8_0, listed.
        let needs_fallback = ty.block_size() > 32;
        let fb: Vec<&str> = rep.fallbacks.iter().map(|f| f.tensor.as_str()).collect();
        if needs_fallback {
            assert_eq!(fb, ["blk.0.ffn_down.weight"], "{target:?} {ty}");
            assert_eq!(rep.fallbacks[0].used, GgmlType::Q8_0);
        } else {
            assert!(fb.is_empty(), "{target:?} {ty}: {fb:?}");
        }

        // Names, types, shapes and metadata as written.
        let f = GgufFile::open(&out).unwrap();
        let arch = f.get_str("general.architecture").unwrap();
        assert_eq!(arch, target.arch());
        let info = |n: &str| f.tensor(n).unwrap_or_else(|| panic!("{ty}: no {n}"));
        assert_eq!(info("blk.0.attn_q.weight").ty, ty);
        assert_eq!(info("blk.0.attn_q.weight").ne, vec![256, 256]);
        assert_eq!(info("blk.0.attn_k.weight").ne, vec![256, 64]);
        assert_eq!(info("blk.0.ffn_gate.weight").ne, vec![256, 32]);
        assert_eq!(info("blk.0.ffn_down.weight").ne, vec![32, 256]);
        assert_eq!(
            info("blk.0.ffn_down.weight").ty,
            if needs_fallback { GgmlType::Q8_0 } else { ty }
        );
        assert_eq!(info("token_embd.weight").ne, vec![256, 340]);
        assert!(
            f.tensor("output.weight").is_none(),
            "tied: no output.weight"
        );
        let has_scale = f.tensor("blk.0.attn_q.scale").is_some();
        assert_eq!(
            has_scale,
            target == Target::LlamaCpp && ty != GgmlType::I2_S,
            "{target:?} {ty}: .scale tensors"
        );
        assert_eq!(
            f.get(&format!("{arch}.embedding_length"))
                .and_then(|v| v.to_u64()),
            Some(256)
        );
        assert_eq!(
            f.get(&format!("{arch}.attention.head_count_kv"))
                .and_then(|v| v.to_u64()),
            Some(1)
        );
        assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "llama-bpe");
        assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 340);
        assert!(f.get_str("tokenizer.huggingface.json").is_ok());

        // tern's logits from the file against transformers' W1.58A8 logits.
        let g = GgufWeights::open(&out).unwrap();
        let ours = logits_of(&g, &toks);
        let d = max_abs_diff(&ours, &want);
        eprintln!("{target:?} {ty}: max |tern - hf W1.58A8| = {d:.3e}");
        assert!(d <= 1e-3, "{target:?} {ty}: logits differ by {d}");

        // gguf-py (or, for I2_S, which gguf-py lacks, an independent reader).
        if let Some(py) = &py {
            let o = oracle_json(py, &out);
            let reader = o["reader"].as_str().unwrap();
            assert_eq!(
                reader == "gguf-py",
                ty != GgmlType::I2_S,
                "{ty}: read by {reader}"
            );
            assert_eq!(o["kv"]["tokenizer.ggml.tokens"]["array_len"], 340);
            assert_eq!(o["kv"]["tokenizer.ggml.merges"]["array_len"], 80);
            assert_eq!(o["kv"]["tokenizer.ggml.bos_token_id"], 336);
            assert_eq!(o["kv"]["tokenizer.ggml.eos_token_id"], 337);
            let projs = o["proj"].as_object().unwrap();
            assert_eq!(projs.len(), 7);
            for (name, p) in projs {
                assert!(p["codes_equal"].as_bool().unwrap(), "{ty} {name}: {p}");
                let (sf, so) = (
                    p["scale_file"].as_f64().unwrap(),
                    p["scale_oracle"].as_f64().unwrap(),
                );
                // The f32 scale is tern's absmean (f64 sum) against torch's f32
                // mean: equal up to the last bits; a dense bitnet.cpp weight
                // holds it rounded to f16.
                let tol = if target == Target::BitnetCpp && p["type"] != 36 {
                    so * 2f64.powi(-11)
                } else {
                    so * 1e-6
                };
                assert!((sf - so).abs() <= tol, "{ty} {name}: scale {sf} vs {so}");
                let diff = p["max_abs_diff"].as_f64().unwrap();
                assert!(diff <= tol, "{ty} {name}: |deq*scale - hf| = {diff}");
            }
        }
    }
}

#[test]
fn f16_embedding_is_close_and_default_types_follow_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("default.gguf");
    let mut o = ConvertOptions::new(Input::Dir(fixture(TINY)), &out);
    let rep = convert(&o).unwrap();
    assert_eq!(rep.proj_type, GgmlType::TQ2_0);
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.tensor("token_embd.weight").unwrap().ty, GgmlType::F16);
    // An f16 embedding (also the tied head) moves the logits a little only.
    let ours = logits_of(&GgufWeights::open(&out).unwrap(), &tiny_tokens());
    let d = max_abs_diff(&ours, &tiny_oracle());
    assert!(d < 0.05, "f16 embedding moved logits by {d}");
    // relu² for llama.cpp: warned; for bitnet.cpp (relu² by design): not.
    assert!(
        rep.warnings.iter().any(|w| w.contains("SiLU")),
        "{:?}",
        rep.warnings
    );
    o.target = Target::BitnetCpp;
    o.out = dir.path().join("bitnet.gguf");
    let rep = convert(&o).unwrap();
    assert_eq!(rep.proj_type, GgmlType::I2_S);
    assert!(!rep.warnings.iter().any(|w| w.contains("SiLU")));
    // TQ types do not exist in the fork: refused before anything is written.
    o.proj_type = Some(GgmlType::TQ2_0);
    o.out = dir.path().join("no.gguf");
    let e = convert(&o).unwrap_err().to_string();
    assert!(e.contains("bitnetcpp") && e.contains("i2_s"), "{e}");
    assert!(!o.out.exists());
}

/// The projection codes (as f32) and the scale of every projection of a
/// llama.cpp-target F32 file.
fn f32_projections(path: &Path) -> Vec<(String, Vec<u8>, f32)> {
    let f = GgufFile::open(path).unwrap();
    let mut out = Vec::new();
    for t in f.tensors() {
        if let Some(stem) = t.name.strip_suffix(".weight") {
            if let Some(s) = f.tensor(&format!("{stem}.scale")) {
                assert_eq!(t.ty, GgmlType::F32);
                let b = f.tensor_data(s);
                out.push((
                    t.name.clone(),
                    f.tensor_data(t).to_vec(),
                    f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                ));
            }
        }
    }
    out
}

#[test]
fn packed_checkpoints_in_both_conventions_convert_like_their_master() {
    let dir = tempfile::tempdir().unwrap();
    let conv = |name: &str| -> (ConvertReport, PathBuf) {
        let out = dir.path().join(format!("{name}.gguf"));
        let rep = convert(&opts(
            &fixture(&format!("bitnet/{name}")),
            &out,
            GgmlType::F32,
            Target::LlamaCpp,
            GgmlType::F32,
        ))
        .unwrap();
        (rep, out)
    };
    let (m_rep, master) = conv("relu2_gqa");
    assert!(m_rep.checkpoint_kind.starts_with("full precision"));
    let master = f32_projections(&master);
    assert_eq!(master.len(), 14);
    for name in ["relu2_gqa_packed_auto", "relu2_gqa_packed_bitlinear"] {
        let (rep, path) = conv(name);
        assert!(
            rep.checkpoint_kind.starts_with("pre-packed"),
            "{name}: {}",
            rep.checkpoint_kind
        );
        let got = f32_projections(&path);
        for ((mn, mc, ms), (gn, gc, gs)) in master.iter().zip(&got) {
            assert_eq!(mn, gn);
            assert!(mc == gc, "{name} {gn}: codes differ from the master's");
            // bitlinear stores 1/mean|W| and tern divides once more: the scale
            // may move by an ulp or two, never more.
            let rel = ((gs - ms) / ms).abs();
            assert!(rel <= 1e-6, "{name} {gn}: scale {gs} vs master {ms}");
        }
    }
}
