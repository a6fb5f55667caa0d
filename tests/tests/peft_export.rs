//! tern's PEFT adapter export loads in peft and computes there what tern
//! computes: an adapter written by `tern_lora::io::save_peft` (B non-zero),
//! applied by `tests/interop/peft_load.py` with `PeftModel.from_pretrained`
//! on transformers' BitNet with real W1.58A8 quantization, against tern's
//! `attach` + `Model::forward` on the same base.
//!
//! The oracle is the torch venv `target/torchenv` (tests/requirements-torch.txt,
//! created by `.ci/run`), found by `tern_tests::torch_python`: without it the
//! test prints "SKIPPED: ..." and returns, and fails under `CI=true`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::process::Command;
use tern_backend::Cpu;
use tern_io::npy;
use tern_lora::{attach, Adapter, LoraConfig};
use tern_model::{HfWeights, Model, Proj, WeightSource};
use tern_tests::{fixture, torch_python, workspace_root};

/// Bound on max |logit diff|: the base forward of both runtimes agrees to
/// about this (tests/model_parity.rs), and the LoRA branch adds two small f32
/// matmuls.
const BOUND: f64 = 1e-3;

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn peft_loads_terns_adapter_and_matches_its_logits() {
    let Some(python) = torch_python() else {
        return;
    };
    let model_dir = fixture("bitnet/relu2_gqa");
    let src = HfWeights::open(&model_dir).unwrap();
    let cfg = src.config().clone();

    // Rank 6, scaling 2; B seeded and non-zero (PEFT's init B = 0 would make
    // the adapter a no-op).
    let lora = LoraConfig {
        rank: 6,
        alpha: 12.0,
        dropout: 0.0,
        targets: Proj::ALL.to_vec(),
    };
    let mut ad = Adapter::init(&cfg, lora, 4242).unwrap();
    let mut rng = StdRng::seed_from_u64(4243);
    for (_, b) in ad.tensors.values_mut() {
        for x in b.iter_mut() {
            *x = rng.random_range(-0.1f32..0.1);
        }
    }
    assert_eq!(ad.tensors.len(), 7 * cfg.num_hidden_layers);

    let tmp = tempfile::tempdir().unwrap();
    let adapter_dir = tmp.path().join("adapter");
    tern_lora::io::save_peft(&ad, &adapter_dir, &model_dir.to_string_lossy()).unwrap();
    // tern runs the folder it wrote, as peft does.
    let loaded = tern_lora::io::load_peft(&adapter_dir, &cfg).unwrap();
    assert_eq!(loaded, ad, "save_peft / load_peft round trip");

    let toks: Vec<u32> = npy::read(&fixture("bitnet/relu2_gqa.input_ids.npy"))
        .unwrap()
        .data
        .iter()
        .map(|&v| v as u32)
        .collect();
    let mut model = Model::load(Cpu::with_threads(2), &src).unwrap();
    let plain = model.forward(&toks, true).unwrap();
    let mut model = Model::load(Cpu::with_threads(2), &src).unwrap();
    attach(&mut model, &loaded).unwrap();
    let ours = model.forward(&toks, true).unwrap();

    let out = tmp.path().join("peft.npy");
    let ids: Vec<String> = toks.iter().map(u32::to_string).collect();
    let res = Command::new(&python)
        .arg(workspace_root().join("tests/interop/peft_load.py"))
        .arg("--model")
        .arg(&model_dir)
        .arg("--adapter")
        .arg(&adapter_dir)
        .arg("--tokens")
        .arg(ids.join(","))
        .arg("--out")
        .arg(&out)
        .env("TORCHDYNAMO_DISABLE", "1")
        .output()
        .expect("spawn the torch python");
    assert!(
        res.status.success(),
        "peft_load.py failed:\n{}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&res.stdout));
    let theirs = npy::read(&out).unwrap();
    assert_eq!(theirs.shape, vec![toks.len(), cfg.vocab_size]);

    let d = max_abs_diff(&ours, &theirs.data);
    let plain64: Vec<f64> = plain.iter().map(|&x| x as f64).collect();
    let effect = max_abs_diff(&ours, &plain64);
    let peft_effect = max_abs_diff(&plain, &theirs.data);
    eprintln!(
        "max |tern --lora - peft| = {d:.3e} (bound {BOUND:.0e}); the adapter moves tern's \
         logits by {effect:.3}, peft's are {peft_effect:.3} from tern's base"
    );
    assert!(d <= BOUND, "tern and peft differ by {d:.3e} > {BOUND:.0e}");
    // The check has teeth: the adapter moves the logits far past the bound,
    // so an ignored, transposed or mis-scaled adapter on either side fails.
    assert!(
        effect > 100.0 * BOUND && peft_effect > 100.0 * BOUND,
        "adapter effect {effect:.3e} / {peft_effect:.3e} too small to test anything"
    );
}
