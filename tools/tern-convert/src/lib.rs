//! tern-convert: Hugging Face BitNet b1.58 checkpoints to packed ternary GGUF.
//!
//! Convert a checkpoint folder (here a random one written by [`gen`]) to a
//! GGUF file with TQ2_0 projections that llama.cpp's `bitnet` architecture
//! runs (`examples/convert.rs` does the same from the command line):
//!
//! ```
//! use tern_convert::gen::{write_random_checkpoint, GenDtype};
//! use tern_convert::{convert, ConvertOptions, Input};
//! use tern_model::BitNetConfig;
//! use tern_tensor::GgmlType;
//!
//! let cfg = BitNetConfig::from_json_str(
//!     "tiny",
//!     r#"{"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1,
//!         "num_attention_heads": 4, "vocab_size": 64, "hidden_act": "silu"}"#,
//! )?;
//! let dir = tempfile::tempdir()?;
//! let checkpoint = dir.path().join("checkpoint");
//! write_random_checkpoint(&cfg, GenDtype::BF16, 0, &checkpoint, |_, _| {})?;
//!
//! let out = dir.path().join("tiny.gguf");
//! let report = convert(&ConvertOptions::new(Input::Dir(checkpoint), &out))?;
//! assert_eq!(report.proj_type, GgmlType::TQ2_0);
//! let gguf = tern_io::gguf::GgufFile::open(&out)?;
//! assert_eq!(gguf.get_str("general.architecture")?, "bitnet");
//! assert_eq!(gguf.tensor("blk.0.attn_q.weight").map(|t| t.ty), Some(GgmlType::TQ2_0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The pipeline: resolve the input (a local folder, or `OWNER/NAME` in the
//! Hugging Face hub cache, [`hub`]), check `config.json` (architecture,
//! fields, quantization config), open the weights with
//! [`tern_model::HfWeights`] (full-precision masters are absmean-ternarized
//! per tensor; pre-packed U8 checkpoints are unpacked with their
//! `weight_scale` read in the convention their `linear_class` names), build
//! the tokenizer metadata ([`vocab`]), and stream everything through
//! [`tern_model::export::export`], the one GGUF model writer, into a temporary
//! file that is renamed to the output only on success.
//!
//! Memory: one tensor in full precision at a time (tensor bytes are read
//! with ordinary file reads, not kept mapped), so a 7B conversion stays
//! well under 3 GiB; see docs/benchmarks/convert.md.

pub mod gen;
pub mod hub;
pub mod vocab;

use std::path::{Path, PathBuf};
use tern_model::export::{self, ExportOptions, ExportProgress, Fallback, Target};
use tern_model::{BitNetConfig, HfWeights, HiddenAct, WeightError};
use tern_tensor::GgmlType;

/// `architectures` entries of the checkpoints tern converts (transformers'
/// BitNet, and the 1bitLLM / bitnet.cpp spelling).
pub const ARCHITECTURES: [&str; 2] = ["BitNetForCausalLM", "BitnetForCausalLM"];

/// Where the checkpoint comes from.
#[derive(Clone, Debug)]
pub enum Input {
    /// A local folder: `config.json`, safetensors (one file or an index with
    /// shards), `tokenizer.json` and/or `tokenizer.model`.
    Dir(PathBuf),
    /// `OWNER/NAME` at `revision` in the hub cache (`cache`, or the one the
    /// environment names).
    Hub {
        repo: String,
        revision: String,
        cache: Option<PathBuf>,
    },
}

/// Everything `convert` needs.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub input: Input,
    pub out: PathBuf,
    /// Projection type; `None` picks TQ2_0 for llama.cpp and I2_S for bitnet.cpp.
    pub proj_type: Option<GgmlType>,
    /// Embedding (and untied head) type.
    pub embed_type: GgmlType,
    pub target: Target,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Fetch files missing from the hub cache (needs the `download` feature).
    pub download: bool,
}

impl ConvertOptions {
    /// Defaults: llama.cpp target, TQ2_0 projections, F16 embedding, no bar.
    pub fn new(input: Input, out: impl Into<PathBuf>) -> Self {
        ConvertOptions {
            input,
            out: out.into(),
            proj_type: None,
            embed_type: GgmlType::F16,
            target: Target::LlamaCpp,
            progress: false,
            download: false,
        }
    }
}

/// What a conversion did.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    pub model_dir: PathBuf,
    pub out: PathBuf,
    pub config: BitNetConfig,
    pub proj_type: GgmlType,
    /// `full precision (BF16)`, `pre-packed (autobitlinear)`...
    pub checkpoint_kind: String,
    /// `gpt2` / `llama` / empty.
    pub tokenizer_model: String,
    pub tensors: usize,
    pub data_bytes: u64,
    /// Projections stored in another type (rows not a multiple of the block size).
    pub fallbacks: Vec<Fallback>,
    pub warnings: Vec<String>,
}

/// A conversion that cannot go ahead. Each names the file (and tensor or
/// field) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{file}: {reason}")]
    Input { file: PathBuf, reason: String },
    #[error("{file}: field `{field}`: {reason}")]
    Config {
        file: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{file}: tokenizer: {reason}")]
    Tokenizer { file: PathBuf, reason: String },
    #[error("Hugging Face model {repo}: {reason}")]
    Hub { repo: String, reason: String },
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Weights(Box<WeightError>),
}

impl From<WeightError> for ConvertError {
    fn from(e: WeightError) -> Self {
        ConvertError::Weights(Box::new(e))
    }
}

/// Parse a `--type` / `--embed-type` name (`tq2_0`, `i2_s`, `f16`...).
pub fn parse_type(s: &str) -> Result<GgmlType, ConvertError> {
    GgmlType::all()
        .find(|t| t.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| ConvertError::Options(format!("unknown type {s:?}")))
}

/// Parse a `--target` name (`llamacpp`, `bitnetcpp`).
pub fn parse_target(s: &str) -> Result<Target, ConvertError> {
    match s.to_ascii_lowercase().replace(['-', '_', '.'], "").as_str() {
        "llamacpp" => Ok(Target::LlamaCpp),
        "bitnetcpp" => Ok(Target::BitnetCpp),
        _ => Err(ConvertError::Options(format!(
            "unknown target {s:?} (llamacpp or bitnetcpp)"
        ))),
    }
}

/// The local folder of `input` (hub inputs resolved through the cache).
pub fn resolve_input(input: &Input, download: bool) -> Result<PathBuf, ConvertError> {
    match input {
        Input::Dir(d) => {
            if !d.is_dir() {
                return Err(ConvertError::Input {
                    file: d.clone(),
                    reason: "not a folder (expected a Hugging Face model folder with \
                             config.json and safetensors)"
                        .into(),
                });
            }
            Ok(d.clone())
        }
        Input::Hub {
            repo,
            revision,
            cache,
        } => {
            let cache = cache.clone().unwrap_or_else(hub::cache_dir);
            match hub::resolve_cached(&cache, repo, revision) {
                Ok(p) => Ok(p),
                Err(e) if download => fetch(&cache, repo, revision).map_err(|d| match d {
                    ConvertError::Options(m) => ConvertError::Hub {
                        repo: repo.clone(),
                        reason: format!("{m}; {e}"),
                    },
                    other => other,
                }),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(feature = "download")]
fn fetch(cache: &Path, repo: &str, revision: &str) -> Result<PathBuf, ConvertError> {
    hub::download(cache, repo, revision)
}

#[cfg(not(feature = "download"))]
fn fetch(_cache: &Path, _repo: &str, _revision: &str) -> Result<PathBuf, ConvertError> {
    Err(ConvertError::Options(
        "this build of tern cannot download (built without the `download` feature)".into(),
    ))
}

/// Check what `config.json` says beyond the hyper-parameters: the
/// architecture and the quantization config.
fn check_config(path: &Path) -> Result<(serde_json::Value, BitNetConfig), ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConvertError::Input {
        file: path.to_path_buf(),
        reason: format!("cannot read: {e}"),
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ConvertError::Input {
        file: path.to_path_buf(),
        reason: format!("invalid JSON: {e}"),
    })?;
    let cfg_err = |field: &str, reason: String| ConvertError::Config {
        file: path.to_path_buf(),
        field: field.to_owned(),
        reason,
    };
    match json.get("architectures").and_then(|a| a.as_array()) {
        Some(archs) => {
            let names: Vec<&str> = archs.iter().filter_map(|a| a.as_str()).collect();
            if !names.iter().any(|a| ARCHITECTURES.contains(a)) {
                return Err(cfg_err(
                    "architectures",
                    format!(
                        "{names:?} is not a BitNet b1.58 model (tern converts {})",
                        ARCHITECTURES.join(", ")
                    ),
                ));
            }
        }
        None => {
            let mt = json.get("model_type").and_then(|m| m.as_str());
            if mt != Some("bitnet") {
                return Err(cfg_err(
                    "architectures",
                    format!(
                        "missing, and model_type is {mt:?}, not \"bitnet\": cannot tell this \
                         is a BitNet b1.58 model"
                    ),
                ));
            }
        }
    }
    if let Some(q) = json.get("quantization_config") {
        if q.get("use_rms_norm").and_then(|v| v.as_bool()) == Some(true) {
            return Err(cfg_err(
                "quantization_config.use_rms_norm",
                "true adds an extra RMSNorm inside every BitLinear, which tern does not \
                 implement"
                    .into(),
            ));
        }
    }
    let cfg = BitNetConfig::from_json_str(&path.display().to_string(), &text).map_err(|e| {
        ConvertError::Input {
            file: path.to_path_buf(),
            reason: e
                .to_string()
                .trim_start_matches(&format!("{}: ", path.display()))
                .to_owned(),
        }
    })?;
    Ok((json, cfg))
}

/// Describe the checkpoint and reject layouts tern would misread.
fn checkpoint_kind(
    dir: &Path,
    ck: &tern_io::safetensors::Checkpoint,
    json: &serde_json::Value,
) -> Result<String, ConvertError> {
    use tern_io::safetensors::Dtype;
    let mut packed = 0usize;
    let mut dtypes: Vec<String> = Vec::new();
    for e in ck.tensors() {
        if let Some(stem) = e.name.strip_suffix(".weight_scale") {
            let w = format!("{stem}.weight");
            if ck.get(&w).map(|t| t.dtype) != Some(Dtype::U8) {
                return Err(ConvertError::Input {
                    file: ck.file_of(e).to_path_buf(),
                    reason: format!(
                        "tensor `{}` scales `{w}`, which is not a packed U8 weight: offline \
                         checkpoints with unpacked ternary weights are not supported",
                        e.name
                    ),
                });
            }
        }
        if e.name.ends_with("_proj.weight") {
            if e.dtype == Dtype::U8 {
                packed += 1;
            } else {
                let d = e.dtype.to_string();
                if !dtypes.contains(&d) {
                    dtypes.push(d);
                }
            }
        }
    }
    let class = json
        .get("quantization_config")
        .and_then(|q| q.get("linear_class"))
        .and_then(|c| c.as_str())
        .unwrap_or("none");
    Ok(match (packed, dtypes.is_empty()) {
        (0, _) => format!("full precision ({})", dtypes.join(", ")),
        (_, true) => format!("pre-packed U8 (linear_class {class})"),
        _ => {
            return Err(ConvertError::Input {
                file: dir.to_path_buf(),
                reason: format!(
                    "mixes {packed} packed U8 projections with full-precision ones ({})",
                    dtypes.join(", ")
                ),
            })
        }
    })
}

/// The progress bar: bytes written, tensors done, the current tensor.
struct Bar {
    pb: indicatif::ProgressBar,
    n: usize,
    i: usize,
}

impl ExportProgress for Bar {
    fn begin(&mut self, tensors: usize, bytes: u64) {
        self.n = tensors;
        self.pb.set_length(bytes);
    }
    fn tensor_written(&mut self, name: &str, bytes: u64) {
        self.i += 1;
        self.pb.inc(bytes);
        self.pb.set_message(format!("{}/{} {name}", self.i, self.n));
    }
}

/// Convert `opts.input` to `opts.out`. On any error nothing is left at
/// `opts.out` (an existing file there stays as it was).
pub fn convert(opts: &ConvertOptions) -> Result<ConvertReport, ConvertError> {
    let target = opts.target;
    let proj_type = opts.proj_type.unwrap_or(match target {
        Target::LlamaCpp => GgmlType::TQ2_0,
        Target::BitnetCpp => GgmlType::I2_S,
    });
    if !target.proj_types().contains(&proj_type) {
        return Err(ConvertError::Options(format!(
            "--type {} is not available for --target {} (choose from {})",
            proj_type.name().to_ascii_lowercase(),
            match target {
                Target::LlamaCpp => "llamacpp",
                Target::BitnetCpp => "bitnetcpp",
            },
            target
                .proj_types()
                .iter()
                .map(|t| t.name().to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if !export::EMBED_TYPES.contains(&opts.embed_type) {
        return Err(ConvertError::Options(format!(
            "--embed-type {} is not supported (f16, q8_0 or f32)",
            opts.embed_type.name().to_ascii_lowercase()
        )));
    }
    let dir = resolve_input(&opts.input, opts.download)?;
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(ConvertError::Input {
            file: config_path,
            reason: "missing: a Hugging Face model folder needs config.json".into(),
        });
    }
    let (json, cfg) = check_config(&config_path)?;
    let weights = HfWeights::open(&dir)?;
    let ck = tern_io::safetensors::Checkpoint::open(&dir).map_err(WeightError::from)?;
    let checkpoint_kind = checkpoint_kind(&dir, &ck, &json)?;
    drop(ck);

    let mut warnings = Vec::new();
    if target == Target::LlamaCpp && cfg.hidden_act == HiddenAct::Relu2 {
        warnings.push(
            "this model uses relu² but upstream llama.cpp runs the `bitnet` architecture with \
             SiLU, so llama.cpp's output will be wrong (tern reads tern.hidden_act and is \
             right; for bitnet.cpp use --target bitnetcpp)"
                .to_owned(),
        );
    }
    if target == Target::LlamaCpp && !cfg.tie_word_embeddings {
        warnings.push(
            "this model's output head is untied (tie_word_embeddings: false) but upstream \
             llama.cpp's `bitnet` graph only reads the token embedding as the head, so llama.cpp \
             refuses this file ('wrong number of tensors': output.weight is one too many); \
             tern runs it (for bitnet.cpp, whose `bitnet-b1.58` graph reads output.weight, use \
             --target bitnetcpp)"
                .to_owned(),
        );
    }
    if target == Target::LlamaCpp && proj_type == GgmlType::I2_S {
        warnings.push(
            "I2_S is the bitnet.cpp fork's type (id 36); upstream llama.cpp rejects it (tern \
             reads it)"
                .to_owned(),
        );
    }
    let vocab =
        vocab::tokenizer_metadata(&dir, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id)?;
    warnings.extend(vocab.warnings.iter().cloned());

    let name = match &opts.input {
        Input::Hub { repo, .. } => Some(repo.clone()),
        Input::Dir(d) => d
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
    };
    let eopts = ExportOptions {
        proj_type,
        embed_type: opts.embed_type,
        target,
        fallback: true,
        name,
        metadata: vocab.kv,
        dense_projections: false,
    };
    let pb = if opts.progress {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut bar = Bar { pb, n: 0, i: 0 };
    let res = export::export(&weights, &opts.out, &eopts, &mut bar);
    bar.pb.finish_and_clear();
    let rep = res?;
    Ok(ConvertReport {
        model_dir: dir,
        out: opts.out.clone(),
        config: cfg,
        proj_type,
        checkpoint_kind,
        tokenizer_model: vocab.ggml_model,
        tensors: rep.tensors,
        data_bytes: rep.data_bytes,
        fallbacks: rep.fallbacks,
        warnings,
    })
}

impl ConvertReport {
    /// A human-readable summary (what `tern convert` prints).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} -> {}\n  checkpoint: {}\n  projections: {}, {} tensors, {:.1} MiB of data\n  \
             tokenizer: {}\n",
            self.model_dir.display(),
            self.out.display(),
            self.checkpoint_kind,
            self.proj_type,
            self.tensors,
            self.data_bytes as f64 / (1u64 << 20) as f64,
            if self.tokenizer_model.is_empty() {
                "none (Hugging Face JSON only, or no tokenizer)"
            } else {
                &self.tokenizer_model
            }
        );
        if !self.fallbacks.is_empty() {
            s.push_str(&format!(
                "  {} projection(s) fell back (rows not a multiple of the block size):\n",
                self.fallbacks.len()
            ));
            for f in &self.fallbacks {
                s.push_str(&format!(
                    "    {}: rows of {} -> {} instead of {}\n",
                    f.tensor, f.row_len, f.used, f.wanted
                ));
            }
        }
        for w in &self.warnings {
            s.push_str(&format!("  warning: {w}\n"));
        }
        s
    }
}
