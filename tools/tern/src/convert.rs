//! `tern convert`: a Hugging Face BitNet checkpoint to packed ternary GGUF.

use anyhow::{bail, Result};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use tern_convert::{ConvertOptions, Input};

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// A local Hugging Face model folder (config.json, safetensors,
    /// tokenizer.json and/or tokenizer.model). Leave out with --hf-repo.
    pub input: Option<PathBuf>,
    /// The GGUF file to write (written to a temporary file, renamed on success).
    #[arg(long, short)]
    pub out: PathBuf,
    /// A model in the Hugging Face hub cache, OWNER/NAME.
    #[arg(long, conflicts_with = "input")]
    pub hf_repo: Option<String>,
    /// Branch, tag or commit of --hf-repo.
    #[arg(long, default_value = "main", requires = "hf_repo")]
    pub revision: String,
    /// Projection type: tq2_0, tq1_0, i2_s, q8_0, f16 or f32 (default: tq2_0
    /// for llamacpp, i2_s for bitnetcpp).
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// llamacpp (arch `bitnet`, .scale tensors) or bitnetcpp (arch
    /// `bitnet-b1.58`, I2_S with the scale inside).
    #[arg(long, default_value = "llamacpp")]
    pub target: String,
    /// Token embedding (and untied head) type: f16, q8_0 or f32.
    #[arg(long, default_value = "f16")]
    pub embed_type: String,
    /// Fetch files missing from the hub cache (builds with the `download` feature).
    #[arg(long)]
    pub download: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: &ConvertArgs) -> Result<()> {
    let input = match (&a.input, &a.hf_repo) {
        (Some(dir), None) => Input::Dir(dir.clone()),
        (None, Some(repo)) => Input::Hub {
            repo: repo.clone(),
            revision: a.revision.clone(),
            cache: None,
        },
        _ => bail!("give a model folder or --hf-repo OWNER/NAME"),
    };
    let mut opts = ConvertOptions::new(input, &a.out);
    opts.proj_type = a.ty.as_deref().map(tern_convert::parse_type).transpose()?;
    opts.target = tern_convert::parse_target(&a.target)?;
    opts.embed_type = tern_convert::parse_type(&a.embed_type)?;
    opts.download = a.download;
    opts.progress = !a.quiet && std::io::stderr().is_terminal();
    let report = tern_convert::convert(&opts)?;
    eprint!("{}", report.summary());
    Ok(())
}

#[derive(Args, Debug)]
pub struct GenCheckpointArgs {
    /// A built-in config (see `tern generate --help`) or a config.json file.
    #[arg(long)]
    pub config: String,
    /// Storage dtype of the weights: f16, bf16 or f32.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Seed of the random values.
    #[arg(long, short = 's', default_value_t = 0)]
    pub seed: u64,
    /// The folder to write: config.json, safetensors shards and their index.
    #[arg(long, short)]
    pub out: PathBuf,
}

/// `tern gen-checkpoint`: a random Hugging Face checkpoint of a config,
/// written tensor by tensor (input for `tern convert` benchmarks and tests).
pub fn gen_checkpoint(a: &GenCheckpointArgs) -> Result<()> {
    let path = std::path::Path::new(&a.config);
    let cfg = if path.is_file() {
        tern_model::BitNetConfig::from_file(path)?
    } else {
        tern_model::BitNetConfig::zoo(&a.config)?
    };
    let dtype = tern_convert::gen::GenDtype::parse(&a.dtype)?;
    let t0 = std::time::Instant::now();
    let (files, bytes) =
        tern_convert::gen::write_random_checkpoint(&cfg, dtype, a.seed, &a.out, |_, _| {})?;
    eprintln!(
        "wrote {} files, {:.2} GB of tensors, to {} in {:.1} s",
        files.len(),
        bytes as f64 / 1e9,
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
