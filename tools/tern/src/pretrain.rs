//! `tern pretrain`: train a BitNet b1.58 model from scratch (quantization-aware
//! training on the CPU) and write it as a ternary GGUF.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tern_backend::Backend;
use tern_io::gguf::Value;
use tern_lora::data::{DataOptions, Dataset, ValidationSplit};
use tern_lora::finetune::Warmup;
use tern_lora::fit::{fit, total_steps, Batching, FitOptions};
use tern_lora::pretrain::{LatentWeights, PretrainSchedule, Pretrainer, TwoStage};
use tern_lora::schedule::{Schedule, ScheduleKind};
use tern_model::export::{export, ExportOptions};
use tern_model::model::ActQuant;
use tern_model::tokenizer::{Tokenizer, HF_JSON_KEY};
use tern_model::BitNetConfig;
use tern_tensor::GgmlType;

use crate::backend::{BackendArgs, Job};
use crate::finetune::LoopArgs;

#[derive(clap::Args, Debug)]
pub struct PretrainArgs {
    /// Model shape: a zoo name (`125m`, `bitnet-b1.58-2b-4t`...) or a config.json.
    #[arg(long)]
    pub config: String,
    /// Training data: .txt, or .jsonl with `text` or chat `messages`.
    #[arg(long)]
    pub data: PathBuf,
    /// tokenizer.json (its vocabulary must fit the config's vocab_size).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Where to write the trained model (ternary GGUF).
    #[arg(long, default_value = "model.gguf")]
    pub out: PathBuf,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Sequence length in tokens (at most the config's max_position_embeddings).
    #[arg(long, default_value_t = 256, visible_alias = "max-seq-length")]
    pub ctx: usize,
    /// Peak learning rate (ternary models train well with rates around 1e-3 to 1e-2).
    #[arg(long, default_value_t = 3e-3, visible_alias = "lr")]
    pub learning_rate: f32,
    /// Learning-rate multiplier after the mid-training drop (two-stage only).
    #[arg(long, default_value_t = 0.3)]
    pub two_stage_drop: f32,
    /// AdamW weight decay on the projections and an untied head (two-stage:
    /// first stage only).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    /// AdamW beta1.
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f32,
    /// AdamW beta2.
    #[arg(long, default_value_t = 0.95)]
    pub adam_beta2: f32,
    /// Standard deviation of the normal initialization.
    #[arg(long, default_value_t = 0.02)]
    pub init_std: f32,
    /// Projection type in the GGUF: tq2_0 or tq1_0.
    #[arg(long, default_value = "tq2_0")]
    pub r#type: String,
    #[command(flatten)]
    pub train: LoopArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
}

fn load_config(spec: &str) -> Result<BitNetConfig> {
    let path = Path::new(spec);
    if path.extension().is_some_and(|e| e == "json") || path.is_file() {
        Ok(BitNetConfig::from_file(path)?)
    } else {
        Ok(BitNetConfig::zoo(spec)?)
    }
}

fn schedule(a: &PretrainArgs, total: u64) -> Result<PretrainSchedule> {
    let warmup = match a.train.warmup() {
        Warmup::Steps(n) => n,
        Warmup::Ratio(r) => (r * total as f64).ceil() as u64,
    };
    if a.train.lr_scheduler == "two-stage" {
        if !(a.two_stage_drop > 0.0 && a.two_stage_drop <= 1.0) {
            bail!("--two-stage-drop {} must be in (0, 1]", a.two_stage_drop);
        }
        return Ok(PretrainSchedule::TwoStage(TwoStage::new(
            a.learning_rate,
            warmup,
            total,
            a.two_stage_drop,
            a.weight_decay,
        )));
    }
    let kind: ScheduleKind = a
        .train
        .lr_scheduler
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--lr-scheduler: {e} (or two-stage)"))?;
    Ok(PretrainSchedule::Standard {
        schedule: Schedule {
            kind,
            base_lr: a.learning_rate,
            warmup,
            total,
        },
        weight_decay: a.weight_decay,
    })
}

/// GGUF tokenizer keys: llama.cpp's `tokenizer.ggml.*` when the converter
/// recognizes the tokenizer, always the Hugging Face JSON (what tern reads).
fn tokenizer_keys(path: &Path, tok: &Tokenizer, vocab: usize) -> Result<Vec<(String, Value)>> {
    if path.file_name().is_some_and(|n| n == "tokenizer.json") {
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Ok(meta) =
            tern_convert::vocab::tokenizer_metadata(dir, vocab, tok.bos_id(), tok.eos_id())
        {
            for w in &meta.warnings {
                eprintln!("tokenizer: {w}");
            }
            return Ok(meta.kv);
        }
    }
    let json = tok
        .to_json_string()
        .with_context(|| format!("serializing tokenizer {}", path.display()))?;
    Ok(vec![(HF_JSON_KEY.into(), Value::from(json))])
}

pub fn run(a: &PretrainArgs) -> Result<()> {
    let cfg = load_config(&a.config).with_context(|| format!("--config {}", a.config))?;
    let tok = Tokenizer::from_file(&a.tokenizer)
        .with_context(|| format!("--tokenizer {}", a.tokenizer.display()))?;
    if tok.vocab_size() > cfg.vocab_size {
        bail!(
            "--tokenizer {} has {} tokens but the config's vocab_size is {}",
            a.tokenizer.display(),
            tok.vocab_size(),
            cfg.vocab_size
        );
    }
    let proj_type = match a.r#type.to_ascii_lowercase().as_str() {
        "tq2_0" => GgmlType::TQ2_0,
        "tq1_0" => GgmlType::TQ1_0,
        other => bail!("--type {other}: expected tq2_0 or tq1_0"),
    };
    // Refuse before training if the shapes cannot be stored.
    for (what, n) in [
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
    ] {
        if n % proj_type.block_size() != 0 {
            bail!(
                "--config {}: {what} {n} is not a multiple of the {proj_type} block size {}",
                a.config,
                proj_type.block_size()
            );
        }
    }
    let data = Dataset::load(
        &a.data,
        &tok,
        &DataOptions {
            ctx: a.ctx,
            validation: ValidationSplit::None,
            seed: a.train.seed,
            ..DataOptions::default()
        },
    )?;
    eprintln!("data: {}", data.stats());
    let t = &a.train;
    let per_step = a.batch_size * t.grad_accum;
    let total = total_steps(
        data.train_len(),
        per_step,
        t.num_epochs,
        t.max_steps,
        Batching::Stream,
    );
    if total == 0 {
        bail!("nothing to train: --max-steps 0 or an empty --data");
    }
    a.backend.run(PretrainJob {
        a,
        cfg,
        tok,
        data,
        total,
        proj_type,
    })
}

/// What `tern pretrain` hands to the chosen backend.
struct PretrainJob<'a> {
    a: &'a PretrainArgs,
    cfg: BitNetConfig,
    tok: Tokenizer,
    data: Dataset,
    total: u64,
    proj_type: GgmlType,
}

impl Job for PretrainJob<'_> {
    type Out = ();
    fn run<B: Backend + 'static>(self, backend: B) -> Result<()> {
        train_on(&self, backend)
    }
}

fn train_on<B: Backend>(j: &PretrainJob<'_>, backend: B) -> Result<()> {
    let (a, cfg, tok, data, total, proj_type) =
        (j.a, &j.cfg, &j.tok, &j.data, j.total, j.proj_type);
    eprintln!(
        "model: {} parameters ({} layers, hidden {}, vocab {}), {total} steps on {}",
        cfg.n_params(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        backend.name()
    );
    let t = &a.train;
    let init = LatentWeights::init(cfg, t.seed, a.init_std);
    let mut trainer = Pretrainer::new(backend, &init, ActQuant::PerTokenInt8)?;
    drop(init);
    let schedule = schedule(a, total)?;
    let opts = FitOptions {
        fingerprint: format!(
            "config={} lr={} sched={schedule:?} batch={} accum={} clip={:?} betas={},{} \
             seed={} std={} ctx={}",
            a.config,
            a.learning_rate,
            a.batch_size,
            t.grad_accum,
            t.clip(),
            a.adam_beta1,
            a.adam_beta2,
            t.seed,
            a.init_std,
            a.ctx
        ),
        schedule,
        total_steps: total,
        batch_size: a.batch_size,
        grad_accum: t.grad_accum,
        batching: Batching::Stream,
        max_grad_norm: t.clip(),
        beta1: a.adam_beta1,
        beta2: a.adam_beta2,
        eps: 1e-8,
        checkpoint_every: t.checkpoint_save_steps,
        checkpoint_dir: t.checkpoint_save_dir.clone(),
        metrics: t.metrics.clone(),
        loss_curve: t.loss_curve.clone(),
        title: "tern pretraining loss".into(),
        seed: t.seed,
        progress: !t.quiet,
    };
    let resume = t.resume()?;
    if let Some(r) = &resume {
        eprintln!("resuming from {}", r.display());
    }
    let report = fit(&mut trainer, data, &opts, resume.as_deref())?;
    eprintln!(
        "trained {} steps: loss {:.4} -> {:.4}, {} tokens in {:.1}s ({:.0} tok/s)",
        report.steps,
        report.first_loss,
        report.recent_loss,
        report.train_tokens,
        report.seconds,
        report.train_tokens as f64 / report.seconds.max(1e-9)
    );
    let weights = trainer.weights()?;
    let mut opts = ExportOptions::new(proj_type, GgmlType::F32);
    opts.name = Some("tern-pretrained".into());
    opts.metadata = tokenizer_keys(&a.tokenizer, tok, cfg.vocab_size)?;
    export(&weights, &a.out, &opts, &mut ())
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
