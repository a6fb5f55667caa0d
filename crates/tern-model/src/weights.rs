//! Where weights come from: Hugging Face safetensors (full precision,
//! ternarized on load), tern/llama.cpp GGUF (packed ternary), or a seeded
//! random initialization. Every source hands out one tensor at a time, so
//! loading never holds more than one full-precision tensor in memory.

use crate::config::BitNetConfig;
use std::path::{Path, PathBuf};
use tern_backend::{TernaryCodes, TernarySource};
use tern_io::gguf::GgufFile;
use tern_io::safetensors::Checkpoint;
use tern_tensor::codec::{dequantize_into, unpack_ternary_into};
use tern_tensor::quant::absmean_ternary;
use tern_tensor::GgmlType;

pub use crate::keys::{Norm, Param, Proj};

/// A weight that is missing, malformed or inconsistent with the config.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{file}: tensor `{tensor}` is missing{hint}")]
    Missing {
        file: PathBuf,
        tensor: String,
        hint: String,
    },
    #[error("{file}: tensor `{tensor}` has shape {got:?} but the config needs {expected:?}")]
    Shape {
        file: PathBuf,
        tensor: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{file}: tensor `{tensor}`: {reason}")]
    Invalid {
        file: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("tensor `{0}` is a projection: it is read as ternary codes, not as an f32 tensor")]
    NotDense(String),
    #[error(transparent)]
    Safetensors(#[from] tern_io::safetensors::SafetensorsError),
    #[error(transparent)]
    Gguf(#[from] tern_io::gguf::GgufError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// A host-side provider of model weights.
pub trait WeightSource {
    fn config(&self) -> &BitNetConfig;
    /// A full-precision tensor (the embedding, a norm or the head), checked
    /// against its shape under the config ([`Param::shape`]). Projections
    /// are read through [`WeightSource::ternary`]; asking for one here is
    /// [`WeightError::NotDense`].
    fn f32_tensor(&self, key: Param) -> Result<Vec<f32>, WeightError>;
    /// A projection as ternary codes with a per-tensor scale.
    fn ternary(&self, layer: usize, p: Proj) -> Result<Box<dyn TernarySource + '_>, WeightError>;
    /// A projection as full-precision `[out, in]` values. By default the
    /// exact dequantization `code * scale` of [`WeightSource::ternary`];
    /// sources holding something else (a merged LoRA) override it.
    fn dense_projection(&self, layer: usize, p: Proj) -> Result<Vec<f32>, WeightError> {
        let t = self.ternary(layer, p)?;
        let (rows, cols, scale) = (t.rows(), t.cols(), t.scale());
        let mut out = vec![0f32; rows * cols];
        let mut codes = vec![0i8; cols];
        for (r, row) in out.chunks_mut(cols).enumerate() {
            t.row_codes(r, &mut codes);
            for (o, &c) in row.iter_mut().zip(&codes) {
                *o = f32::from(c) * scale;
            }
        }
        Ok(out)
    }
}

/// `Ok` for the keys [`WeightSource::f32_tensor`] serves: everything but
/// the projections.
pub fn dense_key(key: Param) -> Result<(), WeightError> {
    match key {
        Param::Proj(..) => Err(WeightError::NotDense(key.name())),
        Param::Embed | Param::FinalNorm | Param::Head | Param::Norm(..) => Ok(()),
    }
}

/// Ternary codes owned in memory (one quantized tensor).
pub type OwnedTernary = TernaryCodes<Vec<i8>>;

fn check_shape(
    file: &Path,
    tensor: &str,
    got: &[usize],
    expected: &[usize],
) -> Result<(), WeightError> {
    if got != expected {
        return Err(WeightError::Shape {
            file: file.to_path_buf(),
            tensor: tensor.to_owned(),
            got: got.to_vec(),
            expected: expected.to_vec(),
        });
    }
    Ok(())
}

fn check_finite(file: &Path, tensor: &str, v: &[f32]) -> Result<(), WeightError> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(WeightError::Invalid {
            file: file.to_path_buf(),
            tensor: tensor.to_owned(),
            reason: format!("element {i} is {} (weights must be finite)", v[i]),
        });
    }
    Ok(())
}

/// Codes and scale of a weight whose values are exactly `{-s, 0, s}` for one
/// `s > 0`; `None` for anything else (including an all-zero weight).
fn ternary_values(w: &[f32]) -> Option<(Vec<i8>, f32)> {
    let s = w.iter().fold(0f32, |m, x| m.max(x.abs()));
    if !(s > 0.0 && s.is_finite()) {
        return None;
    }
    w.iter()
        .map(|&x| match x {
            _ if x == s => Some(1i8),
            _ if x == -s => Some(-1),
            _ if x == 0.0 => Some(0),
            _ => None,
        })
        .collect::<Option<Vec<i8>>>()
        .map(|codes| (codes, s))
}

/// Absmean-ternarize a full-precision `[rows, cols]` weight.
pub fn ternarize(rows: usize, cols: usize, w: &[f32]) -> OwnedTernary {
    let mut codes = vec![0i8; w.len()];
    let scale = absmean_ternary(w, &mut codes);
    OwnedTernary {
        rows,
        cols,
        codes,
        scale,
    }
}

// ---------------------------------------------------------------------------
// Hugging Face safetensors

/// A transformers BitNet checkpoint folder (`config.json` + safetensors).
pub struct HfWeights {
    cfg: BitNetConfig,
    ckpt: Checkpoint,
    config_path: PathBuf,
    /// `quantization_config.linear_class` of a pre-packed checkpoint.
    linear_class: Option<String>,
}

/// How a packed checkpoint's `weight_scale` relates to the weights.
fn packed_scale(linear_class: &str, stored: f32) -> Option<f32> {
    match linear_class {
        // AutoBitLinear multiplies the output by `weight_scale` (about mean|W|).
        "autobitlinear" => Some(stored),
        // BitLinear divides the output by `weight_scale` (about 1/mean|W|).
        "bitlinear" => Some(1.0 / stored),
        _ => None,
    }
}

impl HfWeights {
    /// Open a folder holding `config.json` and one or many safetensors files.
    pub fn open(dir: &Path) -> Result<Self, WeightError> {
        let config_path = dir.join("config.json");
        let cfg = BitNetConfig::from_file(&config_path)?;
        let linear_class = std::fs::read_to_string(&config_path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                v.get("quantization_config")?
                    .get("linear_class")?
                    .as_str()
                    .map(str::to_owned)
            });
        let ckpt = Checkpoint::open(dir)?;
        Ok(HfWeights {
            cfg,
            ckpt,
            config_path,
            linear_class,
        })
    }

    /// A pre-packed projection: U8 `[out/4, in]` holding `code + 1` in bit
    /// pairs, row `r` of the matrix in pair `r / (out/4)` of packed row
    /// `r % (out/4)`, plus a `weight_scale` whose meaning `linear_class` gives.
    fn packed(&self, name: &str, rows: usize, cols: usize) -> Result<OwnedTernary, WeightError> {
        let e = self.ckpt.entry(name)?;
        let file = self.ckpt.file_of(e).to_path_buf();
        let invalid = |reason: String| WeightError::Invalid {
            file: file.clone(),
            tensor: name.to_owned(),
            reason,
        };
        if rows % 4 != 0 {
            return Err(invalid(format!(
                "{rows} output rows cannot be packed four to a byte"
            )));
        }
        check_shape(&file, name, &e.shape, &[rows / 4, cols])?;
        let class = self.linear_class.as_deref().ok_or_else(|| WeightError::Invalid {
            file: self.config_path.clone(),
            tensor: "quantization_config.linear_class".into(),
            reason: format!(
                "`{name}` is pre-packed (U8), which needs linear_class \"autobitlinear\" or \"bitlinear\" to give its weight_scale a meaning"
            ),
        })?;
        let scale_name = format!("{}_scale", name);
        let stored = self
            .read(std::slice::from_ref(&scale_name), &[1])
            .or_else(|_| self.read(std::slice::from_ref(&scale_name), &[]))?[0];
        let scale = packed_scale(class, stored).ok_or_else(|| WeightError::Invalid {
            file: self.config_path.clone(),
            tensor: "quantization_config.linear_class".into(),
            reason: format!("unknown linear_class {class:?} (expected autobitlinear or bitlinear)"),
        })?;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(invalid(format!(
                "weight_scale {stored} gives no usable scale"
            )));
        }
        let data = read_entry_bytes(&file, e)?;
        let r4 = rows / 4;
        let mut codes = vec![0i8; rows * cols];
        for r in 0..rows {
            let (src, shift) = (&data[(r % r4) * cols..(r % r4 + 1) * cols], 2 * (r / r4));
            for (c, (&b, o)) in src
                .iter()
                .zip(&mut codes[r * cols..(r + 1) * cols])
                .enumerate()
            {
                let u = (b >> shift) & 3;
                if u == 3 {
                    return Err(invalid(format!(
                        "row {r}, column {c}: code 3 is not ternary"
                    )));
                }
                *o = u as i8 - 1;
            }
        }
        Ok(OwnedTernary {
            rows,
            cols,
            codes,
            scale,
        })
    }

    fn read(&self, names: &[String], shape: &[usize]) -> Result<Vec<f32>, WeightError> {
        let found = names.iter().find(|n| self.ckpt.get(n).is_some());
        let Some(name) = found else {
            return Err(WeightError::Missing {
                file: self.ckpt.root().to_path_buf(),
                tensor: names.join("` or `"),
                hint: String::new(),
            });
        };
        let e = self.ckpt.entry(name)?;
        let file = self.ckpt.file_of(e).to_path_buf();
        check_shape(&file, name, &e.shape, shape)?;
        if !tern_io::safetensors::is_f32_convertible(e.dtype) {
            // The checkpoint's own error names the dtype, the tensor and the file.
            return Err(self.ckpt.to_f32(name).err().map_or_else(
                || WeightError::Invalid {
                    file: file.clone(),
                    tensor: name.to_owned(),
                    reason: format!("dtype {} cannot be read as f32", e.dtype),
                },
                WeightError::from,
            ));
        }
        let raw = read_entry_bytes(&file, e)?;
        let mut v = vec![0f32; e.numel()];
        tern_io::safetensors::decode_f32(e.dtype, &raw, &mut v);
        check_finite(&file, name, &v)?;
        Ok(v)
    }
}

/// The bytes of one safetensors entry, read with ordinary file reads rather
/// than through the memory map: pages touched through a map stay in the
/// process's resident set until it exits, so a converter streaming a 14 GB
/// checkpoint through the map would end up "using" 14 GB. Read-and-drop keeps
/// the resident set at one tensor.
fn read_entry_bytes(
    file: &Path,
    e: &tern_io::safetensors::TensorEntry,
) -> Result<Vec<u8>, WeightError> {
    use std::io::{Read, Seek, SeekFrom};
    let io_err = |err: std::io::Error| WeightError::Invalid {
        file: file.to_path_buf(),
        tensor: e.name.clone(),
        reason: format!("cannot read {} bytes at offset {}: {err}", e.len, e.offset),
    };
    let mut f = std::fs::File::open(file).map_err(io_err)?;
    f.seek(SeekFrom::Start(e.offset)).map_err(io_err)?;
    let mut buf = vec![0u8; e.len as usize];
    f.read_exact(&mut buf).map_err(io_err)?;
    Ok(buf)
}

impl WeightSource for HfWeights {
    fn config(&self) -> &BitNetConfig {
        &self.cfg
    }
    fn f32_tensor(&self, key: Param) -> Result<Vec<f32>, WeightError> {
        dense_key(key)?;
        self.read(&key.hf_names(), &key.shape(&self.cfg))
    }
    fn ternary(&self, layer: usize, p: Proj) -> Result<Box<dyn TernarySource + '_>, WeightError> {
        let (rows, cols) = p.shape(&self.cfg);
        let name = Param::Proj(layer, p).hf_name();
        if self.ckpt.get(&name).map(|e| e.dtype) == Some(tern_io::safetensors::Dtype::U8) {
            return Ok(Box::new(self.packed(&name, rows, cols)?));
        }
        let w = self.read(std::slice::from_ref(&name), &[rows, cols])?;
        Ok(Box::new(ternarize(rows, cols, &w)))
    }
}

// ---------------------------------------------------------------------------
// GGUF (llama.cpp `bitnet` names)

/// A GGUF model file with llama.cpp's `bitnet` tensor names.
pub struct GgufWeights {
    cfg: BitNetConfig,
    file: GgufFile,
    /// Projections that held full-precision values and were ternarized on load.
    reternarized: std::cell::RefCell<Vec<String>>,
}

/// Metadata key tern writes for the feed-forward activation (llama.cpp's
/// `bitnet` graph has none and runs SiLU).
pub const GGUF_ACT_KEY: &str = "tern.hidden_act";

impl GgufWeights {
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let file = GgufFile::open(path)?;
        let cfg = config_from_gguf(&file)?;
        Ok(GgufWeights {
            cfg,
            file,
            reternarized: Default::default(),
        })
    }

    /// Projections read so far that held full-precision values (a merged
    /// LoRA, an unquantized export) and were ternarized on load: lossy, so
    /// callers should say so.
    pub fn reternarized(&self) -> Vec<String> {
        self.reternarized.borrow().clone()
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn info(&self, name: &str) -> Result<&tern_io::gguf::TensorInfo, WeightError> {
        self.file.tensor(name).ok_or_else(|| WeightError::Missing {
            file: self.file.path().to_path_buf(),
            tensor: name.to_owned(),
            hint: String::new(),
        })
    }

    fn invalid(&self, tensor: &str, reason: String) -> WeightError {
        WeightError::Invalid {
            file: self.file.path().to_path_buf(),
            tensor: tensor.to_owned(),
            reason,
        }
    }

    fn dense(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightError> {
        let info = self.info(name)?;
        let got: Vec<usize> = info.shape().iter().map(|&d| d as usize).collect();
        check_shape(self.file.path(), name, &got, shape)?;
        let mut out = vec![0f32; got.iter().product()];
        dequantize_into(info.ty, self.file.tensor_data(info), &mut out)
            .map_err(|e| self.invalid(name, e.to_string()))?;
        check_finite(self.file.path(), name, &out)?;
        Ok(out)
    }
}

fn config_from_gguf(f: &GgufFile) -> Result<BitNetConfig, WeightError> {
    let arch = f.get_str("general.architecture")?.to_owned();
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| -> Result<usize, WeightError> {
        let name = key(k);
        f.get(&name)
            .and_then(|v| v.to_u64())
            .map(|v| v as usize)
            .ok_or_else(|| WeightError::Invalid {
                file: f.path().to_path_buf(),
                tensor: name.clone(),
                reason: "missing or not an unsigned integer metadata key".into(),
            })
    };
    let fl = |k: &str, default: f32| -> f32 {
        f.get(&key(k))
            .and_then(|v| v.to_f64())
            .map_or(default, |v| v as f32)
    };
    let act = match f.get(GGUF_ACT_KEY).and_then(|v| v.as_str()) {
        Some(s) => s.to_owned(),
        None if arch == "bitnet-b1.58" => "relu2".into(),
        None => "silu".into(),
    };
    let heads = u("attention.head_count")?;
    let embd_name = Param::Embed.gguf_name();
    let embd = f.tensor(&embd_name).ok_or_else(|| WeightError::Missing {
        file: f.path().to_path_buf(),
        tensor: embd_name.clone(),
        hint: String::new(),
    })?;
    let vocab = embd.ne.get(1).copied().unwrap_or(0) as usize;
    let json = serde_json::json!({
        "hidden_size": u("embedding_length")?,
        "intermediate_size": u("feed_forward_length")?,
        "num_hidden_layers": u("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": u("attention.head_count_kv").unwrap_or(heads),
        "head_dim": u("attention.key_length").ok(),
        "vocab_size": vocab,
        "hidden_act": act,
        "rope_theta": fl("rope.freq_base", 10_000.0),
        "rms_norm_eps": fl("attention.layer_norm_rms_epsilon", 1e-5),
        "tie_word_embeddings": f.tensor(&Param::Head.gguf_name()).is_none(),
        "max_position_embeddings": u("context_length")?,
        "bos_token_id": f.get("tokenizer.ggml.bos_token_id").and_then(|v| v.to_u64()),
        "eos_token_id": f.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u64()),
    });
    Ok(BitNetConfig::from_json_str(
        &f.path().display().to_string(),
        &json.to_string(),
    )?)
}

/// A ternary projection read row by row from packed GGUF bytes.
struct GgufTernary<'a> {
    ty: GgmlType,
    data: &'a [u8],
    rows: usize,
    cols: usize,
    row_bytes: usize,
    scale: f32,
}

impl TernarySource for GgufTernary<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn scale(&self) -> f32 {
        self.scale
    }
    fn row_codes(&self, r: usize, out: &mut [i8]) {
        let src = &self.data[r * self.row_bytes..(r + 1) * self.row_bytes];
        let mut scales = vec![0f32; self.cols / self.ty.block_size()];
        // Validated when the source was built: lengths match and codes decode.
        unpack_ternary_into(self.ty, src, out, &mut scales).expect("validated GGUF ternary row");
    }
}

impl WeightSource for GgufWeights {
    fn config(&self) -> &BitNetConfig {
        &self.cfg
    }

    fn f32_tensor(&self, key: Param) -> Result<Vec<f32>, WeightError> {
        dense_key(key)?;
        self.dense(&key.gguf_name(), &key.shape(&self.cfg))
    }

    fn ternary(&self, layer: usize, p: Proj) -> Result<Box<dyn TernarySource + '_>, WeightError> {
        let (rows, cols) = p.shape(&self.cfg);
        let key = Param::Proj(layer, p);
        let name = key.gguf_name();
        let info = self.info(&name)?;
        let scale_tensor = key
            .gguf_scale_name()
            .and_then(|scale| self.file.tensor(&scale));
        let extra = match scale_tensor {
            Some(s) => {
                let mut v = [0f32];
                if s.ne.iter().product::<u64>() != 1 {
                    return Err(
                        self.invalid(&name, "its .scale tensor is not a single value".into())
                    );
                }
                dequantize_into(s.ty, self.file.tensor_data(s), &mut v)
                    .map_err(|e| self.invalid(&name, e.to_string()))?;
                v[0]
            }
            None => 1.0,
        };
        match info.ty {
            GgmlType::TQ1_0 | GgmlType::TQ2_0 => {
                let got: Vec<usize> = info.shape().iter().map(|&d| d as usize).collect();
                check_shape(self.file.path(), &name, &got, &[rows, cols])?;
                let data = self.file.tensor_data(info);
                let row_bytes = data.len() / rows.max(1);
                // Every block must share one scale (BitNet's per-tensor absmean);
                // all-zero blocks store d = 0. Decoding each row once here also
                // proves that every code is valid.
                let mut codes = vec![0i8; cols];
                let mut scales = vec![0f32; cols / info.ty.block_size()];
                let mut d = 0f32;
                for r in 0..rows {
                    let src = &data[r * row_bytes..(r + 1) * row_bytes];
                    unpack_ternary_into(info.ty, src, &mut codes, &mut scales)
                        .map_err(|e| self.invalid(&name, format!("row {r}: {e}")))?;
                    for &s in scales.iter().filter(|s| **s != 0.0) {
                        if d == 0.0 {
                            d = s;
                        } else if s != d {
                            return Err(self.invalid(
                                &name,
                                format!(
                                    "row {r} mixes block scales {d} and {s}; a BitNet \
                                     projection has one scale per tensor"
                                ),
                            ));
                        }
                    }
                }
                Ok(Box::new(GgufTernary {
                    ty: info.ty,
                    data,
                    rows,
                    cols,
                    row_bytes,
                    scale: d * extra,
                }))
            }
            GgmlType::I2_S => {
                let got: Vec<usize> = info.shape().iter().map(|&d| d as usize).collect();
                check_shape(self.file.path(), &name, &got, &[rows, cols])?;
                let mut codes = vec![0i8; rows * cols];
                let mut scale = [0f32];
                unpack_ternary_into(info.ty, self.file.tensor_data(info), &mut codes, &mut scale)
                    .map_err(|e| self.invalid(&name, e.to_string()))?;
                Ok(Box::new(OwnedTernary {
                    rows,
                    cols,
                    codes,
                    scale: scale[0] * extra,
                }))
            }
            _ if scale_tensor.is_some() => {
                // Codes stored densely (F32, F16, Q8_0) next to their f32 scale.
                // Q8_0 holds a code as 127 * f16(1/127), within 5e-4 of it.
                let w = self.dense(&name, &[rows, cols])?;
                let mut codes = Vec::with_capacity(w.len());
                for (i, &x) in w.iter().enumerate() {
                    let c = x.round();
                    if (x - c).abs() > 1e-2 || c.abs() > 1.0 {
                        return Err(self.invalid(
                            &name,
                            format!(
                                "element {i} is {x}, not a ternary code (a .scale tensor \
                                 says the weight holds codes -1, 0, 1)"
                            ),
                        ));
                    }
                    codes.push(c as i8);
                }
                Ok(Box::new(OwnedTernary {
                    rows,
                    cols,
                    codes,
                    scale: extra,
                }))
            }
            _ => {
                let w = self.dense(&name, &[rows, cols])?;
                // A weight that already holds `{-s, 0, s}` (the bitnet.cpp
                // fork's dense fallback, or a llama.cpp-style baked-in scale)
                // is used as is; anything else is a full-precision master,
                // ternarized on load (absmean).
                match ternary_values(&w) {
                    Some((codes, scale)) => Ok(Box::new(OwnedTernary {
                        rows,
                        cols,
                        codes,
                        scale,
                    })),
                    None => {
                        self.reternarized.borrow_mut().push(name.clone());
                        Ok(Box::new(ternarize(rows, cols, &w)))
                    }
                }
            }
        }
    }
}
