//! The training loop both `tern finetune` (LoRA) and `tern pretrain` (QAT)
//! run: steps over a [`Dataset`], gradient accumulation, clipping, the
//! learning-rate / weight-decay schedule, a stop on a non-finite loss or
//! gradient norm, validation, metrics (JSONL + SVG loss curve), progress,
//! atomic checkpoints and bit-exact resume. What is trained comes in through
//! [`Train`].

use crate::adapter::LoraError;
use crate::data::{Batch, Dataset};
use crate::io::AdapterFileError;
use crate::pretrain::PretrainError;
use crate::schedule::PretrainSchedule;
use crate::train::StepStats;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tern_backend::AdamW;
use tern_model::BitNetConfig;

/// What the loop needs from a trainer.
pub trait Train {
    /// The model's config.
    fn model_config(&self) -> &BitNetConfig;
    /// Forward, loss and (when `grad_scale` is given) backward of one
    /// micro-batch; gradients accumulate `grad_scale · d(loss_sum)`.
    fn micro_batch(&mut self, b: &Batch, grad_scale: Option<f32>) -> Result<StepStats, TrainError>;
    /// The global gradient norm, after scaling the gradients down to at most
    /// `clip` when given (the norm returned is the one before clipping).
    fn gradient_norm(&mut self, clip: Option<f32>) -> Result<f32, TrainError>;
    /// One AdamW update with `hp` (its `step` is the trainer's own count).
    fn update(&mut self, hp: AdamW);
    /// Optimizer steps taken.
    fn optimizer_steps(&self) -> u32;
    /// Write what a resume needs besides the loop's own state into `dir`.
    fn save_state(&self, dir: &Path) -> Result<(), TrainError>;
    /// Read what [`Train::save_state`] wrote, `steps` optimizer steps in.
    fn load_state(&mut self, dir: &Path, steps: u32) -> Result<(), TrainError>;
    /// `(seed, calls)` of the trainer's own random stream (LoRA dropout).
    fn rng_state(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Restore [`Train::rng_state`].
    fn set_rng_state(&mut self, _seed: u64, _calls: u64) {}
}

/// Problems of the loop (data and IO problems name their file).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    Pretrain(#[from] PretrainError),
    #[error(transparent)]
    File(#[from] AdapterFileError),
    #[error(transparent)]
    Backend(#[from] tern_backend::BackendError),
    #[error("{path}: {what}")]
    Io { path: PathBuf, what: String },
    #[error(
        "training stopped at step {step}: the {what} became {value} (non-finite){}",
        last_checkpoint.as_ref().map(|p| format!("; the last good checkpoint is {}", p.display())).unwrap_or_else(|| "; no checkpoint was saved yet".into())
    )]
    NonFinite {
        step: u64,
        /// "loss" or "gradient norm".
        what: &'static str,
        value: f64,
        last_checkpoint: Option<PathBuf>,
    },
    #[error("{0}")]
    Options(String),
}

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        what: e.to_string(),
    }
}

/// How the loop walks the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// Steps stay inside an epoch (its last step may be short); validation
    /// after every epoch. Fine-tuning.
    Epochs,
    /// One stream of examples: a step that reaches the end of an epoch
    /// continues into the next one's order. Pretraining.
    Stream,
}

/// How to run [`fit`].
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// Learning rate and weight decay per optimizer step (built for
    /// [`FitOptions::total_steps`]).
    pub schedule: PretrainSchedule,
    /// Optimizer steps to take (see [`total_steps`]).
    pub total_steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub batching: Batching,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f32>,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Save a checkpoint every this many optimizer steps (0: never).
    pub checkpoint_every: u64,
    pub checkpoint_dir: PathBuf,
    /// `metrics.jsonl` and the SVG loss curve (`None`: not written).
    pub metrics: Option<PathBuf>,
    pub loss_curve: Option<PathBuf>,
    /// Title of the loss curve.
    pub title: String,
    /// Options that must not change across a resume.
    pub fingerprint: String,
    /// The trainer's initial random stream seed (LoRA dropout).
    pub seed: u64,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Optimizer steps for `epochs` passes over `train_len` examples at
/// `per_step` examples a step, or `max_steps` when given.
pub fn total_steps(
    train_len: usize,
    per_step: usize,
    epochs: usize,
    max_steps: Option<u64>,
    batching: Batching,
) -> u64 {
    let per_step = per_step.max(1) as u64;
    max_steps.unwrap_or(match batching {
        Batching::Epochs => (train_len as u64).div_ceil(per_step) * epochs.max(1) as u64,
        Batching::Stream => (train_len as u64 * epochs as u64).div_ceil(per_step),
    })
}

/// Where the loop stands: enough to continue bit-exactly.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoopState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Epoch of the next example, and its position in that epoch's order.
    pub epoch: usize,
    pub pos: usize,
    #[serde(default)]
    pub dropout_seed: u64,
    #[serde(default)]
    pub dropout_calls: u64,
    pub total_steps: u64,
    /// Options that must not change across a resume.
    pub fingerprint: String,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricLine {
    /// "train" or "eval".
    pub kind: String,
    pub step: u64,
    pub epoch: usize,
    pub loss: f64,
    #[serde(default)]
    pub lr: f32,
    #[serde(default)]
    pub grad_norm: f32,
    #[serde(default)]
    pub tokens: usize,
    #[serde(default)]
    pub tokens_per_s: f64,
    #[serde(default)]
    pub perplexity: Option<f64>,
}

impl MetricLine {
    /// A validation result: mean loss per target token and its perplexity.
    fn eval(step: u64, epoch: usize, loss: f64, tokens: usize) -> Self {
        MetricLine {
            kind: "eval".into(),
            step,
            epoch,
            loss,
            lr: 0.0,
            grad_norm: 0.0,
            tokens,
            tokens_per_s: 0.0,
            perplexity: Some(loss.exp()),
        }
    }
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct FitReport {
    /// Optimizer steps taken in all (a resumed run counts the earlier ones).
    pub steps: u64,
    /// Target tokens trained on in this run.
    pub train_tokens: u64,
    pub seconds: f64,
    /// Mean loss of this run's first step.
    pub first_loss: f64,
    /// Mean loss of the last step.
    pub final_loss: f64,
    /// Mean loss over the last (up to) 10 steps.
    pub recent_loss: f64,
    /// Validation loss before any training (fresh runs with a validation split).
    pub initial_validation: Option<f64>,
    /// Validation loss after each epoch: `(epoch, loss)`, epochs from 0.
    pub validation: Vec<(usize, f64)>,
}

/// The progress bar of a run of `total` steps (hidden when `show` is off).
fn progress_bar(show: bool, total: u64, at: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] step {pos}/{len} (eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_position(at);
    b
}

/// Run (or, with `resume`, continue from a checkpoint folder) `opts.total_steps`
/// optimizer steps of `t` on the training examples of `data`.
pub fn fit<T: Train>(
    t: &mut T,
    data: &Dataset,
    opts: &FitOptions,
    resume: Option<&Path>,
) -> Result<FitReport, TrainError> {
    if opts.batch_size == 0 || opts.grad_accum == 0 {
        return Err(TrainError::Options(
            "--batch-size and --gradient-accumulation-steps must be positive".into(),
        ));
    }
    if data.train_len() == 0 {
        return Err(TrainError::Options(format!(
            "{}: no training examples",
            data.path().display()
        )));
    }
    let max_pos = t.model_config().max_position_embeddings;
    if data.ctx() > max_pos {
        return Err(TrainError::Options(format!(
            "--ctx {} exceeds the model's max_position_embeddings ({max_pos})",
            data.ctx()
        )));
    }
    let total = opts.total_steps;
    let mut st = match resume {
        Some(dir) => {
            let st = read_state(dir)?;
            if st.fingerprint != opts.fingerprint {
                return Err(TrainError::Options(format!(
                    "{}: the checkpoint was made with other options ({}) than this run ({})",
                    dir.display(),
                    st.fingerprint,
                    opts.fingerprint
                )));
            }
            let steps = u32::try_from(st.step)
                .map_err(|_| io_err(&dir.join("state.json"), "step out of range"))?;
            t.load_state(dir, steps)?;
            st
        }
        None => LoopState {
            step: 0,
            epoch: 0,
            pos: 0,
            dropout_seed: opts.seed,
            dropout_calls: 0,
            total_steps: total,
            fingerprint: opts.fingerprint.clone(),
        },
    };
    st.total_steps = total;
    t.set_rng_state(st.dropout_seed, st.dropout_calls);
    if opts.checkpoint_every > 0 {
        let dir = &opts.checkpoint_dir;
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    let mut metrics = match &opts.metrics {
        Some(p) => Some(Metrics::open(p, st.step)?),
        None => None,
    };
    let mut last_ckpt = resume.map(Path::to_path_buf);
    let bar = progress_bar(opts.progress, total, st.step);

    let mut initial_validation = None;
    if st.step == 0 && data.validation_len() > 0 {
        let loss = evaluate(t, data, opts.batch_size)?;
        initial_validation = Some(loss);
        record(
            &mut metrics,
            MetricLine::eval(0, 0, loss, data.validation_tokens()),
        )?;
    }
    let per_step = opts.batch_size * opts.grad_accum;
    let started = Instant::now();
    let mut tokens_done = 0u64;
    let mut order = data.epoch_order(st.epoch);
    let (mut first_loss, mut final_loss) = (f64::NAN, f64::NAN);
    let mut recent = std::collections::VecDeque::with_capacity(10);
    let mut validation = Vec::new();
    let mut evaluated_at = None;
    while st.step < total {
        // Gather this step's examples.
        let step_t = Instant::now();
        let mut picks = Vec::with_capacity(per_step);
        let mut epoch_done = false;
        while picks.len() < per_step {
            if st.pos >= order.len() {
                match opts.batching {
                    Batching::Epochs => {
                        epoch_done = true;
                        break;
                    }
                    Batching::Stream => {
                        st.epoch += 1;
                        st.pos = 0;
                        order = data.epoch_order(st.epoch);
                    }
                }
            }
            picks.push(order[st.pos]);
            st.pos += 1;
        }
        if picks.is_empty() {
            // Epoch boundary with nothing left: evaluate and start the next.
            end_epoch(t, data, opts, &mut st, &mut metrics, &mut validation)?;
            evaluated_at = Some(st.step);
            order = data.epoch_order(st.epoch);
            continue;
        }
        let micro: Vec<Batch> = picks
            .chunks(opts.batch_size)
            .map(|c| data.batch(c))
            .collect();
        let n_targets: usize = micro.iter().map(Batch::n_targets).sum();
        let scale = 1.0 / n_targets.max(1) as f32;
        let mut loss_sum = 0.0;
        for b in &micro {
            loss_sum += t.micro_batch(b, Some(scale))?.loss_sum;
        }
        let loss = loss_sum / n_targets.max(1) as f64;
        let grad_norm = t.gradient_norm(opts.max_grad_norm)?;
        let bad = if !loss.is_finite() {
            Some(("loss", loss))
        } else if !grad_norm.is_finite() {
            Some(("gradient norm", grad_norm as f64))
        } else {
            None
        };
        if let Some((what, value)) = bad {
            bar.abandon();
            return Err(TrainError::NonFinite {
                step: st.step + 1,
                what,
                value,
                last_checkpoint: last_ckpt,
            });
        }
        let hp = opts.schedule.at(st.step);
        t.update(AdamW {
            lr: hp.lr,
            beta1: opts.beta1,
            beta2: opts.beta2,
            eps: opts.eps,
            weight_decay: hp.weight_decay,
            step: 0,
        });
        st.step += 1;
        st.dropout_calls = t.rng_state().1;
        if first_loss.is_nan() {
            first_loss = loss;
        }
        final_loss = loss;
        if recent.len() == 10 {
            recent.pop_front();
        }
        recent.push_back(loss);
        tokens_done += n_targets as u64;
        let tps = n_targets as f64 / step_t.elapsed().as_secs_f64().max(1e-9);
        record(
            &mut metrics,
            MetricLine {
                kind: "train".into(),
                step: st.step,
                epoch: st.epoch,
                loss,
                lr: hp.lr,
                grad_norm,
                tokens: n_targets,
                tokens_per_s: tps,
                perplexity: None,
            },
        )?;
        bar.set_position(st.step);
        bar.set_message(format!(
            "loss {loss:.4} lr {:.2e} {tps:.0} tok/s epoch {}",
            hp.lr, st.epoch
        ));
        if opts.batching == Batching::Epochs && (epoch_done || st.pos >= order.len()) {
            end_epoch(t, data, opts, &mut st, &mut metrics, &mut validation)?;
            evaluated_at = Some(st.step);
            order = data.epoch_order(st.epoch);
        }
        if opts.checkpoint_every > 0 && st.step % opts.checkpoint_every == 0 {
            let dir = opts
                .checkpoint_dir
                .join(format!("checkpoint-{:06}", st.step));
            save_checkpoint(t, &st, &dir)?;
            last_ckpt = Some(dir);
        }
    }
    bar.finish_and_clear();
    // A run that stopped mid-epoch still ends with a validation.
    if data.validation_len() > 0 && evaluated_at != Some(st.step) {
        let loss = evaluate(t, data, opts.batch_size)?;
        validation.push((st.epoch, loss));
        let m = MetricLine::eval(st.step, st.epoch, loss, data.validation_tokens());
        record(&mut metrics, m)?;
    }
    if let (Some(m), Some(svg)) = (&metrics, &opts.loss_curve) {
        m.write_svg(svg, &opts.title)?;
    }
    Ok(FitReport {
        steps: st.step,
        train_tokens: tokens_done,
        seconds: started.elapsed().as_secs_f64(),
        first_loss,
        final_loss,
        recent_loss: recent.iter().sum::<f64>() / recent.len().max(1) as f64,
        initial_validation,
        validation,
    })
}

/// Validation at the end of an epoch, then move to the next epoch.
fn end_epoch<T: Train>(
    t: &mut T,
    data: &Dataset,
    opts: &FitOptions,
    st: &mut LoopState,
    metrics: &mut Option<Metrics>,
    validation: &mut Vec<(usize, f64)>,
) -> Result<(), TrainError> {
    if data.validation_len() > 0 {
        let loss = evaluate(t, data, opts.batch_size)?;
        validation.push((st.epoch, loss));
        let m = MetricLine::eval(st.step, st.epoch, loss, data.validation_tokens());
        record(metrics, m)?;
    }
    st.epoch += 1;
    st.pos = 0;
    Ok(())
}

/// Append `m` to the metrics, when they are written.
fn record(metrics: &mut Option<Metrics>, m: MetricLine) -> Result<(), TrainError> {
    match metrics {
        Some(w) => w.push(m),
        None => Ok(()),
    }
}

/// Mean validation loss per target token.
pub fn evaluate<T: Train>(t: &mut T, data: &Dataset, batch_size: usize) -> Result<f64, TrainError> {
    let (mut sum, mut n) = (0.0, 0usize);
    for b in data.validation_batches(batch_size.max(1)) {
        let s = t.micro_batch(&b, None)?;
        sum += s.loss_sum;
        n += s.n_tokens;
    }
    Ok(sum / n.max(1) as f64)
}

fn read_state(dir: &Path) -> Result<LoopState, TrainError> {
    let sj = dir.join("state.json");
    let text = std::fs::read_to_string(&sj).map_err(|e| io_err(&sj, e))?;
    serde_json::from_str(&text).map_err(|e| io_err(&sj, e))
}

/// Write checkpoint folder `dir` atomically: build it beside, then rename
/// into place.
pub fn save_checkpoint<T: Train>(t: &T, st: &LoopState, dir: &Path) -> Result<(), TrainError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    let result = (|| {
        t.save_state(&tmp)?;
        let mut st = st.clone();
        st.step = t.optimizer_steps() as u64;
        let sj = tmp.join("state.json");
        let text = serde_json::to_string_pretty(&st).expect("plain JSON");
        tern_io::atomic::write_atomic(&sj, text.as_bytes()).map_err(|e| io_err(&sj, e))?;
        Ok::<(), TrainError>(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Replace an existing checkpoint of the same step only after the new one is complete.
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(dir, &old).map_err(|e| io_err(dir, e))?;
        std::fs::rename(&tmp, dir).map_err(|e| io_err(dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// The newest `checkpoint-*` folder in `dir`, if any.
pub fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, e.path()));
            }
        }
    }
    best.map(|(_, p)| p)
}

/// `metrics.jsonl`, appended line by line (flushed), truncated to the
/// resumed step on resume.
pub(crate) struct Metrics {
    path: PathBuf,
    lines: Vec<MetricLine>,
    file: std::fs::File,
}

impl Metrics {
    fn open(path: &Path, keep_up_to_step: u64) -> Result<Self, TrainError> {
        let mut lines = Vec::new();
        if keep_up_to_step > 0 {
            if let Ok(text) = std::fs::read_to_string(path) {
                for l in text.lines() {
                    if let Ok(m) = serde_json::from_str::<MetricLine>(l) {
                        if m.step <= keep_up_to_step {
                            lines.push(m);
                        }
                    }
                }
            }
        }
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(|e| io_err(d, e))?;
        }
        let mut text = String::new();
        for m in &lines {
            text.push_str(&serde_json::to_string(m).expect("plain JSON"));
            text.push('\n');
        }
        tern_io::atomic::write_atomic(path, text.as_bytes()).map_err(|e| io_err(path, e))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        Ok(Metrics {
            path: path.to_path_buf(),
            lines,
            file,
        })
    }

    fn push(&mut self, m: MetricLine) -> Result<(), TrainError> {
        let mut line = serde_json::to_string(&m).expect("plain JSON");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| io_err(&self.path, e))?;
        self.lines.push(m);
        Ok(())
    }

    /// Training and validation loss against the step, as SVG.
    fn write_svg(&self, path: &Path, title: &str) -> Result<(), TrainError> {
        let svg = crate::curve::loss_svg(&self.lines, title).map_err(|e| io_err(path, e))?;
        tern_io::atomic::write_atomic(path, svg.as_bytes()).map_err(|e| io_err(path, e))
    }
}
