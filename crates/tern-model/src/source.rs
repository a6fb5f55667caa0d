//! Resolving a `--model` argument to weights (and, where the model carries
//! one, a tokenizer).
//!
//! Accepted forms:
//! - `path/to/model.gguf` — a GGUF with llama.cpp `bitnet` names;
//! - `path/to/folder` — a Hugging Face checkpoint (`config.json` + safetensors);
//! - `random:NAME[@SEED]` — deterministic random weights of a zoo config
//!   (`random:125m`, `random:bitnet-b1.58-2b-4t@7`), for tests and benchmarks.

use crate::config::BitNetConfig;
use crate::random::RandomWeights;
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::weights::{GgufWeights, HfWeights, WeightError, WeightSource};
use std::path::{Path, PathBuf};

/// A resolved `--model`.
pub enum ModelSource {
    Gguf(GgufWeights),
    Hf(HfWeights, PathBuf),
    Random(RandomWeights),
}

impl ModelSource {
    pub fn open(spec: &str) -> Result<Self, WeightError> {
        if let Some(rest) = spec.strip_prefix("random:") {
            let (name, seed) = match rest.split_once('@') {
                Some((n, s)) => {
                    let seed = s.parse::<u64>().map_err(|_| WeightError::Invalid {
                        file: PathBuf::from(spec),
                        tensor: String::new(),
                        reason: format!("seed {s:?} is not an unsigned integer"),
                    })?;
                    (n, seed)
                }
                None => (rest, 0),
            };
            return Ok(ModelSource::Random(RandomWeights::new(
                BitNetConfig::zoo(name)?,
                seed,
            )));
        }
        let path = Path::new(spec);
        if path.is_dir() {
            Ok(ModelSource::Hf(HfWeights::open(path)?, path.to_path_buf()))
        } else {
            Ok(ModelSource::Gguf(GgufWeights::open(path)?))
        }
    }

    pub fn weights(&self) -> &dyn WeightSource {
        match self {
            ModelSource::Gguf(g) => g,
            ModelSource::Hf(h, _) => h,
            ModelSource::Random(r) => r,
        }
    }

    /// The tokenizer: `override_path` if given, else the one the model
    /// carries (GGUF metadata, or `tokenizer.json` beside a HF checkpoint).
    pub fn tokenizer(&self, override_path: Option<&Path>) -> Result<Tokenizer, TokenizerError> {
        if let Some(p) = override_path {
            return Tokenizer::from_file(p);
        }
        match self {
            ModelSource::Gguf(g) => Tokenizer::from_gguf(g.file()),
            ModelSource::Hf(_, dir) => Tokenizer::from_file(dir.join("tokenizer.json")),
            ModelSource::Random(_) => Err(TokenizerError::source_missing(
                "random weights",
                "a random model has no tokenizer: pass --tokenizer tokenizer.json or token ids",
            )),
        }
    }
}
