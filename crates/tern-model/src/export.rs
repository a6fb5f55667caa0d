//! Writing a model as GGUF: the one GGUF model writer of tern (the converter
//! in `tools/tern-convert` and the tests both go through [`export`]).
//!
//! Two targets:
//! - [`Target::LlamaCpp`]: llama.cpp's `bitnet` architecture. Projections are
//!   stored as pure ternary codes (block scale `d = 1`) with the exact f32
//!   per-tensor scale in a separate `blk.N.<proj>.scale` tensor, which
//!   llama.cpp's `bitnet` graph multiplies after the matmul. Keeping the scale
//!   out of the f16 block header keeps the file exact: the codes and the f32
//!   scale are what the model computes with. I2_S keeps its scale in the
//!   tensor's own f32 trailer instead (no `.scale` tensor).
//! - [`Target::BitnetCpp`]: the bitnet.cpp fork's `bitnet-b1.58`
//!   architecture: same tensor names, keys under `bitnet-b1.58.`, I2_S
//!   projections with the scale in the trailer and no `.scale` tensors; a
//!   projection stored densely (fallback, or `--type f16/f32/q8_0`) holds
//!   `code * scale`, as the fork's own converter writes it (F16 rounds the
//!   scale to f16; Q8_0 stores `code * q` with an f16 `d` such that `q * d`
//!   is the closest such product to the scale, typically within 1e-5).
//!
//! A projection whose rows do not fill whole blocks of the chosen type (the
//! 1bitLLM models' 5460 and 8640) can fall back to Q8_0 (rows a multiple of
//! 32) or F16, both of which hold ternary values exactly; the report lists
//! every such tensor. Tensors stream to the file one at a time; the file
//! appears at `path` only when complete.

use crate::keys::{LayerTensor, Param, Proj};
use crate::weights::{WeightError, WeightSource, GGUF_ACT_KEY};
use crate::{BitNetConfig, HiddenAct};
use std::io::Write;
use std::path::Path;
use tern_io::gguf::{GgufWriter, TensorSink, Value};
use tern_tensor::codec::{pack_ternary_into, quantize_into};
use tern_tensor::GgmlType;

/// Types a projection can be written as.
pub const PROJ_TYPES: [GgmlType; 6] = [
    GgmlType::TQ2_0,
    GgmlType::TQ1_0,
    GgmlType::I2_S,
    GgmlType::Q8_0,
    GgmlType::F16,
    GgmlType::F32,
];

/// Types the token embedding (and an untied head) can be written as.
pub const EMBED_TYPES: [GgmlType; 3] = [GgmlType::F16, GgmlType::Q8_0, GgmlType::F32];

/// Which runtime the file is laid out for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// llama.cpp's `bitnet` architecture (and tern).
    LlamaCpp,
    /// The bitnet.cpp fork's `bitnet-b1.58` architecture (and tern).
    BitnetCpp,
}

impl Target {
    /// `general.architecture` of the target.
    pub fn arch(self) -> &'static str {
        match self {
            Target::LlamaCpp => "bitnet",
            Target::BitnetCpp => "bitnet-b1.58",
        }
    }

    /// Projection types the target's runtime can load.
    pub fn proj_types(self) -> &'static [GgmlType] {
        match self {
            Target::LlamaCpp => &PROJ_TYPES,
            Target::BitnetCpp => &[GgmlType::I2_S, GgmlType::Q8_0, GgmlType::F16, GgmlType::F32],
        }
    }
}

/// How to write a model.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Type of the seven projections of every block.
    pub proj_type: GgmlType,
    /// Type of the token embedding and of an untied output head.
    pub embed_type: GgmlType,
    pub target: Target,
    /// Store a projection whose rows do not fill whole `proj_type` blocks as
    /// Q8_0 (or F16) instead of failing.
    pub fallback: bool,
    /// `general.name`, if any.
    pub name: Option<String>,
    /// Further metadata (the tokenizer keys), written after the model keys.
    pub metadata: Vec<(String, Value)>,
    /// Write projections as full-precision values
    /// ([`WeightSource::dense_projection`]) in `proj_type` (F16 or F32), with no
    /// `.scale` tensors: what `tern merge` writes. Runtimes read such files as
    /// ordinary float weights; tern re-ternarizes them on load (lossy).
    pub dense_projections: bool,
}

impl ExportOptions {
    /// Projections as `proj_type`, embedding as `embed_type`, llama.cpp names,
    /// no fallback, no extra metadata.
    pub fn new(proj_type: GgmlType, embed_type: GgmlType) -> Self {
        ExportOptions {
            proj_type,
            embed_type,
            target: Target::LlamaCpp,
            fallback: false,
            name: None,
            metadata: Vec::new(),
            dense_projections: false,
        }
    }
}

/// A projection stored in another type than the one asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// GGUF tensor name (`blk.3.ffn_down.weight`).
    pub tensor: String,
    /// Row length (the `in` features).
    pub row_len: usize,
    /// The type asked for and its block size.
    pub wanted: GgmlType,
    /// The type written.
    pub used: GgmlType,
}

/// What [`export`] wrote.
#[derive(Clone, Debug, Default)]
pub struct ExportReport {
    pub tensors: usize,
    /// Bytes of tensor data (without header and padding).
    pub data_bytes: u64,
    pub fallbacks: Vec<Fallback>,
}

/// Receives progress while [`export`] writes; `()` ignores it.
pub trait ExportProgress {
    /// All tensors are declared: `tensors` of them, `bytes` of data in all.
    fn begin(&mut self, _tensors: usize, _bytes: u64) {}
    /// One tensor (`name`, `bytes` of data) is written.
    fn tensor_written(&mut self, _name: &str, _bytes: u64) {}
}

impl ExportProgress for () {}

/// `general.file_type` of a projection type (llama.cpp's `LLAMA_FTYPE_*`;
/// 40 is the bitnet.cpp fork's I2_S).
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        GgmlType::TQ1_0 => 36,
        GgmlType::TQ2_0 => 37,
        GgmlType::I2_S => 40,
        _ => 0,
    }
}

/// Write every weight of `src` to `path` with llama.cpp names. `proj_ty` is
/// one of [`PROJ_TYPES`]; `dense_ty` (F32, F16 or Q8_0) holds the embedding
/// and head. Rows that do not fill whole blocks are an error.
pub fn write_gguf(
    src: &dyn WeightSource,
    path: &Path,
    proj_ty: GgmlType,
    dense_ty: GgmlType,
) -> Result<(), WeightError> {
    export(src, path, &ExportOptions::new(proj_ty, dense_ty), &mut ()).map(|_| ())
}

/// The type a `[rows, cols]` projection is stored as under `opts`, or the
/// reason it cannot be stored.
fn proj_storage(opts: &ExportOptions, cols: usize) -> Result<GgmlType, String> {
    let ty = opts.proj_type;
    if cols % ty.block_size() == 0 {
        return Ok(ty);
    }
    if !opts.fallback {
        return Err(format!(
            "rows of {cols} values are not a multiple of the {ty} block size {}",
            ty.block_size()
        ));
    }
    Ok(if cols % GgmlType::Q8_0.block_size() == 0 {
        GgmlType::Q8_0
    } else {
        GgmlType::F16
    })
}

/// One tensor of the output, in file order.
enum Item {
    /// A full-precision tensor, stored as `ty`.
    Dense { key: Param, ty: GgmlType },
    /// A projection's codes, stored as `ty`.
    Proj { layer: usize, p: Proj, ty: GgmlType },
    /// A projection as full-precision values ([`ExportOptions::dense_projections`]).
    DenseProj { layer: usize, p: Proj, ty: GgmlType },
    /// The f32 `.scale` of the projection just before.
    Scale,
}

/// Write every weight of `src` to `path` as GGUF under `opts`, reporting
/// progress to `progress`. Nothing appears at `path` unless every tensor was
/// written.
pub fn export(
    src: &dyn WeightSource,
    path: &Path,
    opts: &ExportOptions,
    progress: &mut dyn ExportProgress,
) -> Result<ExportReport, WeightError> {
    let cfg = src.config().clone();
    let bad = |tensor: &str, reason: String| WeightError::Invalid {
        file: path.to_path_buf(),
        tensor: tensor.to_owned(),
        reason,
    };
    let (proj_ty, dense_ty, target) = (opts.proj_type, opts.embed_type, opts.target);
    if opts.dense_projections {
        if !matches!(proj_ty, GgmlType::F16 | GgmlType::F32) || target != Target::LlamaCpp {
            return Err(bad(
                "",
                format!(
                    "full-precision projections are written as F16 or F32 for the llama.cpp \
                     target, not {proj_ty} for {}",
                    target.arch()
                ),
            ));
        }
    } else if !target.proj_types().contains(&proj_ty) {
        return Err(bad(
            "",
            format!(
                "{proj_ty} cannot hold ternary projections for the {} architecture (use one of {})",
                target.arch(),
                names(target.proj_types())
            ),
        ));
    }
    if !EMBED_TYPES.contains(&dense_ty) {
        return Err(bad(
            &Param::Embed.gguf_name(),
            format!(
                "{dense_ty} is not supported for the embedding (use one of {})",
                names(&EMBED_TYPES)
            ),
        ));
    }
    let h = cfg.hidden_size;
    if h % dense_ty.block_size() != 0 {
        return Err(bad(
            &Param::Embed.gguf_name(),
            format!(
                "rows of {h} values are not a multiple of the {dense_ty} block size {}",
                dense_ty.block_size()
            ),
        ));
    }

    let mut w = GgufWriter::create(path)?;
    write_model_kv(&mut w, &cfg, opts)?;
    for (k, v) in &opts.metadata {
        w.add_kv(k.clone(), v.clone())?;
    }

    // Declare every tensor first (GGUF puts the infos before the data).
    let mut items: Vec<(String, Item)> = Vec::new();
    let mut report = ExportReport::default();
    let f32_ = GgmlType::F32;
    let dense = |key: Param| {
        let ty = match key {
            Param::Embed | Param::Head => dense_ty,
            Param::FinalNorm | Param::Norm(..) | Param::Proj(..) => f32_,
        };
        (key.gguf_name(), Item::Dense { key, ty })
    };
    items.push(dense(Param::Embed));
    for l in 0..cfg.num_hidden_layers {
        for key in LayerTensor::FILE_ORDER.map(|t| t.at(l)) {
            let Param::Proj(_, p) = key else {
                items.push(dense(key));
                continue;
            };
            let (_, cols) = p.shape(&cfg);
            let name = key.gguf_name();
            let ty = proj_storage(opts, cols).map_err(|r| bad(&name, r))?;
            if ty != proj_ty {
                report.fallbacks.push(Fallback {
                    tensor: name.clone(),
                    row_len: cols,
                    wanted: proj_ty,
                    used: ty,
                });
            }
            if opts.dense_projections {
                items.push((name, Item::DenseProj { layer: l, p, ty }));
            } else {
                items.push((name, Item::Proj { layer: l, p, ty }));
            }
            if target == Target::LlamaCpp && ty != GgmlType::I2_S && !opts.dense_projections {
                let scale = key.gguf_scale_name().expect("a projection has a scale");
                items.push((scale, Item::Scale));
            }
        }
    }
    items.push(dense(Param::FinalNorm));
    if !cfg.tie_word_embeddings {
        items.push(dense(Param::Head));
    }
    for (name, item) in &items {
        let (ty, ne): (GgmlType, Vec<u64>) = match item {
            Item::Dense { key, ty } => {
                let shape = key.shape(&cfg);
                (*ty, shape.iter().rev().map(|&d| d as u64).collect())
            }
            Item::Proj { p, ty, .. } | Item::DenseProj { p, ty, .. } => {
                let (rows, cols) = p.shape(&cfg);
                (*ty, vec![cols as u64, rows as u64])
            }
            Item::Scale => (GgmlType::F32, vec![1]),
        };
        w.add_tensor_info(name.clone(), ty, &ne)?;
    }
    let total: u64 = w.tensor_infos().iter().map(|t| t.n_bytes).sum();
    progress.begin(items.len(), total);

    let mut sink = w.begin_data()?;
    let mut scale = 1f32;
    for (name, item) in &items {
        let bytes = sink.next_tensor().map_or(0, |t| t.n_bytes);
        match item {
            Item::Dense { key, ty } => {
                let vals = src.f32_tensor(*key)?;
                let row = *key.shape(&cfg).last().unwrap_or(&1);
                write_rows(&mut sink, name, *ty, &vals, row)
                    .map_err(|e| with_tensor(e, path, name))?;
            }
            Item::Proj { layer, p, ty } => {
                let t = src.ternary(*layer, *p)?;
                scale = t.scale();
                write_proj(&mut sink, name, *ty, target, t.as_ref())
                    .map_err(|e| with_tensor(e, path, name))?;
            }
            Item::DenseProj { layer, p, ty } => {
                let vals = src.dense_projection(*layer, *p)?;
                write_rows(&mut sink, name, *ty, &vals, p.shape(&cfg).1)
                    .map_err(|e| with_tensor(e, path, name))?;
            }
            Item::Scale => sink.write_tensor(name, &scale.to_le_bytes())?,
        }
        progress.tensor_written(name, bytes);
        report.tensors += 1;
        report.data_bytes += bytes;
    }
    sink.finish()?;
    Ok(report)
}

fn names(types: &[GgmlType]) -> String {
    types
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Attach the output file and tensor to a codec error that lacks them.
fn with_tensor(e: WeightError, path: &Path, name: &str) -> WeightError {
    match e {
        WeightError::Invalid { tensor, reason, .. } if tensor.is_empty() => WeightError::Invalid {
            file: path.to_path_buf(),
            tensor: name.to_owned(),
            reason,
        },
        other => other,
    }
}

fn codec_err(reason: String) -> WeightError {
    WeightError::Invalid {
        file: Default::default(),
        tensor: String::new(),
        reason,
    }
}

/// The hyper-parameter keys of the target architecture.
fn write_model_kv(
    w: &mut GgufWriter,
    cfg: &BitNetConfig,
    opts: &ExportOptions,
) -> Result<(), WeightError> {
    let arch = opts.target.arch();
    let k = |s: &str| format!("{arch}.{s}");
    let u = |x: usize| x as u32;
    let act = match cfg.hidden_act {
        HiddenAct::Relu2 => "relu2",
        HiddenAct::Silu => "silu",
    };
    w.add_kv("general.architecture", arch)?;
    w.add_kv("general.type", "model")?;
    if let Some(name) = &opts.name {
        w.add_kv("general.name", name.as_str())?;
    }
    w.add_kv("general.quantization_version", 2u32)?;
    w.add_kv("general.file_type", file_type(opts.proj_type))?;
    w.add_kv(k("context_length"), u(cfg.max_position_embeddings))?;
    w.add_kv(k("embedding_length"), u(cfg.hidden_size))?;
    w.add_kv(k("feed_forward_length"), u(cfg.intermediate_size))?;
    w.add_kv(k("block_count"), u(cfg.num_hidden_layers))?;
    w.add_kv(k("attention.head_count"), u(cfg.num_attention_heads))?;
    w.add_kv(k("attention.head_count_kv"), u(cfg.n_kv_heads()))?;
    w.add_kv(k("attention.key_length"), u(cfg.head_dim()))?;
    w.add_kv(k("attention.value_length"), u(cfg.head_dim()))?;
    w.add_kv(k("rope.dimension_count"), u(cfg.head_dim()))?;
    w.add_kv(k("rope.freq_base"), cfg.rope_theta)?;
    if opts.target == Target::BitnetCpp {
        // What the fork's converter writes for its bitnet models.
        w.add_kv(k("rope.scaling.type"), "linear")?;
        w.add_kv(k("rope.scaling.factor"), 1.0f32)?;
    }
    w.add_kv(k("attention.layer_norm_rms_epsilon"), cfg.rms_norm_eps)?;
    w.add_kv(k("vocab_size"), u(cfg.vocab_size))?;
    w.add_kv(GGUF_ACT_KEY, act)?;
    let has = |key: &str| opts.metadata.iter().any(|(k, _)| k == key);
    if let Some(id) = cfg
        .bos_token_id
        .filter(|_| !has("tokenizer.ggml.bos_token_id"))
    {
        w.add_kv("tokenizer.ggml.bos_token_id", id)?;
    }
    if let Some(id) = cfg
        .eos_token_id
        .filter(|_| !has("tokenizer.ggml.eos_token_id"))
    {
        w.add_kv("tokenizer.ggml.eos_token_id", id)?;
    }
    Ok(())
}

/// Quantize `vals` (rows of `cols`) as `ty`, row by row.
fn write_rows(
    sink: &mut TensorSink,
    name: &str,
    ty: GgmlType,
    vals: &[f32],
    cols: usize,
) -> Result<(), WeightError> {
    let row_bytes = ty
        .row_bytes(cols as u64)
        .map_err(|e| codec_err(e.to_string()))? as usize;
    let mut buf = vec![0u8; row_bytes];
    sink.write_tensor_with(name, |out| {
        for row in vals.chunks(cols) {
            quantize_into(ty, row, &mut buf).map_err(std::io::Error::other)?;
            out.write_all(&buf)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// The f16 bit pattern of `x` (round to nearest even).
fn f16_bits(x: f32) -> Result<u16, WeightError> {
    let mut b = [0u8; 2];
    quantize_into(GgmlType::F16, &[x], &mut b).map_err(|e| codec_err(e.to_string()))?;
    Ok(u16::from_le_bytes(b))
}

/// Q8_0 blocks holding `codes * q` as the int8 values with block scale `d`
/// (f16 bits): each weight reads back as exactly `code * q * d`.
fn q8_0_codes(codes: &[i8], q: i8, d: u16, out: &mut [u8]) {
    for (c, b) in codes.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        b[..2].copy_from_slice(&d.to_le_bytes());
        for (o, &x) in b[2..].iter_mut().zip(c) {
            *o = (x * q) as u8;
        }
    }
}

/// The int8 magnitude `q` and f16 block scale `d` whose product (exact in
/// f32) is closest to `scale`: an f16 alone is within 2^-11 of it, the best
/// of 127 products is typically within ~1e-5.
fn q8_0_scale(scale: f32) -> Result<(i8, u16), WeightError> {
    let mut best = (1i8, f16_bits(scale)?, f32::INFINITY);
    for q in (1..=127i8).rev() {
        let d = f16_bits(scale / f32::from(q))?;
        let mut v = [0f32];
        tern_tensor::codec::dequantize_into(GgmlType::F16, &d.to_le_bytes(), &mut v)
            .map_err(|e| codec_err(e.to_string()))?;
        let err = (v[0] * f32::from(q) - scale).abs();
        if err < best.2 {
            best = (q, d, err);
        }
    }
    Ok((best.0, best.1))
}

/// Write one projection's codes as `ty`. For the llama.cpp target the stored
/// values are the bare codes (the scale goes to `.scale`); for the
/// bitnet.cpp target dense types hold `code * scale`.
fn write_proj(
    sink: &mut TensorSink,
    name: &str,
    ty: GgmlType,
    target: Target,
    t: &dyn tern_backend::TernarySource,
) -> Result<(), WeightError> {
    let (rows, cols, scale) = (t.rows(), t.cols(), t.scale());
    if ty == GgmlType::I2_S {
        // One tensor-wide trailer: gather the codes, pack once.
        let mut all = vec![0i8; rows * cols];
        for (r, row) in all.chunks_mut(cols).enumerate() {
            t.row_codes(r, row);
        }
        let mut bytes = vec![0u8; rows * cols / 4 + tern_tensor::dtype::I2_S_TRAILER];
        pack_ternary_into(ty, &all, scale, &mut bytes).map_err(|e| codec_err(e.to_string()))?;
        sink.write_tensor(name, &bytes)?;
        return Ok(());
    }
    let baked = target == Target::BitnetCpp;
    let row_bytes = ty
        .row_bytes(cols as u64)
        .map_err(|e| codec_err(e.to_string()))? as usize;
    let mut buf = vec![0u8; row_bytes];
    let mut codes = vec![0i8; cols];
    let mut fbuf = vec![0f32; cols];
    let mul = if baked { scale } else { 1.0 };
    let (q8_q, q8_d) = if baked {
        q8_0_scale(scale)?
    } else {
        (1, f16_bits(1.0)?)
    };
    sink.write_tensor_with(name, |out| {
        for r in 0..rows {
            t.row_codes(r, &mut codes);
            match ty {
                GgmlType::TQ2_0 | GgmlType::TQ1_0 => {
                    pack_ternary_into(ty, &codes, mul, &mut buf).map_err(std::io::Error::other)?
                }
                GgmlType::Q8_0 => q8_0_codes(&codes, q8_q, q8_d, &mut buf),
                _ => {
                    for (o, &c) in fbuf.iter_mut().zip(&codes) {
                        *o = f32::from(c) * mul;
                    }
                    quantize_into(ty, &fbuf, &mut buf).map_err(std::io::Error::other)?;
                }
            }
            out.write_all(&buf)?;
        }
        Ok(())
    })?;
    Ok(())
}
