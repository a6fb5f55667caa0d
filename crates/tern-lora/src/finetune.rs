//! The fine-tuning loop: epochs or steps over a [`Dataset`], gradient
//! accumulation, clipping, LR schedule, metrics (JSONL + SVG loss curve),
//! atomic checkpoints, bit-exact resume, NaN detection, validation.

use crate::adapter::{Adapter, LoraError, ProjKey};
use crate::data::{Dataset, IGNORE};
use crate::io::{load_peft, save_gguf, save_peft, AdapterFileError};
use crate::schedule::{Schedule, ScheduleKind};
use crate::train::{OptimizerState, Trainer};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tern_backend::Backend;
use tern_io::safetensors::{write_safetensors, Checkpoint, Dtype};
use tern_model::model::ActQuant;
use tern_model::{Model, Proj};

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

/// Problems of the loop (data and IO problems name their file).
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    File(#[from] AdapterFileError),
    #[error("{path}: {what}")]
    Io { path: PathBuf, what: String },
    #[error(
        "training stopped at step {step}: the loss became {loss} (non-finite){}",
        last_checkpoint.as_ref().map(|p| format!("; the last good checkpoint is {}", p.display())).unwrap_or_else(|| "; no checkpoint was saved yet".into())
    )]
    NonFinite {
        step: u64,
        loss: f64,
        last_checkpoint: Option<PathBuf>,
    },
    #[error("{0}")]
    Options(String),
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> FinetuneError {
    FinetuneError::Io {
        path: path.to_path_buf(),
        what: e.to_string(),
    }
}

/// Where the loop stands: enough to continue bit-exactly.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoopState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Epoch of the next example, and its position in that epoch's order.
    pub epoch: usize,
    pub pos: usize,
    pub dropout_seed: u64,
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
pub struct FinetuneReport {
    pub steps: u64,
    pub train_tokens: u64,
    pub seconds: f64,
    pub final_loss: f64,
    /// Validation loss before any training (fresh runs with a validation split).
    pub initial_validation: Option<f64>,
    /// Validation loss after each epoch: `(epoch, loss)`, epochs from 0.
    pub validation: Vec<(usize, f64)>,
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
/// starting adapter (ignored when resuming: the checkpoint's is used).
pub fn finetune<B: Backend>(
    model: &Model<B>,
    data: &Dataset,
    adapter: &Adapter,
    opts: &FinetuneOptions,
    resume: Option<&Path>,
) -> Result<FinetuneReport, FinetuneError> {
    if opts.batch_size == 0 || opts.grad_accum == 0 {
        return Err(FinetuneError::Options(
            "--batch-size and --grad-accum must be positive".into(),
        ));
    }
    if data.train_len() == 0 {
        return Err(FinetuneError::Options(format!(
            "{}: no training examples",
            data.path().display()
        )));
    }
    let per_step = opts.batch_size * opts.grad_accum;
    let steps_per_epoch = data.train_len().div_ceil(per_step) as u64;
    let total = opts
        .max_steps
        .unwrap_or(steps_per_epoch * opts.epochs.max(1) as u64);
    let warmup = match opts.warmup {
        Warmup::Steps(n) => n,
        Warmup::Ratio(r) => (r * total as f64).ceil() as u64,
    };
    let schedule = Schedule {
        kind: opts.schedule,
        base_lr: opts.learning_rate,
        warmup,
        total,
    };
    let fp = fingerprint(opts, adapter);

    // Start or resume.
    let (start_adapter, opt_state, mut st) = match resume {
        Some(dir) => {
            let (ad, os, st) = load_checkpoint(dir, &model.cfg)?;
            if st.fingerprint != fp {
                return Err(FinetuneError::Options(format!(
                    "{}: the checkpoint was made with other options ({}) than this run ({fp})",
                    dir.display(),
                    st.fingerprint
                )));
            }
            (ad, Some(os), st)
        }
        None => (
            adapter.clone(),
            None,
            LoopState {
                step: 0,
                epoch: 0,
                pos: 0,
                dropout_seed: opts.seed,
                dropout_calls: 0,
                total_steps: total,
                fingerprint: fp.clone(),
            },
        ),
    };
    st.total_steps = total;
    let mut trainer = Trainer::new(model, &start_adapter, opts.act_quant)?;
    trainer.set_dropout_state(st.dropout_seed, st.dropout_calls);
    if let Some(os) = &opt_state {
        trainer.load_optimizer_state(os)?;
    }
    std::fs::create_dir_all(&opts.checkpoint_dir).map_err(|e| io_err(&opts.checkpoint_dir, e))?;
    let mut metrics = Metrics::open(&opts.metrics, st.step)?;
    let mut last_ckpt = resume.map(Path::to_path_buf);

    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] step {pos}/{len} (eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_position(st.step);
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    let mut initial_validation = None;
    if st.step == 0 && data.validation_len() > 0 {
        let loss = evaluate(&mut trainer, data, opts.batch_size)?;
        initial_validation = Some(loss);
        metrics.push(MetricLine::eval(0, 0, loss, data.validation_tokens()))?;
    }
    let started = Instant::now();
    let mut tokens_done = 0u64;
    let mut order = data.epoch_order(st.epoch);
    let mut final_loss = f64::NAN;
    let mut validation = Vec::new();
    while st.step < total {
        // Gather this step's examples (the epoch's last step may be short).
        let step_t = Instant::now();
        let mut picks = Vec::with_capacity(per_step);
        let mut epoch_done = false;
        while picks.len() < per_step {
            if st.pos >= order.len() {
                epoch_done = true;
                break;
            }
            picks.push(order[st.pos]);
            st.pos += 1;
        }
        if picks.is_empty() {
            // Epoch boundary with nothing left: evaluate and start the next.
            end_epoch(
                &mut trainer,
                data,
                opts,
                &mut st,
                &mut metrics,
                &mut validation,
            )?;
            order = data.epoch_order(st.epoch);
            continue;
        }
        let micro: Vec<_> = picks
            .chunks(opts.batch_size)
            .map(|c| data.batch(c))
            .collect();
        let n_targets: usize = micro.iter().map(|b| b.n_targets()).sum();
        let scale = 1.0 / n_targets.max(1) as f32;
        let mut loss_sum = 0.0;
        for b in &micro {
            let s = trainer.forward_backward(&b.tokens, &b.targets, b.batch, b.seq, Some(scale))?;
            loss_sum += s.loss_sum;
        }
        let loss = loss_sum / n_targets.max(1) as f64;
        let grad_norm = match opts.max_grad_norm {
            Some(m) => trainer.clip_grad_norm(m)?,
            None => trainer.grad_norm()?,
        };
        if !loss.is_finite() || !grad_norm.is_finite() {
            bar.abandon();
            return Err(FinetuneError::NonFinite {
                step: st.step + 1,
                loss: if loss.is_finite() {
                    grad_norm as f64
                } else {
                    loss
                },
                last_checkpoint: last_ckpt,
            });
        }
        let lr = schedule.lr(st.step);
        trainer.optimizer_step(lr, opts.beta1, opts.beta2, opts.eps, opts.weight_decay);
        st.step += 1;
        st.dropout_calls = trainer.dropout_state().1;
        final_loss = loss;
        let tokens: usize = micro
            .iter()
            .map(|b| {
                b.tokens
                    .iter()
                    .zip(&b.targets)
                    .filter(|(_, &t)| t != IGNORE)
                    .count()
            })
            .sum();
        tokens_done += tokens as u64;
        let tps = tokens as f64 / step_t.elapsed().as_secs_f64().max(1e-9);
        metrics.push(MetricLine {
            kind: "train".into(),
            step: st.step,
            epoch: st.epoch,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: tps,
            perplexity: None,
        })?;
        bar.set_position(st.step);
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
        if epoch_done || st.pos >= order.len() {
            end_epoch(
                &mut trainer,
                data,
                opts,
                &mut st,
                &mut metrics,
                &mut validation,
            )?;
            order = data.epoch_order(st.epoch);
        }
        if opts.checkpoint_every > 0 && st.step % opts.checkpoint_every == 0 {
            let dir = opts
                .checkpoint_dir
                .join(format!("checkpoint-{:06}", st.step));
            save_checkpoint(&trainer, &st, &dir, &opts.base_model)?;
            last_ckpt = Some(dir);
        }
    }
    bar.finish_and_clear();
    // A run that stopped mid-epoch (--max-steps) still ends with a validation.
    let evaluated_here = metrics
        .lines
        .last()
        .is_some_and(|m| m.kind == "eval" && m.step == st.step);
    if data.validation_len() > 0 && !evaluated_here {
        let loss = evaluate(&mut trainer, data, opts.batch_size)?;
        validation.push((st.epoch, loss));
        metrics.push(MetricLine::eval(
            st.step,
            st.epoch,
            loss,
            data.validation_tokens(),
        ))?;
    }
    let ad = trainer.adapter()?;
    save_adapter(
        &ad,
        &opts.output_adapter,
        &opts.base_model,
        &opts.llamacpp_post_scales,
    )?;
    metrics.write_svg(&opts.loss_curve)?;
    Ok(FinetuneReport {
        steps: st.step,
        train_tokens: tokens_done,
        seconds: started.elapsed().as_secs_f64(),
        final_loss,
        initial_validation,
        validation,
    })
}

/// Validation at the end of an epoch, then move to the next epoch.
fn end_epoch<B: Backend>(
    trainer: &mut Trainer<'_, B>,
    data: &Dataset,
    opts: &FinetuneOptions,
    st: &mut LoopState,
    metrics: &mut Metrics,
    validation: &mut Vec<(usize, f64)>,
) -> Result<(), FinetuneError> {
    if data.validation_len() > 0 {
        let loss = evaluate(trainer, data, opts.batch_size)?;
        validation.push((st.epoch, loss));
        metrics.push(MetricLine::eval(
            st.step,
            st.epoch,
            loss,
            data.validation_tokens(),
        ))?;
    }
    st.epoch += 1;
    st.pos = 0;
    Ok(())
}

/// Mean validation loss per target token.
pub fn evaluate<B: Backend>(
    trainer: &mut Trainer<'_, B>,
    data: &Dataset,
    batch_size: usize,
) -> Result<f64, FinetuneError> {
    let (mut sum, mut n) = (0.0, 0usize);
    for b in data.validation_batches(batch_size.max(1)) {
        let s = trainer.forward_backward(&b.tokens, &b.targets, b.batch, b.seq, None)?;
        sum += s.loss_sum;
        n += s.n_tokens;
    }
    Ok(sum / n.max(1) as f64)
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

fn moment_name(kind: &str, l: usize, k: ProjKey, ab: &str) -> String {
    format!("{kind}.layers.{l}.{}.{ab}", k.proj().hf_name())
}

/// Write `dir` atomically: build it beside, then rename into place.
pub fn save_checkpoint<B: Backend>(
    trainer: &Trainer<'_, B>,
    st: &LoopState,
    dir: &Path,
    base: &str,
) -> Result<(), FinetuneError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    let result = (|| {
        let ad = trainer.adapter()?;
        save_peft(&ad, &tmp.join("adapter"), base)?;
        let os = trainer.optimizer_state()?;
        let mut tensors = Vec::new();
        for (kind, map) in [("m", &os.m), ("v", &os.v)] {
            for (&(l, k), (a, b)) in map.iter() {
                for (ab, v) in [("A", a), ("B", b)] {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    tensors.push((
                        moment_name(kind, l, k, ab),
                        Dtype::F32,
                        vec![v.len()],
                        bytes,
                    ));
                }
            }
        }
        let opt = tmp.join("optimizer.safetensors");
        write_safetensors(&opt, &tensors, None).map_err(|e| io_err(&opt, e.kind))?;
        let mut st = st.clone();
        st.step = os.step as u64;
        let sj = tmp.join("state.json");
        let text = serde_json::to_string_pretty(&st).expect("plain JSON");
        tern_io::atomic::write_atomic(&sj, text.as_bytes()).map_err(|e| io_err(&sj, e))?;
        Ok::<(), FinetuneError>(())
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

/// Read what [`save_checkpoint`] wrote.
pub fn load_checkpoint(
    dir: &Path,
    cfg: &tern_model::BitNetConfig,
) -> Result<(Adapter, OptimizerState, LoopState), FinetuneError> {
    let ad = load_peft(&dir.join("adapter"), cfg)?;
    let sj = dir.join("state.json");
    let text = std::fs::read_to_string(&sj).map_err(|e| io_err(&sj, e))?;
    let st: LoopState = serde_json::from_str(&text).map_err(|e| io_err(&sj, e))?;
    let opt = dir.join("optimizer.safetensors");
    let ck = Checkpoint::open(&opt).map_err(|e| io_err(&opt, e.kind))?;
    let mut m = BTreeMap::new();
    let mut v = BTreeMap::new();
    for &(l, k) in ad.tensors.keys() {
        let read = |kind: &str, ab: &str| -> Result<Vec<f32>, FinetuneError> {
            let name = moment_name(kind, l, k, ab);
            ck.to_f32(&name).map_err(|e| io_err(&opt, e.kind))
        };
        m.insert((l, k), (read("m", "A")?, read("m", "B")?));
        v.insert((l, k), (read("v", "A")?, read("v", "B")?));
    }
    let os = OptimizerState {
        step: u32::try_from(st.step).map_err(|_| io_err(&sj, "step out of range"))?,
        m,
        v,
    };
    Ok((ad, os, st))
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
struct Metrics {
    path: PathBuf,
    lines: Vec<MetricLine>,
    file: std::fs::File,
}

impl Metrics {
    fn open(path: &Path, keep_up_to_step: u64) -> Result<Self, FinetuneError> {
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

    fn push(&mut self, m: MetricLine) -> Result<(), FinetuneError> {
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
    fn write_svg(&self, path: &Path) -> Result<(), FinetuneError> {
        use plotters::prelude::*;
        let train: Vec<(f64, f64)> = self
            .lines
            .iter()
            .filter(|m| m.kind == "train")
            .map(|m| (m.step as f64, m.loss))
            .collect();
        let eval: Vec<(f64, f64)> = self
            .lines
            .iter()
            .filter(|m| m.kind == "eval")
            .map(|m| (m.step as f64, m.loss))
            .collect();
        let all = train.iter().chain(&eval);
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for &(_, y) in all {
            lo = lo.min(y);
            hi = hi.max(y);
        }
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        let pad = ((hi - lo) * 0.05).max(1e-3);
        let x_max = train.last().map_or(1.0, |p| p.0).max(1.0);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
            let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
                root.fill(&WHITE)?;
                let mut chart = ChartBuilder::on(&root)
                    .caption("tern LoRA fine-tuning loss", ("sans-serif", 20))
                    .margin(12)
                    .x_label_area_size(36)
                    .y_label_area_size(56)
                    .build_cartesian_2d(0f64..x_max, (lo - pad)..(hi + pad))?;
                chart
                    .configure_mesh()
                    .x_desc("optimizer step")
                    .y_desc("loss (nats / token)")
                    .draw()?;
                chart
                    .draw_series(LineSeries::new(train.iter().copied(), &BLUE))?
                    .label("train")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
                if !eval.is_empty() {
                    chart
                        .draw_series(LineSeries::new(eval.iter().copied(), &RED))?
                        .label("validation")
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
                    chart.draw_series(eval.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
                }
                chart
                    .configure_series_labels()
                    .border_style(BLACK)
                    .background_style(WHITE.mix(0.8))
                    .draw()?;
                root.present()?;
                Ok(())
            };
            draw().map_err(|e| io_err(path, e))?;
        }
        tern_io::atomic::write_atomic(path, svg.as_bytes()).map_err(|e| io_err(path, e))
    }
}

/// Parse `--lora-modules`.
pub fn parse_modules(s: &str) -> Result<Vec<Proj>, LoraError> {
    crate::adapter::LoraConfig::parse_targets(s)
}
