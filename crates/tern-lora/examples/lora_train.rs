//! A short LoRA run through the training loop on a tiny random model.
//!
//! ```sh
//! cargo run --release -p tern-lora --example lora_train
//! ```
//! Writes a small text corpus, tokenizes it with the byte-level BPE test
//! fixture, trains an adapter on every projection for a few steps and saves
//! it as PEFT files, with the metrics and the loss curve beside it.

use tern_backend::Cpu;
use tern_lora::data::{DataOptions, Dataset, ValidationSplit};
use tern_lora::finetune::{finetune, FinetuneOptions, Warmup};
use tern_lora::schedule::ScheduleKind;
use tern_lora::{Adapter, LoraConfig};
use tern_model::model::ActQuant;
use tern_model::random::RandomWeights;
use tern_model::tokenizer::Tokenizer;
use tern_model::{BitNetConfig, Model, Proj};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let tok = Tokenizer::from_file(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tokenizer/bytelevel_bpe/tokenizer.json"),
    )?;
    let data_path = dir.path().join("data.txt");
    let text = "the river carries small stones down to the sea while birds circle above.\n";
    std::fs::write(&data_path, text.repeat(60))?;
    let data = Dataset::load(
        &data_path,
        &tok,
        &DataOptions {
            ctx: 32,
            validation: ValidationSplit::Fraction(0.1),
            ..DataOptions::default()
        },
    )?;
    println!("data: {}", data.stats());

    // A tiny random base whose vocabulary covers the tokenizer's.
    let cfg = BitNetConfig::from_json_str(
        "tiny",
        &format!(
            r#"{{"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": {},
                "hidden_act": "relu2", "max_position_embeddings": 64}}"#,
            tok.vocab_size()
        ),
    )?;
    let model = Model::load(Cpu::new(), &RandomWeights::new(cfg.clone(), 1))?;
    let lora = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.05,
        targets: Proj::ALL.to_vec(),
    };
    let adapter = Adapter::init(&cfg, lora, 0)?;
    let out = dir.path().join("adapter");
    let opts = FinetuneOptions {
        learning_rate: 3e-3,
        schedule: ScheduleKind::Cosine,
        warmup: Warmup::Ratio(0.1),
        epochs: 3,
        max_steps: None,
        batch_size: 4,
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        checkpoint_every: 0,
        checkpoint_dir: dir.path().join("checkpoints"),
        output_adapter: out.clone(),
        base_model: "random:tiny".into(),
        llamacpp_post_scales: Default::default(),
        metrics: dir.path().join("metrics.jsonl"),
        loss_curve: dir.path().join("loss.svg"),
        seed: 0,
        act_quant: ActQuant::PerTokenInt8,
        progress: false,
    };
    let rep = finetune(&model, &data, &adapter, &opts, None)?;
    println!(
        "{} steps, {} tokens in {:.1} s; validation loss {:.4} -> {:.4}",
        rep.steps,
        rep.train_tokens,
        rep.seconds,
        rep.initial_validation.unwrap_or(f64::NAN),
        rep.validation.last().map_or(f64::NAN, |v| v.1)
    );
    println!("adapter files: {:?}", std::fs::read_dir(&out)?.count());
    Ok(())
}
