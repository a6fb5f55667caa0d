//! The one training loop (`tern_lora::fit`) under both trainers: the
//! behaviours it now gives both (a stop on a non-finite loss, the context
//! check before training, a non-finite gradient norm reported as such), and
//! a pretraining checkpoint that resumes bit-exactly.

use std::path::{Path, PathBuf};
use tern_backend::{AdamW, Cpu};
use tern_lora::data::{Batch, DataOptions, Dataset, ValidationSplit};
use tern_lora::finetune::{finetune, FinetuneOptions, Warmup};
use tern_lora::fit::{fit, Batching, FitOptions, Train, TrainError};
use tern_lora::pretrain::{LatentWeights, PretrainSchedule, Pretrainer};
use tern_lora::schedule::{Schedule, ScheduleKind};
use tern_lora::{Adapter, LoraConfig, StepStats};
use tern_model::model::ActQuant;
use tern_model::random::RandomWeights;
use tern_model::tokenizer::Tokenizer;
use tern_model::{BitNetConfig, Model, Proj};

fn tokenizer() -> Tokenizer {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer/bytelevel_bpe/tokenizer.json");
    Tokenizer::from_file(&p).unwrap()
}

/// A tiny model over the fixture tokenizer's 340 ids.
fn config(max_pos: usize) -> BitNetConfig {
    BitNetConfig::from_json_str(
        "fit-test",
        &format!(
            r#"{{"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 340,
                "hidden_act": "relu2", "tie_word_embeddings": true,
                "max_position_embeddings": {max_pos}}}"#
        ),
    )
    .unwrap()
}

/// Sentences of our own, packed into `ctx`-token windows.
fn dataset(dir: &Path, ctx: usize) -> Dataset {
    let path = dir.join("data.txt");
    let line = "the river carries small stones down to the sea while birds circle above.\n";
    std::fs::write(&path, line.repeat(40)).unwrap();
    let opts = DataOptions {
        ctx,
        validation: ValidationSplit::None,
        ..DataOptions::default()
    };
    Dataset::load(&path, &tokenizer(), &opts).unwrap()
}

fn fit_options(lr: f32, steps: u64, dir: &Path) -> FitOptions {
    FitOptions {
        schedule: PretrainSchedule::Standard {
            schedule: Schedule {
                kind: ScheduleKind::Constant,
                base_lr: lr,
                warmup: 0,
                total: steps,
            },
            weight_decay: 0.0,
        },
        total_steps: steps,
        batch_size: 2,
        grad_accum: 1,
        batching: Batching::Stream,
        max_grad_norm: None,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        checkpoint_every: 0,
        checkpoint_dir: dir.join("ck"),
        metrics: None,
        loss_curve: None,
        title: "test".into(),
        fingerprint: "test".into(),
        seed: 0,
        progress: false,
    }
}

fn pretrainer(seed: u64) -> Pretrainer<Cpu> {
    let w = LatentWeights::init(&config(64), seed, 0.02);
    Pretrainer::new(Cpu::with_threads(2), &w, ActQuant::PerTokenInt8).unwrap()
}

#[test]
fn pretraining_with_an_absurd_learning_rate_stops_on_the_non_finite_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 16);
    let mut t = pretrainer(1);
    let err = fit(&mut t, &data, &fit_options(1e30, 30, dir.path()), None).unwrap_err();
    match &err {
        TrainError::NonFinite {
            what, step, value, ..
        } => {
            assert_eq!(*what, "loss", "{err}");
            assert!(*step < 30 && !value.is_finite(), "{err}");
        }
        other => panic!("expected a non-finite stop, got {other}"),
    }
    assert!(err.to_string().contains("the loss became"), "{err}");
}

/// A pretrainer whose gradients come out 1e30 times too large: the loss
/// stays finite, the gradient norm does not.
struct HugeGradients(Pretrainer<Cpu>);

impl Train for HugeGradients {
    fn model_config(&self) -> &BitNetConfig {
        self.0.model_config()
    }
    fn micro_batch(&mut self, b: &Batch, s: Option<f32>) -> Result<StepStats, TrainError> {
        self.0.micro_batch(b, s.map(|s| s * 1e30))
    }
    fn gradient_norm(&mut self, clip: Option<f32>) -> Result<f32, TrainError> {
        self.0.gradient_norm(clip)
    }
    fn update(&mut self, hp: AdamW) {
        self.0.update(hp)
    }
    fn optimizer_steps(&self) -> u32 {
        self.0.optimizer_steps()
    }
    fn save_state(&self, dir: &Path) -> Result<(), TrainError> {
        self.0.save_state(dir)
    }
    fn load_state(&mut self, dir: &Path, steps: u32) -> Result<(), TrainError> {
        self.0.load_state(dir, steps)
    }
}

#[test]
fn a_non_finite_gradient_norm_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 16);
    let mut t = HugeGradients(pretrainer(2));
    let err = fit(&mut t, &data, &fit_options(1e-3, 5, dir.path()), None).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            TrainError::NonFinite {
                what: "gradient norm",
                step: 1,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("the gradient norm became inf"), "{msg}");
}

#[test]
fn lora_refuses_a_context_beyond_max_position_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(16);
    let model = Model::load(Cpu::with_threads(2), &RandomWeights::new(cfg.clone(), 3)).unwrap();
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec![Proj::Q, Proj::V],
    };
    let adapter = Adapter::init(&cfg, lora, 0).unwrap();
    let data = dataset(dir.path(), 32);
    let out = dir.path().join("adapter");
    let opts = FinetuneOptions {
        learning_rate: 1e-3,
        schedule: ScheduleKind::Constant,
        warmup: Warmup::Steps(0),
        epochs: 1,
        max_steps: Some(2),
        batch_size: 1,
        grad_accum: 1,
        max_grad_norm: None,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        checkpoint_every: 0,
        checkpoint_dir: dir.path().join("ck"),
        output_adapter: out.clone(),
        base_model: "random".into(),
        llamacpp_post_scales: Default::default(),
        metrics: dir.path().join("metrics.jsonl"),
        loss_curve: dir.path().join("loss.svg"),
        seed: 0,
        act_quant: ActQuant::PerTokenInt8,
        progress: false,
    };
    let err = finetune(&model, &data, &adapter, &opts, None).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("32") && msg.contains("max_position_embeddings (16)"),
        "{msg}"
    );
    assert!(!out.exists() && !dir.path().join("metrics.jsonl").exists());
    // The trainer itself refuses such a batch too.
    let mut t = tern_lora::Trainer::new(&model, &adapter, ActQuant::PerTokenInt8).unwrap();
    let toks = vec![1u32; 32];
    let e = t
        .forward_backward(&toks, &toks, 1, 32, Some(1.0))
        .unwrap_err();
    assert!(e.to_string().contains("max_position_embeddings"), "{e}");
}

/// Everything in `dir` with its bytes, sorted by path.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p.strip_prefix(dir).unwrap().to_path_buf(), bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn pretraining_resumes_from_a_checkpoint_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 16);
    let mut opts = fit_options(3e-3, 6, dir.path());
    opts.checkpoint_every = 3;
    let mut whole = pretrainer(4);
    fit(&mut whole, &data, &opts, None).unwrap();
    let end = opts.checkpoint_dir.join("checkpoint-000006");
    let reference = files(&end);

    // A fresh trainer (other initial weights) resumed from step 3.
    let mut resumed = pretrainer(5);
    let mid = opts.checkpoint_dir.join("checkpoint-000003");
    std::fs::remove_dir_all(&end).unwrap();
    fit(&mut resumed, &data, &opts, Some(&mid)).unwrap();
    assert_eq!(files(&end), reference);
    assert_eq!(whole.weights().unwrap(), resumed.weights().unwrap());
}
