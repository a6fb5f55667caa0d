//! LoRA fine-tuning: the shared loop ([`crate::fit`]) over a [`Trainer`],
//! with PEFT / llama.cpp adapter output and LoRA checkpoints (the adapter as
//! PEFT, its AdamW moments as safetensors).

use crate::adapter::{Adapter, LoraError};
use crate::data::{Batch, Dataset};
use crate::fit::{fit, io_err, Batching, FitOptions, Train};
use crate::io::{load_peft, save_gguf, save_peft};
use crate::schedule::{PretrainSchedule, Schedule, ScheduleKind};
use crate::train::{OptimizerState, StepStats, Trainer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tern_backend::{AdamW, Backend};
use tern_io::safetensors::{write_safetensors, Checkpoint, Dtype};
use tern_model::model::ActQuant;
use tern_model::{BitNetConfig, Model, Proj};

pub use crate::fit::{
    evaluate, latest_checkpoint, FitReport as FinetuneReport, LoopState, MetricLine,
    TrainError as FinetuneError,
};

/// Warmup length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Warmup {
    Steps(u64),
    Ratio(f64),
}

/// Everything the loop needs besides the model, the data and the adapter.
#[derive(Clone, Debug)]
pub struct FinetuneOptions {
    pub learning_rate: f32,
    pub schedule: ScheduleKind,
    pub warmup: Warmup,
    /// Epochs to run (ignored when `max_steps` is set).
    pub epochs: usize,
    pub max_steps: Option<u64>,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub max_grad_norm: Option<f32>,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Save a checkpoint every this many optimizer steps (0: never).
    pub checkpoint_every: u64,
    pub checkpoint_dir: PathBuf,
    /// Where the final adapter goes: a folder (PEFT) or a `.gguf` file.
    pub output_adapter: PathBuf,
    /// Base model name recorded in PEFT's adapter_config.json.
    pub base_model: String,
    /// For a `.gguf` output: what llama.cpp multiplies after the LoRA branch
    /// on the base this adapter is for ([`crate::io::PostScales`]).
    pub llamacpp_post_scales: crate::io::PostScales,
    pub metrics: PathBuf,
    pub loss_curve: PathBuf,
    pub seed: u64,
    pub act_quant: ActQuant,
    pub progress: bool,
}

fn fingerprint(o: &FinetuneOptions, ad: &Adapter) -> String {
    format!(
        "lr={} sched={:?} warmup={:?} batch={} accum={} clip={:?} betas={},{} eps={} wd={} seed={} \
         rank={} alpha={} dropout={} targets={:?} act={:?}",
        o.learning_rate,
        o.schedule,
        o.warmup,
        o.batch_size,
        o.grad_accum,
        o.max_grad_norm,
        o.beta1,
        o.beta2,
        o.eps,
        o.weight_decay,
        o.seed,
        ad.cfg.rank,
        ad.cfg.alpha,
        ad.cfg.dropout,
        ad.cfg.targets,
        o.act_quant
    )
}

/// Run (or, with `resume`, continue) a fine-tuning job. `adapter` is the
/// starting adapter (when resuming, the checkpoint's values replace it).
pub fn finetune<B: Backend>(
    model: &Model<B>,
    data: &Dataset,
    adapter: &Adapter,
    opts: &FinetuneOptions,
    resume: Option<&Path>,
) -> Result<FinetuneReport, FinetuneError> {
    let per_step = opts.batch_size * opts.grad_accum;
    let total = crate::fit::total_steps(
        data.train_len(),
        per_step,
        opts.epochs,
        opts.max_steps,
        Batching::Epochs,
    );
    let warmup = match opts.warmup {
        Warmup::Steps(n) => n,
        Warmup::Ratio(r) => (r * total as f64).ceil() as u64,
    };
    let schedule = PretrainSchedule::Standard {
        schedule: Schedule {
            kind: opts.schedule,
            base_lr: opts.learning_rate,
            warmup,
            total,
        },
        weight_decay: opts.weight_decay,
    };
    let mut run = LoraRun {
        trainer: Trainer::new(model, adapter, opts.act_quant)?,
        base: &opts.base_model,
    };
    let fit_opts = FitOptions {
        schedule,
        total_steps: total,
        batch_size: opts.batch_size,
        grad_accum: opts.grad_accum,
        batching: Batching::Epochs,
        max_grad_norm: opts.max_grad_norm,
        beta1: opts.beta1,
        beta2: opts.beta2,
        eps: opts.eps,
        checkpoint_every: opts.checkpoint_every,
        checkpoint_dir: opts.checkpoint_dir.clone(),
        metrics: Some(opts.metrics.clone()),
        loss_curve: Some(opts.loss_curve.clone()),
        title: "tern LoRA fine-tuning loss".into(),
        fingerprint: fingerprint(opts, adapter),
        seed: opts.seed,
        progress: opts.progress,
    };
    let report = fit(&mut run, data, &fit_opts, resume)?;
    let ad = run.trainer.adapter()?;
    save_adapter(
        &ad,
        &opts.output_adapter,
        &opts.base_model,
        &opts.llamacpp_post_scales,
    )?;
    Ok(report)
}

/// A LoRA trainer as the loop sees it.
struct LoraRun<'a, 'm, B: Backend> {
    trainer: Trainer<'m, B>,
    /// Base model name for the checkpoints' PEFT config.
    base: &'a str,
}

impl<B: Backend> Train for LoraRun<'_, '_, B> {
    fn model_config(&self) -> &BitNetConfig {
        &self.trainer.model().cfg
    }

    fn micro_batch(
        &mut self,
        b: &Batch,
        grad_scale: Option<f32>,
    ) -> Result<StepStats, FinetuneError> {
        let t = &mut self.trainer;
        Ok(t.forward_backward(&b.tokens, &b.targets, b.batch, b.seq, grad_scale)?)
    }

    fn gradient_norm(&mut self, clip: Option<f32>) -> Result<f32, FinetuneError> {
        Ok(match clip {
            Some(m) => self.trainer.clip_grad_norm(m)?,
            None => self.trainer.grad_norm()?,
        })
    }

    fn update(&mut self, hp: AdamW) {
        let t = &mut self.trainer;
        t.optimizer_step(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay);
    }

    fn optimizer_steps(&self) -> u32 {
        self.trainer.steps()
    }

    /// `adapter/` (PEFT) and `optimizer.safetensors` (the moments).
    fn save_state(&self, dir: &Path) -> Result<(), FinetuneError> {
        let ad = self.trainer.adapter()?;
        save_peft(&ad, &dir.join("adapter"), self.base)?;
        let os = self.trainer.optimizer_state()?;
        let mut tensors = Vec::new();
        for (kind, map) in [("m", &os.m), ("v", &os.v)] {
            for (&(l, p), (a, b)) in map.iter() {
                for (ab, v) in [("A", a), ("B", b)] {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let name = moment_name(kind, l, p, ab);
                    tensors.push((name, Dtype::F32, vec![v.len()], bytes));
                }
            }
        }
        let opt = dir.join("optimizer.safetensors");
        write_safetensors(&opt, &tensors, None).map_err(|e| io_err(&opt, e.kind))?;
        Ok(())
    }

    fn load_state(&mut self, dir: &Path, steps: u32) -> Result<(), FinetuneError> {
        let ad = load_peft(&dir.join("adapter"), self.model_config())?;
        let opt = dir.join("optimizer.safetensors");
        let ck = Checkpoint::open(&opt).map_err(|e| io_err(&opt, e.kind))?;
        let (mut m, mut v) = (BTreeMap::new(), BTreeMap::new());
        for &(l, p) in ad.tensors.keys() {
            let read = |kind: &str, ab: &str| -> Result<Vec<f32>, FinetuneError> {
                let name = moment_name(kind, l, p, ab);
                ck.to_f32(&name).map_err(|e| io_err(&opt, e.kind))
            };
            m.insert((l, p), (read("m", "A")?, read("m", "B")?));
            v.insert((l, p), (read("v", "A")?, read("v", "B")?));
        }
        self.trainer.load_adapter(&ad)?;
        let os = OptimizerState { step: steps, m, v };
        Ok(self.trainer.load_optimizer_state(&os)?)
    }

    fn rng_state(&self) -> (u64, u64) {
        self.trainer.dropout_state()
    }

    fn set_rng_state(&mut self, seed: u64, calls: u64) {
        self.trainer.set_dropout_state(seed, calls);
    }
}

/// Save as PEFT (a folder) or as a llama.cpp adapter (`.gguf`, with the
/// base's post-LoRA factors divided out: see [`crate::io::PostScales`]).
pub fn save_adapter(
    ad: &Adapter,
    out: &Path,
    base: &str,
    post_scales: &crate::io::PostScales,
) -> Result<(), FinetuneError> {
    if out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        save_gguf(ad, out, "bitnet", post_scales)?;
    } else {
        save_peft(ad, out, base)?;
    }
    Ok(())
}

fn moment_name(kind: &str, l: usize, p: Proj, ab: &str) -> String {
    format!("{kind}.layers.{l}.{}.{ab}", p.hf_name())
}

/// Parse `--lora-modules`.
pub fn parse_modules(s: &str) -> Result<Vec<Proj>, LoraError> {
    crate::adapter::LoraConfig::parse_targets(s)
}
