//! `tern finetune`: LoRA fine-tuning on the CPU or a GPU (`--backend wgpu`).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use tern_backend::Backend;
use tern_lora::data::{DataOptions, Dataset, ValidationSplit};
use tern_lora::finetune::{finetune, latest_checkpoint, FinetuneOptions, Warmup};
use tern_lora::schedule::ScheduleKind;
use tern_lora::{Adapter, LoraConfig};
use tern_model::model::ActQuant;
use tern_model::source::ModelSource;

use crate::backend::{BackendArgs, HeadArgs, Job};
use crate::run::load_adapter;

/// Training-loop flags shared by `tern finetune` and `tern pretrain` (same
/// names, same meaning; transformers' spellings accepted as aliases).
#[derive(clap::Args, Debug)]
pub struct LoopArgs {
    /// Passes over the training data (ignored with --max-steps).
    #[arg(
        long,
        default_value_t = 1,
        visible_alias = "num-train-epochs",
        alias = "epochs"
    )]
    pub num_epochs: usize,
    /// Stop after this many optimizer steps (overrides --num-epochs).
    #[arg(long, alias = "steps")]
    pub max_steps: Option<u64>,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(
        long,
        default_value_t = 1,
        visible_alias = "gradient-accumulation-steps"
    )]
    pub grad_accum: usize,
    /// Learning-rate schedule after warmup: constant, linear or cosine
    /// (pretrain also: two-stage).
    #[arg(long, default_value = "cosine")]
    pub lr_scheduler: String,
    /// Warmup as a fraction of the total steps.
    #[arg(long, default_value_t = 0.0, conflicts_with = "warmup_steps")]
    pub warmup_ratio: f64,
    /// Warmup in optimizer steps.
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// Save a checkpoint every N optimizer steps (0: never).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_save_steps: u64,
    /// Where checkpoints (and by default the fine-tuning metrics) go.
    #[arg(long, default_value = "checkpoints")]
    pub checkpoint_save_dir: PathBuf,
    /// Continue from a checkpoint folder (or the newest one in a --checkpoint-save-dir).
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
    /// Metrics as JSON lines (finetune default: CHECKPOINT_SAVE_DIR/metrics.jsonl;
    /// pretrain: none).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Loss curve as SVG (finetune default: CHECKPOINT_SAVE_DIR/loss.svg; pretrain:
    /// none). Needs metrics.
    #[arg(long)]
    pub loss_curve: Option<PathBuf>,
    /// Seed of the initialization, the data shuffle and (LoRA) the dropout masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl LoopArgs {
    /// The checkpoint to resume from: `--resume-from` itself, or the newest
    /// `checkpoint-*` in it.
    pub fn resume(&self) -> Result<Option<PathBuf>> {
        Ok(match &self.resume_from {
            Some(p) if p.join("state.json").exists() => Some(p.clone()),
            Some(p) => Some(latest_checkpoint(p).with_context(|| {
                format!(
                    "--resume-from {}: no checkpoint-* folder in it",
                    p.display()
                )
            })?),
            None => None,
        })
    }

    /// `--warmup-steps`, or `--warmup-ratio` of `total` (rounded up).
    pub fn warmup(&self) -> Warmup {
        match self.warmup_steps {
            Some(n) => Warmup::Steps(n),
            None => Warmup::Ratio(self.warmup_ratio),
        }
    }

    /// `--max-grad-norm`, `None` when 0 (off).
    pub fn clip(&self) -> Option<f32> {
        (self.max_grad_norm > 0.0).then_some(self.max_grad_norm)
    }
}

/// LoRA flags follow PEFT and llama.cpp's `llama-finetune-lora` where they
/// have one.
#[derive(clap::Args, Debug)]
pub struct FinetuneArgs {
    /// Base model: .gguf, Hugging Face folder, or random:NAME (random:NAME@SEED for another seed).
    #[arg(long, short = 'm')]
    pub model: String,
    /// Training data: .txt, or .jsonl with `text` or chat `messages`.
    #[arg(long)]
    pub data: PathBuf,
    /// tokenizer.json to use instead of the model's.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Where to write the adapter: a folder (PEFT) or a .gguf (llama.cpp --lora).
    #[arg(long, default_value = "adapter", visible_alias = "output-dir")]
    pub output_adapter: PathBuf,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// LoRA alpha: the branch is scaled by alpha / r.
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f32,
    /// Dropout on the LoRA branch's input.
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f32,
    /// Comma-separated: q,k,v,o,gate,up,down or all.
    #[arg(long, default_value = "all")]
    pub lora_modules: String,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4, visible_alias = "lr")]
    pub learning_rate: f32,
    /// Sequences per micro-batch (`--batch-size 1 --ctx 128` is one 128-token batch).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Sequence length in tokens (at most the model's max_position_embeddings).
    #[arg(long, default_value_t = 128, visible_alias = "max-seq-length")]
    pub ctx: usize,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// AdamW beta1.
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f32,
    /// AdamW beta2.
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f32,
    /// Train only on the assistant turns of chat data.
    #[arg(long)]
    pub assistant_loss_only: bool,
    /// A chat template: a Jinja string, a .jinja file, or a tokenizer_config.json.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// Fraction of examples held out for validation (0: none).
    #[arg(long, default_value_t = 0.1)]
    pub validation_split: f64,
    /// Keep file order instead of a seeded shuffle per epoch.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Start from this adapter (PEFT folder or adapter .gguf) instead of a fresh one.
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    #[command(flatten)]
    pub train: LoopArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub head: HeadArgs,
}

pub fn run(a: &FinetuneArgs) -> Result<()> {
    struct J<'a>(&'a FinetuneArgs);
    impl Job for J<'_> {
        type Out = ();
        fn run<B: Backend + 'static>(self, backend: B) -> Result<()> {
            run_on(self.0, backend)
        }
    }
    a.backend.run(J(a))
}

fn run_on<B: Backend>(a: &FinetuneArgs, backend: B) -> Result<()> {
    let src = ModelSource::open(&a.model).with_context(|| format!("loading model {}", a.model))?;
    let tok = src.tokenizer(a.tokenizer.as_deref())?;
    let model = a.head.load(backend, src.weights(), &a.model)?;
    let cfg = model.cfg.clone();
    if tok.vocab_size() > cfg.vocab_size {
        bail!(
            "the tokenizer has {} tokens but the model only {}: they do not belong together",
            tok.vocab_size(),
            cfg.vocab_size
        );
    }
    let validation = if a.validation_split > 0.0 {
        ValidationSplit::Fraction(a.validation_split)
    } else {
        ValidationSplit::None
    };
    let data = Dataset::load(
        &a.data,
        &tok,
        &DataOptions {
            ctx: a.ctx,
            chat_template: a.chat_template.clone(),
            assistant_loss_only: a.assistant_loss_only,
            validation,
            seed: a.train.seed,
            shuffle: !a.no_shuffle,
            add_bos: true,
        },
    )?;
    eprintln!("data: {}", data.stats());
    let adapter = match &a.init_adapter {
        Some(p) => {
            let mut ad = load_adapter(p, &cfg)
                .with_context(|| format!("loading --init-adapter {}", p.display()))?;
            ad.cfg.dropout = a.lora_dropout;
            ad
        }
        None => Adapter::init(
            &cfg,
            LoraConfig {
                rank: a.lora_rank,
                alpha: a.lora_alpha,
                dropout: a.lora_dropout,
                targets: LoraConfig::parse_targets(&a.lora_modules)?,
            },
            a.train.seed,
        )?,
    };
    let t = &a.train;
    let resume = t.resume()?;
    let opts = FinetuneOptions {
        learning_rate: a.learning_rate,
        schedule: t
            .lr_scheduler
            .parse::<ScheduleKind>()
            .map_err(|e| anyhow::anyhow!("--lr-scheduler: {e}"))?,
        warmup: t.warmup(),
        epochs: t.num_epochs,
        max_steps: t.max_steps,
        batch_size: a.batch_size,
        grad_accum: t.grad_accum,
        max_grad_norm: t.clip(),
        beta1: a.adam_beta1,
        beta2: a.adam_beta2,
        eps: 1e-8,
        weight_decay: a.weight_decay,
        checkpoint_every: t.checkpoint_save_steps,
        checkpoint_dir: t.checkpoint_save_dir.clone(),
        output_adapter: a.output_adapter.clone(),
        base_model: a.model.clone(),
        llamacpp_post_scales: crate::adapters::post_scales(&src)?,
        metrics: t
            .metrics
            .clone()
            .unwrap_or_else(|| t.checkpoint_save_dir.join("metrics.jsonl")),
        loss_curve: t
            .loss_curve
            .clone()
            .unwrap_or_else(|| t.checkpoint_save_dir.join("loss.svg")),
        seed: t.seed,
        act_quant: ActQuant::PerTokenInt8,
        progress: !t.quiet,
    };
    if let Some(r) = &resume {
        eprintln!("resuming from {}", r.display());
    }
    let rep = finetune(&model, &data, &adapter, &opts, resume.as_deref())?;
    eprintln!(
        "trained {} steps, {} tokens in {:.1} s ({:.1} tok/s); last loss {:.4}",
        rep.steps,
        rep.train_tokens,
        rep.seconds,
        rep.train_tokens as f64 / rep.seconds.max(1e-9),
        rep.final_loss
    );
    if let Some(loss) = rep.initial_validation {
        eprintln!(
            "before training: validation loss {loss:.4}, perplexity {:.2}",
            loss.exp()
        );
    }
    for (epoch, loss) in &rep.validation {
        eprintln!(
            "epoch {}: validation loss {loss:.4}, perplexity {:.2}",
            epoch + 1,
            loss.exp()
        );
    }
    eprintln!(
        "adapter: {}; metrics: {}; loss curve: {}",
        opts.output_adapter.display(),
        opts.metrics.display(),
        opts.loss_curve.display()
    );
    Ok(())
}
