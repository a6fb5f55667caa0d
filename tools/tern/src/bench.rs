//! `tern bench`: prefill, decode and LoRA training throughput of one model on
//! one backend, with peak memory: the numbers docs/benchmarks/ records.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;
use tern_backend::Backend;
use tern_lora::{Adapter, LoraConfig, Trainer};
use tern_model::model::ActQuant;
use tern_model::source::ModelSource;

use crate::backend::{peak_rss, BackendArgs, HeadArgs, Job};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long, short = 'm', default_value = "random:125m", help = crate::run::model_help())]
    pub model: String,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub head: HeadArgs,
    /// Prompt tokens for the prefill measurement (0 skips prefill and decode).
    #[arg(long, short = 'p', visible_alias = "n-prompt", default_value_t = 128)]
    pub prefill: usize,
    /// Tokens decoded one at a time after the prompt, greedily, the choice
    /// made on the device (0 skips).
    #[arg(long, short = 'n', visible_alias = "n-gen", default_value_t = 64)]
    pub decode: usize,
    /// Timed LoRA training steps (0 skips); each step is one sequence of
    /// --ctx tokens, forward + backward + AdamW, every projection adapted.
    #[arg(long, default_value_t = 4)]
    pub lora_steps: usize,
    /// Tokens per LoRA training step.
    #[arg(long, default_value_t = 128)]
    pub ctx: usize,
    /// Sequences of --ctx tokens per LoRA step (`tern finetune --batch-size`;
    /// 1, QVAC Fabric's setting, is the reported baseline).
    #[arg(long, default_value_t = 1)]
    pub lora_batch: usize,
    /// LoRA rank of the timed training steps (alpha is twice the rank).
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// Untimed runs before each measurement (pipeline compilation, caches).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Run inference through the plain op sequence instead of the fused
    /// block ops (an A/B comparison; the values are the same).
    #[arg(long)]
    pub unfused: bool,
    /// Append the results as one JSON line to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What one `tern bench` run measured.
#[derive(serde::Serialize, Debug, Default)]
pub struct BenchResult {
    pub model: String,
    pub backend: String,
    /// Storage of the embedding and the LM head: `f32` or `f16`.
    pub head: String,
    pub load_s: f64,
    pub weights_mib: Option<f64>,
    pub lora_tokens_per_step: usize,
    pub lora_rank: usize,
    pub lora_tok_s: Option<f64>,
    pub lora_loss_first: Option<f32>,
    pub lora_loss_last: Option<f32>,
    /// Peak device memory up to the end of LoRA training (GPU backends).
    pub lora_peak_device_mib: Option<f64>,
    pub prefill_tokens: usize,
    pub prefill_tok_s: Option<f64>,
    pub decode_tokens: usize,
    pub decode_tok_s: Option<f64>,
    /// Whether inference ran the fused block ops.
    pub fused: bool,
    /// Peak device memory over the whole run (GPU backends).
    pub peak_device_mib: Option<f64>,
    /// Peak resident memory of the process (weights on the CPU backend).
    pub peak_rss_mib: Option<f64>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn bar(quiet: bool, len: usize, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Deterministic token ids in `[3, vocab)` (avoids the special ids).
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            3 + (s % (vocab.saturating_sub(3).max(1)) as u64) as u32
        })
        .collect()
}

pub fn run(a: &BenchArgs) -> Result<()> {
    struct J<'a>(&'a BenchArgs);
    impl Job for J<'_> {
        type Out = BenchResult;
        fn run<B: Backend + 'static>(self, backend: B) -> Result<BenchResult> {
            bench_on(self.0, backend)
        }
    }
    let r = a.backend.run(J(a))?;
    let line = serde_json::to_string(&r)?;
    println!("{line}");
    if let Some(path) = &a.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn bench_on<B: Backend>(a: &BenchArgs, backend: B) -> Result<BenchResult> {
    let src = ModelSource::open(&a.model).with_context(|| format!("loading model {}", a.model))?;
    let t = Instant::now();
    let mut model = a.head.load(backend, src.weights(), &a.model)?;
    model.set_fused(!a.unfused);
    model.backend.synchronize()?;
    let mut r = BenchResult {
        model: a.model.clone(),
        backend: model.backend.name(),
        head: model.head_precision().name().into(),
        load_s: t.elapsed().as_secs_f64(),
        weights_mib: model.backend.device_memory().map(|m| mib(m.0)),
        lora_tokens_per_step: a.lora_batch.max(1) * a.ctx,
        lora_rank: a.lora_rank,
        prefill_tokens: a.prefill,
        decode_tokens: a.decode,
        fused: !a.unfused,
        ..Default::default()
    };
    let cfg = model.cfg.clone();
    eprintln!(
        "{}: {} layers, hidden {}, {} head, loaded in {:.1} s on {}",
        a.model, cfg.num_hidden_layers, cfg.hidden_size, r.head, r.load_s, r.backend
    );

    if a.lora_steps > 0 {
        let ad = Adapter::init(
            &cfg,
            LoraConfig {
                rank: a.lora_rank,
                alpha: 2.0 * a.lora_rank as f32,
                dropout: 0.0,
                targets: LoraConfig::parse_targets("all")?,
            },
            7,
        )?;
        let mut trainer = Trainer::new(&model, &ad, ActQuant::PerTokenInt8)?;
        let nb = a.lora_batch.max(1);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for b in 0..nb {
            let seq = tokens(a.ctx + 1, cfg.vocab_size, 11 + b as u64);
            x.extend_from_slice(&seq[..a.ctx]);
            y.extend_from_slice(&seq[1..]);
        }
        let scale = 1.0 / (nb * a.ctx) as f32;
        let step = |tr: &mut Trainer<'_, B>| -> Result<f32> {
            let st = tr.forward_backward(&x, &y, nb, a.ctx, Some(scale))?;
            tr.optimizer_step(1e-4, 0.9, 0.999, 1e-8, 0.0);
            Ok(st.mean() as f32)
        };
        for _ in 0..a.warmup {
            step(&mut trainer)?;
        }
        model.backend.synchronize()?;
        let pb = bar(a.quiet, a.lora_steps, "lora");
        let t = Instant::now();
        for i in 0..a.lora_steps {
            let loss = step(&mut trainer)?;
            if i == 0 {
                r.lora_loss_first = Some(loss);
            }
            r.lora_loss_last = Some(loss);
            pb.inc(1);
        }
        model.backend.synchronize()?;
        let s = t.elapsed().as_secs_f64();
        pb.finish_and_clear();
        r.lora_tok_s = Some((a.lora_steps * nb * a.ctx) as f64 / s);
        r.lora_peak_device_mib = model.backend.device_memory().map(|m| mib(m.1));
        eprintln!(
            "lora: {} steps x {} tokens in {:.2} s: {:.1} tok/s (rank {}, all projections)",
            a.lora_steps,
            nb * a.ctx,
            s,
            r.lora_tok_s.unwrap_or(0.0),
            a.lora_rank
        );
    }

    if a.prefill > 0 {
        let prompt = tokens(a.prefill, cfg.vocab_size, 5);
        model.set_context(a.prefill + a.decode + 1)?;
        for _ in 0..a.warmup {
            model.reset();
            model.forward(&prompt, false)?;
            if a.decode > 0 {
                model.decode_greedy(prompt[0], a.decode.min(2), &[])?;
            }
        }
        model.reset();
        let t = Instant::now();
        let logits = model.forward(&prompt, false)?;
        let s = t.elapsed().as_secs_f64();
        r.prefill_tok_s = Some(a.prefill as f64 / s);
        eprintln!(
            "prefill: {} tokens in {:.3} s: {:.1} tok/s",
            a.prefill,
            s,
            r.prefill_tok_s.unwrap_or(0.0)
        );
        if a.decode > 0 {
            // greedy, the choice made on the device (no logits downloaded)
            let t = Instant::now();
            model.decode_greedy(argmax(&logits), a.decode, &[])?;
            let s = t.elapsed().as_secs_f64();
            r.decode_tok_s = Some(a.decode as f64 / s);
            eprintln!(
                "decode: {} tokens in {:.3} s: {:.1} tok/s",
                a.decode,
                s,
                r.decode_tok_s.unwrap_or(0.0)
            );
        }
    }
    r.peak_device_mib = model.backend.device_memory().map(|m| mib(m.1));
    r.peak_rss_mib = peak_rss().map(mib);
    if let Some(m) = r.peak_device_mib {
        eprintln!(
            "peak device memory: {m:.0} MiB (LoRA phase {:.0} MiB)",
            r.lora_peak_device_mib.unwrap_or(0.0)
        );
    }
    Ok(r)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
