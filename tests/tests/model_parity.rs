//! The BitNet forward pass against transformers' BitNetForCausalLM with real
//! W1.58A8 quantization (fixtures from tests/fixtures/gen_bitnet_parity.py).

use tern_backend::Cpu;
use tern_io::npy;
use tern_model::export::write_gguf;
use tern_model::{GgufWeights, HfWeights, Model, WeightSource};
use tern_tensor::GgmlType;
use tern_tests::fixture;

const CONFIGS: [&str; 2] = ["relu2_gqa", "silu_mha_tied"];

fn tokens(name: &str) -> Vec<u32> {
    let a = npy::read(&fixture(&format!("bitnet/{name}.input_ids.npy"))).unwrap();
    a.data.iter().map(|&v| v as u32).collect()
}

fn oracle(name: &str, kind: &str) -> (Vec<usize>, Vec<f64>) {
    let a = npy::read(&fixture(&format!("bitnet/{name}.logits_{kind}.npy"))).unwrap();
    (a.shape, a.data)
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn logits_of(src: &dyn WeightSource, toks: &[u32]) -> Vec<f32> {
    let mut m = Model::load(Cpu::with_threads(2), src).unwrap();
    m.forward(toks, true).unwrap()
}

#[test]
fn hf_safetensors_logits_match_transformers_w158a8() {
    for name in CONFIGS {
        let src = HfWeights::open(&fixture(&format!("bitnet/{name}"))).unwrap();
        let toks = tokens(name);
        let ours = logits_of(&src, &toks);
        let (shape, quant) = oracle(name, "quant");
        assert_eq!(shape, vec![toks.len(), src.config().vocab_size]);
        let d = max_abs_diff(&ours, &quant);
        // Against the unquantized model the gap is large: the check has teeth.
        let (_, plain) = oracle(name, "plain");
        let d_plain = max_abs_diff(&ours, &plain);
        eprintln!("{name}: max |tern - hf W1.58A8| = {d:.3e}, vs unquantized {d_plain:.3}");
        assert!(d <= 1e-3, "{name}: max abs diff {d}");
        assert!(
            d_plain > 0.1,
            "{name}: suspiciously close to the unquantized model"
        );
    }
}

#[test]
fn packed_checkpoints_in_both_conventions_match_the_online_model() {
    let toks = tokens("relu2_gqa");
    let (_, quant) = oracle("relu2_gqa", "quant");
    let online = logits_of(
        &HfWeights::open(&fixture("bitnet/relu2_gqa")).unwrap(),
        &toks,
    );
    for dir in ["relu2_gqa_packed_auto", "relu2_gqa_packed_bitlinear"] {
        let src = HfWeights::open(&fixture(&format!("bitnet/{dir}"))).unwrap();
        let ours = logits_of(&src, &toks);
        let d = max_abs_diff(&ours, &quant);
        let d_online = ours
            .iter()
            .zip(&online)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("{dir}: vs hf {d:.3e}, vs online-quantized tern {d_online:.3e}");
        // Same codes; the stored scale differs from the online one only by float rounding.
        assert!(d <= 1e-3 && d_online <= 1e-4, "{dir}: {d} / {d_online}");
    }
    // Without a linear_class the scale has no meaning: a clear error.
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = fixture("bitnet/relu2_gqa_packed_auto");
    std::fs::copy(
        src_dir.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src_dir.join("config.json")).unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        cfg.replace("autobitlinear", "nonsense"),
    )
    .unwrap();
    let src = HfWeights::open(tmp.path()).unwrap();
    let e = Model::load(Cpu::with_threads(1), &src)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("linear_class") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn tern_written_gguf_gives_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    for name in CONFIGS {
        let src = HfWeights::open(&fixture(&format!("bitnet/{name}"))).unwrap();
        let toks = tokens(name);
        let (_, quant) = oracle(name, "quant");
        let reference = logits_of(&src, &toks);
        // Rows of 32..80 values fit only a per-element type; the packed
        // types are covered on a wider model below.
        let ty = GgmlType::F32;
        let path = dir.path().join(format!("{name}-{ty}.gguf"));
        write_gguf(&src, &path, ty, GgmlType::F32).unwrap();
        let g = GgufWeights::open(&path).unwrap();
        assert_eq!(g.config().hidden_act, src.config().hidden_act);
        let ours = logits_of(&g, &toks);
        let d = max_abs_diff(&ours, &quant);
        eprintln!("{name} via {ty} GGUF: max |diff| = {d:.3e}");
        assert!(d <= 1e-3, "{name} {ty}: {d}");
        assert_eq!(
            ours, reference,
            "{name} {ty}: GGUF differs from safetensors path"
        );
    }
}

#[test]
fn every_gguf_projection_type_reproduces_the_model_exactly() {
    // Rows of 256 and 512 values: every block type applies.
    let mut cfg = tern_model::BitNetConfig::zoo("125m").unwrap();
    cfg.hidden_size = 256;
    cfg.intermediate_size = 512;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 4;
    cfg.num_key_value_heads = Some(2);
    cfg.head_dim = Some(64);
    cfg.vocab_size = 300;
    cfg.hidden_act = tern_model::HiddenAct::Relu2;
    cfg.tie_word_embeddings = false;
    cfg.validate("test").unwrap();
    let src = tern_model::random::RandomWeights::new(cfg, 7);
    let toks: Vec<u32> = (0..12).map(|i| (i * 37 % 300) as u32).collect();
    let reference = logits_of(&src, &toks);
    let dir = tempfile::tempdir().unwrap();
    for ty in tern_model::export::PROJ_TYPES {
        let path = dir.path().join(format!("m-{ty}.gguf"));
        write_gguf(&src, &path, ty, GgmlType::F32).unwrap();
        let ours = logits_of(&GgufWeights::open(&path).unwrap(), &toks);
        assert_eq!(
            ours, reference,
            "{ty}: logits differ from the in-memory model"
        );
    }
    // An f16 embedding changes the numbers a little (an input rounded to f16
    // can move a per-token int8 code by one step), never a lot.
    let path = dir.path().join("m-f16.gguf");
    write_gguf(&src, &path, GgmlType::TQ2_0, GgmlType::F16).unwrap();
    let ours = logits_of(&GgufWeights::open(&path).unwrap(), &toks);
    let d = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d > 0.0 && d < 0.1, "f16 embedding moved logits by {d}");
}

#[test]
fn kv_cache_decode_matches_full_prefill() {
    let name = "relu2_gqa";
    let src = HfWeights::open(&fixture(&format!("bitnet/{name}"))).unwrap();
    let toks = tokens(name);
    let full = logits_of(&src, &toks);
    let mut m = Model::load(Cpu::with_threads(2), &src).unwrap();
    let split = 7;
    let mut inc = m.forward(&toks[..split], true).unwrap();
    for &t in &toks[split..] {
        inc.extend(m.forward(&[t], false).unwrap());
    }
    assert_eq!(inc.len(), full.len());
    let d = inc
        .iter()
        .zip(&full)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d <= 1e-4, "incremental decode differs by {d}");
    assert_eq!(m.cached_tokens(), toks.len());
}

#[test]
fn prompt_longer_than_context_is_an_error_not_a_panic() {
    let src = HfWeights::open(&fixture("bitnet/relu2_gqa")).unwrap();
    let mut m = Model::load(Cpu::with_threads(1), &src).unwrap();
    m.set_context(8).unwrap();
    let e = m.forward(&[1; 9], true).unwrap_err().to_string();
    assert!(e.contains("context"), "{e}");
    let e = m.forward(&[1000], true).unwrap_err().to_string();
    assert!(e.contains("vocabulary"), "{e}");
}

#[test]
fn missing_tensor_and_shape_mismatch_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = fixture("bitnet/relu2_gqa");
    let ck = tern_io::safetensors::Checkpoint::open(&src_dir).unwrap();
    // Drop one projection.
    let keep: Vec<_> = ck
        .tensors()
        .iter()
        .filter(|t| t.name != "model.layers.1.mlp.up_proj.weight")
        .map(|t| {
            (
                t.name.clone(),
                t.dtype,
                t.shape.clone(),
                ck.entry_data(t).to_vec(),
            )
        })
        .collect();
    std::fs::copy(src_dir.join("config.json"), dir.path().join("config.json")).unwrap();
    tern_io::safetensors::write_safetensors(dir.path().join("model.safetensors"), &keep, None)
        .unwrap();
    let src = HfWeights::open(dir.path()).unwrap();
    let e = Model::load(Cpu::with_threads(1), &src)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.layers.1.mlp.up_proj.weight"), "{e}");
    // A config that disagrees with the file.
    let cfg = std::fs::read_to_string(src_dir.join("config.json")).unwrap();
    let cfg = cfg.replace("\"intermediate_size\": 80", "\"intermediate_size\": 96");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    std::fs::copy(
        src_dir.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let src = HfWeights::open(dir.path()).unwrap();
    let e = Model::load(Cpu::with_threads(1), &src)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("gate_proj") && e.contains("[96, 48]"), "{e}");
}
