//! `tern merge`, `tern adapters init` and `tern adapters average`.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use tern_lora::merge::{average, Merged};
use tern_lora::{Adapter, LoraConfig};
use tern_model::export::{export, ExportOptions};
use tern_model::source::ModelSource;
use tern_tensor::rng::SplitMix64;
use tern_tensor::GgmlType;

use crate::run::load_adapter;

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The base model (.gguf, Hugging Face folder, or random:NAME).
    #[arg(long, short = 'm')]
    pub model: String,
    /// Adapters to fold in (PEFT folder or adapter .gguf); repeat to stack.
    #[arg(long, required = true)]
    pub lora: Vec<PathBuf>,
    /// Output GGUF.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Storage of the merged projections: f16 or f32.
    #[arg(long = "type", default_value = "f16")]
    pub ty: String,
    /// Storage of the embedding and head: f16, q8_0 or f32.
    #[arg(long, default_value = "f16")]
    pub embed_type: String,
}

fn parse_type(s: &str, allowed: &[GgmlType], what: &str) -> Result<GgmlType> {
    match GgmlType::from_name(s) {
        Some(t) if allowed.contains(&t) => Ok(t),
        _ => bail!(
            "{what} {s:?} is not one of {}",
            allowed
                .iter()
                .map(|t| t.name().to_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub fn merge(a: &MergeArgs) -> Result<()> {
    let ty = parse_type(&a.ty, &[GgmlType::F16, GgmlType::F32], "--type")?;
    let embed = parse_type(
        &a.embed_type,
        &[GgmlType::F16, GgmlType::Q8_0, GgmlType::F32],
        "--embed-type",
    )?;
    let src = ModelSource::open(&a.model).with_context(|| format!("loading model {}", a.model))?;
    let cfg = src.weights().config().clone();
    let adapters = a
        .lora
        .iter()
        .map(|p| load_adapter(p, &cfg).with_context(|| format!("loading adapter {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let merged = Merged {
        base: src.weights(),
        adapters: &adapters,
    };
    let mut opts = ExportOptions::new(ty, embed);
    opts.dense_projections = true;
    opts.metadata = tokenizer_kv(&src, &cfg)?;
    let report = export(&merged, &a.out, &opts, &mut ())?;
    eprintln!(
        "wrote {} ({} tensors, {} bytes): projections are full precision ({}) with {} adapter(s) \
         folded in.",
        a.out.display(),
        report.tensors,
        report.data_bytes,
        ty.name().to_lowercase(),
        adapters.len()
    );
    eprintln!(
        "note: a merged model is no longer ternary. Runtimes read it as float weights; tern \
         re-ternarizes such projections on load, which is lossy (the adapter's effect is only \
         partly kept). For exact results run the base with --lora instead."
    );
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum AdaptersCommand {
    /// Write a freshly initialized adapter for a model (PEFT's init, seeded).
    Init(InitArgs),
    /// Weighted average of adapters of one shape (federated averaging).
    Average(AverageArgs),
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// The base model the adapter is for (.gguf, Hugging Face folder, or random:NAME).
    #[arg(long, short = 'm')]
    pub model: String,
    /// Output: a folder (PEFT) or a .gguf file (llama.cpp adapter).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// LoRA alpha: the update B·A is scaled by alpha / r.
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f32,
    /// Projections to adapt, comma-separated: q,k,v,o,gate,up,down or all.
    #[arg(long, default_value = "all")]
    pub lora_modules: String,
    /// Seed of A (and of B with --random-b).
    #[arg(long, short = 's', default_value_t = 0)]
    pub seed: u64,
    /// Draw B uniformly from [-X, X] instead of PEFT's zeros, so the adapter changes the
    /// model's output (for comparing runtimes; a fresh PEFT adapter is a no-op).
    #[arg(long, value_name = "X")]
    pub random_b: Option<f32>,
    /// .gguf output: keep B as is instead of dividing out the base's post-LoRA `.scale`
    /// tensors (a control: llama.cpp then applies the ffn_gate/ffn_up branches wrongly).
    #[arg(long)]
    pub no_post_scales: bool,
}

/// `tern adapters init`.
fn init(a: &InitArgs) -> Result<()> {
    let src = ModelSource::open(&a.model).with_context(|| format!("loading model {}", a.model))?;
    let cfg = src.weights().config().clone();
    let lora = LoraConfig {
        rank: a.lora_rank,
        alpha: a.lora_alpha,
        dropout: 0.0,
        targets: LoraConfig::parse_targets(&a.lora_modules)?,
    };
    let mut ad = Adapter::init(&cfg, lora, a.seed)?;
    if let Some(x) = a.random_b {
        if !(x.is_finite() && x > 0.0) {
            bail!("--random-b {x}: expected a positive half-width");
        }
        // One stream over every B in the adapter's order (layer, then
        // q k v o gate up down).
        let mut rng = SplitMix64::new(a.seed);
        for (_, b) in ad.tensors.values_mut() {
            for v in b.iter_mut() {
                *v = (2.0 * rng.next_f32() - 1.0) * x;
            }
        }
    }
    let gguf = a
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if a.no_post_scales && !gguf {
        bail!(
            "--no-post-scales: only for a .gguf adapter ({} is a PEFT folder)",
            a.out.display()
        );
    }
    let post = if a.no_post_scales {
        Default::default()
    } else {
        post_scales(&src)?
    };
    if gguf {
        let arch = match &src {
            ModelSource::Gguf(g) => g.file().get_str("general.architecture")?.to_owned(),
            _ => "bitnet".to_owned(),
        };
        tern_lora::io::save_gguf(&ad, &a.out, &arch, &post)?;
    } else {
        tern_lora::finetune::save_adapter(&ad, &a.out, &a.model, &post)?;
    }
    eprintln!(
        "wrote {} (rank {}, alpha {}, {} projections, {} parameters, B {}{})",
        a.out.display(),
        ad.cfg.rank,
        ad.cfg.alpha,
        ad.tensors.len(),
        ad.n_params(),
        match a.random_b {
            Some(x) => format!("uniform in [-{x}, {x}]"),
            None => "zero".to_owned(),
        },
        if gguf && post.is_empty() {
            "; no post-LoRA scales divided out"
        } else {
            ""
        }
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct AverageArgs {
    /// Adapters (PEFT folders or adapter .gguf files).
    #[arg(required = true, num_args = 2..)]
    pub adapters: Vec<PathBuf>,
    /// One weight per adapter (normalized to sum 1); equal weights if absent.
    #[arg(long, num_args = 1..)]
    pub weights: Option<Vec<f32>>,
    /// The base model the adapters belong to (for their shapes).
    #[arg(long, short = 'm')]
    pub model: String,
    /// Output: a folder (PEFT) or a .gguf file (llama.cpp adapter).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

pub fn run(cmd: &AdaptersCommand) -> Result<()> {
    match cmd {
        AdaptersCommand::Init(a) => init(a),
        AdaptersCommand::Average(a) => {
            let src = ModelSource::open(&a.model)
                .with_context(|| format!("loading model {}", a.model))?;
            let cfg = src.weights().config().clone();
            let ads = a
                .adapters
                .iter()
                .map(|p| load_adapter(p, &cfg).with_context(|| format!("loading {}", p.display())))
                .collect::<Result<Vec<_>>>()?;
            let avg = average(&ads, a.weights.as_deref())?;
            let post = post_scales(&src)?;
            tern_lora::finetune::save_adapter(&avg, &a.out, &a.model, &post)?;
            eprintln!(
                "wrote the average of {} adapters to {}",
                ads.len(),
                a.out.display()
            );
            Ok(())
        }
    }
}

/// What llama.cpp multiplies after the LoRA branch on this base: the GGUF's
/// own `.scale` tensors, or the ternary scales `tern convert` will write.
pub fn post_scales(src: &ModelSource) -> Result<tern_lora::io::PostScales> {
    Ok(match src {
        ModelSource::Gguf(g) => tern_lora::io::post_scales_from_gguf(g.file())?,
        other => tern_lora::io::post_scales_from_ternary(other.weights())?,
    })
}

/// The base's tokenizer metadata, so that the merged file runs on its own:
/// the GGUF's `tokenizer.*` keys, or what `tern convert` writes for a folder.
fn tokenizer_kv(
    src: &ModelSource,
    cfg: &tern_model::BitNetConfig,
) -> Result<Vec<(String, tern_io::gguf::Value)>> {
    Ok(match src {
        ModelSource::Gguf(g) => g
            .file()
            .metadata()
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect(),
        ModelSource::Hf(_, dir) => {
            tern_convert::vocab::tokenizer_metadata(
                dir,
                cfg.vocab_size,
                cfg.bos_token_id,
                cfg.eos_token_id,
            )?
            .kv
        }
        ModelSource::Random(_) => Vec::new(),
    })
}
