//! A random Hugging Face BitNet checkpoint of any zoo config, written tensor
//! by tensor (for conversion benchmarks: `cargo xtask gen-checkpoint`).
//!
//! safetensors puts the whole header before the data, so each shard's header
//! is computed from the shapes first and the data then streams behind it in
//! fixed-size chunks; memory stays at one chunk whatever the model size.
//! Shards follow transformers' naming (`model-00001-of-0000N.safetensors` +
//! `model.safetensors.index.json`), one per block plus one for the embedding
//! and the head.

use crate::ConvertError;
use std::io::Write;
use std::path::{Path, PathBuf};
use tern_model::{BitNetConfig, HiddenAct, Norm, Param, Proj};
use tern_tensor::codec::quantize_into;
use tern_tensor::GgmlType;

/// Storage dtype of the generated weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenDtype {
    F16,
    BF16,
    F32,
}

impl GenDtype {
    pub fn parse(s: &str) -> Result<Self, ConvertError> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "float16" => Ok(GenDtype::F16),
            "bf16" | "bfloat16" => Ok(GenDtype::BF16),
            "f32" | "float32" => Ok(GenDtype::F32),
            _ => Err(ConvertError::Options(format!(
                "unknown dtype {s:?} (f16, bf16 or f32)"
            ))),
        }
    }
    fn st_name(self) -> &'static str {
        match self {
            GenDtype::F16 => "F16",
            GenDtype::BF16 => "BF16",
            GenDtype::F32 => "F32",
        }
    }
    fn ggml(self) -> GgmlType {
        match self {
            GenDtype::F16 => GgmlType::F16,
            GenDtype::BF16 => GgmlType::BF16,
            GenDtype::F32 => GgmlType::F32,
        }
    }
    fn size(self) -> u64 {
        match self {
            GenDtype::F32 => 4,
            _ => 2,
        }
    }
}

/// How values of a tensor are drawn: uniform in `center ± half_width`.
#[derive(Clone, Copy)]
struct Dist {
    center: f32,
    half_width: f32,
}

struct GenTensor {
    name: String,
    shape: Vec<usize>,
    dist: Dist,
}

fn io_err(path: &Path, e: std::io::Error) -> ConvertError {
    ConvertError::Input {
        file: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// xorshift64* stream: fast and deterministic per tensor.
struct Rng(u64);

impl Rng {
    fn next_unit(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn seed_of(seed: u64, name: &str) -> u64 {
    let h = name.bytes().fold(seed ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    });
    h | 1
}

/// The tensors of `cfg` in transformers' names, grouped into shards.
fn shards(cfg: &BitNetConfig) -> Vec<Vec<GenTensor>> {
    let h = cfg.hidden_size;
    let tensor = |key: Param| {
        let shape = key.shape(cfg);
        let (center, half_width) = match key {
            Param::Embed => (0.0, 0.5),
            Param::FinalNorm | Param::Norm(..) => (1.0, 0.2),
            Param::Head => (0.0, 2.0 / (h as f32).sqrt()),
            Param::Proj(..) => (0.0, (3.0 / shape[1] as f32).sqrt()),
        };
        GenTensor {
            name: key.hf_name(),
            shape,
            dist: Dist { center, half_width },
        }
    };
    let head = (!cfg.tie_word_embeddings).then_some(Param::Head);
    let first = [Param::Embed, Param::FinalNorm].into_iter().chain(head);
    let mut out = vec![first.map(tensor).collect::<Vec<_>>()];
    // transformers' state-dict order within a layer
    let norms = [Norm::Attn, Norm::Ffn, Norm::AttnSub, Norm::FfnSub];
    for l in 0..cfg.num_hidden_layers {
        let keys = norms.map(|n| Param::Norm(l, n)).into_iter();
        let keys = keys.chain(Proj::ALL.map(|p| Param::Proj(l, p)));
        out.push(keys.map(tensor).collect());
    }
    out
}

/// The safetensors header of a shard (padded to 8 bytes) and its data size.
fn header(tensors: &[GenTensor], dtype: GenDtype) -> (Vec<u8>, u64) {
    let mut obj = serde_json::Map::new();
    obj.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut off = 0u64;
    for t in tensors {
        let n: u64 = t.shape.iter().map(|&d| d as u64).product::<u64>() * dtype.size();
        obj.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype.st_name(), "shape": t.shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut text = serde_json::to_vec(&serde_json::Value::Object(obj)).unwrap_or_default();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    (text, off)
}

/// Write a random checkpoint of `cfg` (stored as `dtype`, values from
/// `seed`) into `dir`: `config.json`, shards and the index. Returns the
/// files written and the bytes of tensor data.
pub fn write_random_checkpoint(
    cfg: &BitNetConfig,
    dtype: GenDtype,
    seed: u64,
    dir: &Path,
    mut on_tensor: impl FnMut(&str, u64),
) -> Result<(Vec<PathBuf>, u64), ConvertError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let groups = shards(cfg);
    let n = groups.len();
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    const CHUNK: usize = 1 << 20;
    let mut vals = vec![0f32; CHUNK];
    let mut bytes = vec![0u8; CHUNK * 4];
    for (i, group) in groups.iter().enumerate() {
        let fname = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let path = dir.join(&fname);
        let (head, data_len) = header(group, dtype);
        let tmp = dir.join(format!(".{fname}.partial"));
        let f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
        let werr = |e| io_err(&tmp, e);
        w.write_all(&(head.len() as u64).to_le_bytes())
            .map_err(werr)?;
        w.write_all(&head).map_err(werr)?;
        for t in group {
            let mut rng = Rng(seed_of(seed, &t.name));
            let mut left: usize = t.shape.iter().product();
            let tb = left as u64 * dtype.size();
            while left > 0 {
                let k = left.min(CHUNK);
                for v in &mut vals[..k] {
                    *v = t.dist.center + t.dist.half_width * rng.next_unit();
                }
                let nb = k * dtype.size() as usize;
                quantize_into(dtype.ggml(), &vals[..k], &mut bytes[..nb]).map_err(|e| {
                    ConvertError::Input {
                        file: path.clone(),
                        reason: format!("{}: {e}", t.name),
                    }
                })?;
                w.write_all(&bytes[..nb]).map_err(werr)?;
                left -= k;
            }
            weight_map.insert(t.name.clone(), serde_json::Value::from(fname.clone()));
            on_tensor(&t.name, tb);
        }
        w.flush().map_err(werr)?;
        drop(w);
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        total += data_len;
        files.push(path);
    }
    let index = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": weight_map,
    });
    let ipath = dir.join(tern_io::safetensors::INDEX_FILE_NAME);
    write_json(&ipath, &index)?;
    files.push(ipath);
    let cpath = dir.join("config.json");
    write_json(&cpath, &hf_config(cfg, dtype))?;
    files.push(cpath);
    Ok((files, total))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), ConvertError> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    std::fs::write(path, text + "\n").map_err(|e| io_err(path, e))
}

/// A transformers-style `config.json` for `cfg`.
pub fn hf_config(cfg: &BitNetConfig, dtype: GenDtype) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.n_kv_heads(),
        "vocab_size": cfg.vocab_size,
        "hidden_act": match cfg.hidden_act { HiddenAct::Relu2 => "relu2", HiddenAct::Silu => "silu" },
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "torch_dtype": match dtype { GenDtype::F16 => "float16", GenDtype::BF16 => "bfloat16", GenDtype::F32 => "float32" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_random_checkpoint_reads_back() {
        let mut cfg = BitNetConfig::zoo("125m").unwrap();
        cfg.num_hidden_layers = 2;
        cfg.hidden_size = 64;
        cfg.intermediate_size = 96;
        cfg.num_attention_heads = 4;
        cfg.num_key_value_heads = Some(2);
        cfg.head_dim = None;
        cfg.vocab_size = 50;
        let dir = tempfile::tempdir().unwrap();
        let (files, total) =
            write_random_checkpoint(&cfg, GenDtype::BF16, 3, dir.path(), |_, _| {}).unwrap();
        assert_eq!(files.len(), 3 + 2);
        let ck = tern_io::safetensors::Checkpoint::open(dir.path()).unwrap();
        let bytes: u64 = ck.tensors().iter().map(|t| t.len).sum();
        assert_eq!(bytes, total);
        let w = tern_model::HfWeights::open(dir.path()).unwrap();
        use tern_model::WeightSource;
        let t = w.ternary(1, Proj::Down).unwrap();
        assert_eq!((t.rows(), t.cols()), (64, 96));
        let e = w.f32_tensor(Param::Embed).unwrap();
        assert!(e.iter().all(|x| x.abs() <= 0.5) && e.iter().any(|x| *x != 0.0));
    }
}
