//! `BitNetConfig`: the model hyper-parameters, read from Hugging Face
//! `config.json` files (field names as transformers writes them) or taken from
//! the built-in zoo (`models/*.json`, embedded at build time).

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Feed-forward activation as named in `config.json` (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HiddenAct {
    /// `relu(x)^2`.
    Relu2,
    /// `x * sigmoid(x)`.
    Silu,
}

/// BitNet b1.58 hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BitNetConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (multi-head attention).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    pub hidden_act: HiddenAct,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_rope_theta() -> f32 {
    10_000.0
}
fn default_eps() -> f32 {
    1e-5
}
fn default_max_pos() -> usize {
    2048
}

/// A config that cannot describe a runnable model. Names the source and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: cannot read: {err}")]
    Io {
        source_name: String,
        err: std::io::Error,
    },
    #[error("{source_name}: invalid config JSON: {err}")]
    Json {
        source_name: String,
        err: serde_json::Error,
    },
    #[error("{source_name}: field `{field}`: {reason}")]
    Field {
        source_name: String,
        field: &'static str,
        reason: String,
    },
    #[error("unknown model '{name}'; built-in configs: {known}")]
    UnknownZoo { name: String, known: String },
}

/// The built-in zoo: (name, JSON), embedded from `models/`.
pub const ZOO: &[(&str, &str)] = &[
    (
        "bitnet-125m",
        include_str!("../../../models/bitnet-125m.json"),
    ),
    (
        "bitnet-350m",
        include_str!("../../../models/bitnet-350m.json"),
    ),
    ("bitnet-1b", include_str!("../../../models/bitnet-1b.json")),
    (
        "bitnet-1.5b",
        include_str!("../../../models/bitnet-1.5b.json"),
    ),
    (
        "bitnet-2.7b",
        include_str!("../../../models/bitnet-2.7b.json"),
    ),
    (
        "bitnet-3.8b",
        include_str!("../../../models/bitnet-3.8b.json"),
    ),
    ("bitnet-7b", include_str!("../../../models/bitnet-7b.json")),
    (
        "bitnet-13b",
        include_str!("../../../models/bitnet-13b.json"),
    ),
    (
        "bitnet-b1.58-2b-4t",
        include_str!("../../../models/bitnet-b1.58-2b-4t.json"),
    ),
    (
        "1bitllm-large",
        include_str!("../../../models/1bitllm-large.json"),
    ),
    (
        "1bitllm-xl",
        include_str!("../../../models/1bitllm-xl.json"),
    ),
    (
        "1bitllm-3b",
        include_str!("../../../models/1bitllm-3b.json"),
    ),
];

impl BitNetConfig {
    /// Parse and validate a `config.json` text; `source_name` names it in errors.
    pub fn from_json_str(source_name: &str, text: &str) -> Result<Self, ConfigError> {
        let json_err = |err| ConfigError::Json {
            source_name: source_name.to_owned(),
            err,
        };
        let mut raw: serde_json::Value = serde_json::from_str(text).map_err(json_err)?;
        // transformers 5 writes `rope_parameters: {rope_theta, rope_type}`
        // instead of a top-level `rope_theta`.
        if let Some(obj) = raw.as_object_mut() {
            if !obj.contains_key("rope_theta") {
                let nested = obj
                    .get("rope_parameters")
                    .and_then(|r| r.get("rope_theta"))
                    .cloned();
                if let Some(theta) = nested {
                    obj.insert("rope_theta".into(), theta);
                }
            }
        }
        let cfg: BitNetConfig = serde_json::from_value(raw).map_err(json_err)?;
        cfg.validate(source_name)?;
        Ok(cfg)
    }

    /// Read and validate a `config.json` file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Io {
            source_name: name.clone(),
            err,
        })?;
        Self::from_json_str(&name, &text)
    }

    /// A built-in config by name (`bitnet-1b`, `bitnet-b1.58-2b-4t`, `1bitllm-xl`...).
    /// The `bitnet-` prefix may be left out for the ladder (`125m`, `13b`).
    pub fn zoo(name: &str) -> Result<Self, ConfigError> {
        let lower = name.to_ascii_lowercase();
        let found = ZOO
            .iter()
            .find(|(n, _)| *n == lower || n.strip_prefix("bitnet-") == Some(lower.as_str()));
        match found {
            Some((n, text)) => Self::from_json_str(&format!("models/{n}.json"), text),
            None => Err(ConfigError::UnknownZoo {
                name: name.to_owned(),
                known: ZOO.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Width of the query projection output (`n_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim()
    }

    /// Width of the key/value projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads() * self.head_dim()
    }

    /// Parameter count (embedding, untied head, projections, norms).
    pub fn n_params(&self) -> u64 {
        let (h, f, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let (q, kv) = (self.q_dim() as u64, self.kv_dim() as u64);
        let per_layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h + q + f;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + head + self.num_hidden_layers as u64 * per_layer + h
    }

    /// Check every relation the forward pass relies on.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let err = |field: &'static str, reason: String| ConfigError::Field {
            source_name: source_name.to_owned(),
            field,
            reason,
        };
        let positive: [(&'static str, usize); 5] = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(err(field, "must be positive".into()));
            }
        }
        let heads = self.num_attention_heads;
        let kv = self.n_kv_heads();
        if kv == 0 || heads % kv != 0 {
            return Err(err(
                "num_key_value_heads",
                format!("{kv} does not divide num_attention_heads {heads}"),
            ));
        }
        match self.head_dim {
            None if self.hidden_size % heads != 0 => {
                return Err(err(
                    "num_attention_heads",
                    format!(
                        "{heads} does not divide hidden_size {} (and no head_dim is given)",
                        self.hidden_size
                    ),
                ));
            }
            Some(0) => return Err(err("head_dim", "must be positive".into())),
            _ => {}
        }
        if self.head_dim() % 2 != 0 {
            return Err(err(
                "head_dim",
                format!("{} is odd; rotary embeddings need pairs", self.head_dim()),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(err(
                "rms_norm_eps",
                format!("{} is not a positive number", self.rms_norm_eps),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(err(
                "rope_theta",
                format!("{} is not a positive number", self.rope_theta),
            ));
        }
        if self.max_position_embeddings == 0 {
            return Err(err("max_position_embeddings", "must be positive".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_zoo_entry_parses_and_validates() {
        for (name, _) in ZOO {
            let c = BitNetConfig::zoo(name).unwrap();
            assert_eq!(c.hidden_size % c.num_attention_heads, 0, "{name}");
        }
        assert_eq!(BitNetConfig::zoo("13B").unwrap().hidden_size, 5120);
        let c = BitNetConfig::zoo("bitnet-b1.58-2b-4t").unwrap();
        assert_eq!(
            (c.n_kv_heads(), c.head_dim(), c.hidden_act),
            (5, 128, HiddenAct::Relu2)
        );
        // 2B-4T has about 2.4 B parameters (0.33 B of them the tied embedding).
        assert!(
            (2.3e9..2.5e9).contains(&(c.n_params() as f64)),
            "{}",
            c.n_params()
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let base = BitNetConfig::zoo("125m").unwrap();
        let mut c = base.clone();
        c.num_key_value_heads = Some(5);
        let e = c.validate("x.json").unwrap_err().to_string();
        assert!(
            e.contains("x.json") && e.contains("num_key_value_heads"),
            "{e}"
        );
        let mut c = base.clone();
        c.num_attention_heads = 7;
        c.num_key_value_heads = None;
        c.head_dim = None;
        let e = c.validate("x.json").unwrap_err().to_string();
        assert!(
            e.contains("num_attention_heads") && e.contains("hidden_size"),
            "{e}"
        );
        let e = BitNetConfig::from_json_str("y.json", "{\"hidden_size\": 8}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("y.json") && e.contains("intermediate_size"),
            "{e}"
        );
        assert!(BitNetConfig::zoo("nope").is_err());
    }
}
