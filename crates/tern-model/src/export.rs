//! Writing a model as GGUF with llama.cpp's `bitnet` names.
//!
//! Projections are stored as pure ternary codes (block scale `d = 1`) with
//! the exact f32 per-tensor scale in a separate `blk.N.<proj>.scale` tensor,
//! which llama.cpp's `bitnet` graph multiplies after the matmul. Keeping the
//! scale out of the f16 block header keeps the file exact: the codes and the
//! f32 scale are what the model computes with. I2_S (bitnet.cpp) keeps its
//! scale in the tensor's own f32 trailer instead. Tensors stream to the file one
//! at a time; the file appears at `path` only when complete.

use crate::weights::{Proj, WeightError, WeightSource, EMBED, GGUF_ACT_KEY, LM_HEAD, NORM};
use crate::HiddenAct;
use std::path::Path;
use tern_io::gguf::GgufWriter;
use tern_tensor::codec::{pack_ternary_into, quantize_into};
use tern_tensor::GgmlType;

/// Types a projection can be written as.
pub const PROJ_TYPES: [GgmlType; 5] = [
    GgmlType::TQ2_0,
    GgmlType::TQ1_0,
    GgmlType::I2_S,
    GgmlType::Q8_0,
    GgmlType::F32,
];

/// `general.file_type` of a projection type (llama.cpp's `LLAMA_FTYPE_*`).
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

/// Write every weight of `src` to `path` as GGUF. `proj_ty` is one of
/// [`PROJ_TYPES`]; `dense_ty` (F32, F16 or Q8_0) holds the embedding and head.
pub fn write_gguf(
    src: &dyn WeightSource,
    path: &Path,
    proj_ty: GgmlType,
    dense_ty: GgmlType,
) -> Result<(), WeightError> {
    let cfg = src.config().clone();
    let bad = |reason: String| WeightError::Invalid {
        file: path.to_path_buf(),
        tensor: String::new(),
        reason,
    };
    if !PROJ_TYPES.contains(&proj_ty) {
        return Err(bad(format!("{proj_ty} cannot hold ternary projections")));
    }
    if !matches!(dense_ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0) {
        return Err(bad(format!(
            "{dense_ty} is not supported for the embedding"
        )));
    }
    let (h, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let arch = "bitnet";
    let mut w = GgufWriter::create(path)?;
    let k = |s: &str| format!("{arch}.{s}");
    let act = match cfg.hidden_act {
        HiddenAct::Relu2 => "relu2",
        HiddenAct::Silu => "silu",
    };
    let u32_of = |x: usize| x as u32;
    w.add_kv("general.architecture", arch)?;
    w.add_kv("general.type", "model")?;
    w.add_kv("general.quantization_version", 2u32)?;
    w.add_kv("general.file_type", file_type(proj_ty))?;
    w.add_kv(k("context_length"), u32_of(cfg.max_position_embeddings))?;
    w.add_kv(k("embedding_length"), u32_of(h))?;
    w.add_kv(k("feed_forward_length"), u32_of(f))?;
    w.add_kv(k("block_count"), u32_of(cfg.num_hidden_layers))?;
    w.add_kv(k("attention.head_count"), u32_of(cfg.num_attention_heads))?;
    w.add_kv(k("attention.head_count_kv"), u32_of(cfg.n_kv_heads()))?;
    w.add_kv(k("attention.key_length"), u32_of(cfg.head_dim()))?;
    w.add_kv(k("attention.value_length"), u32_of(cfg.head_dim()))?;
    w.add_kv(k("rope.dimension_count"), u32_of(cfg.head_dim()))?;
    w.add_kv(k("rope.freq_base"), cfg.rope_theta)?;
    w.add_kv(k("attention.layer_norm_rms_epsilon"), cfg.rms_norm_eps)?;
    w.add_kv(k("vocab_size"), u32_of(v))?;
    w.add_kv(GGUF_ACT_KEY, act)?;
    if let Some(id) = cfg.bos_token_id {
        w.add_kv("tokenizer.ggml.bos_token_id", id)?;
    }
    if let Some(id) = cfg.eos_token_id {
        w.add_kv("tokenizer.ggml.eos_token_id", id)?;
    }

    // Declare every tensor first (GGUF puts the infos before the data).
    let ne = |rows: usize, cols: usize| [cols as u64, rows as u64];
    w.add_tensor_info("token_embd.weight", dense_ty, &ne(v, h))?;
    for l in 0..cfg.num_hidden_layers {
        w.add_tensor_info(
            format!("blk.{l}.attn_norm.weight"),
            GgmlType::F32,
            &[h as u64],
        )?;
        for p in Proj::ALL {
            let (rows, cols) = p.shape(&cfg);
            let name = format!("blk.{l}.{}", p.gguf_name());
            if cols % proj_ty.block_size() != 0 {
                return Err(bad(format!(
                    "{name}.weight: rows of {cols} values are not a multiple of the {proj_ty} \
                     block size {}",
                    proj_ty.block_size()
                )));
            }
            w.add_tensor_info(format!("{name}.weight"), proj_ty, &ne(rows, cols))?;
            if proj_ty != GgmlType::I2_S {
                w.add_tensor_info(format!("{name}.scale"), GgmlType::F32, &[1])?;
            }
            if p == Proj::O {
                w.add_tensor_info(
                    format!("blk.{l}.attn_sub_norm.weight"),
                    GgmlType::F32,
                    &[cfg.q_dim() as u64],
                )?;
                w.add_tensor_info(
                    format!("blk.{l}.ffn_norm.weight"),
                    GgmlType::F32,
                    &[h as u64],
                )?;
            }
        }
        w.add_tensor_info(
            format!("blk.{l}.ffn_sub_norm.weight"),
            GgmlType::F32,
            &[f as u64],
        )?;
    }
    w.add_tensor_info("output_norm.weight", GgmlType::F32, &[h as u64])?;
    if !cfg.tie_word_embeddings {
        w.add_tensor_info("output.weight", dense_ty, &ne(v, h))?;
    }

    let mut sink = w.begin_data()?;
    let dense = |sink: &mut tern_io::gguf::TensorSink,
                 gguf: &str,
                 canon: &str,
                 ty: GgmlType,
                 shape: &[usize]|
     -> Result<(), WeightError> {
        let vals = src.f32_tensor(canon, shape)?;
        let cols = *shape.last().unwrap_or(&1);
        let row_bytes = ty.row_bytes(cols as u64).map_err(|e| bad(e.to_string()))? as usize;
        let mut buf = vec![0u8; row_bytes];
        sink.write_tensor_with(gguf, |out| {
            for row in vals.chunks(cols) {
                quantize_into(ty, row, &mut buf).map_err(std::io::Error::other)?;
                std::io::Write::write_all(out, &buf)?;
            }
            Ok(())
        })?;
        Ok(())
    };
    dense(&mut sink, "token_embd.weight", EMBED, dense_ty, &[v, h])?;
    for l in 0..cfg.num_hidden_layers {
        let canon = |s: &str| format!("layers.{l}.{s}");
        dense(
            &mut sink,
            &format!("blk.{l}.attn_norm.weight"),
            &canon("input_layernorm"),
            GgmlType::F32,
            &[h],
        )?;
        for p in Proj::ALL {
            let name = format!("blk.{l}.{}", p.gguf_name());
            let t = src.ternary(l, p)?;
            let (rows, cols) = (t.rows(), t.cols());
            let mut codes = vec![0i8; cols];
            if proj_ty == GgmlType::I2_S {
                // One tensor-wide trailer: gather the codes, pack once.
                let mut all = vec![0i8; rows * cols];
                for (r, row) in all.chunks_mut(cols).enumerate() {
                    t.row_codes(r, row);
                }
                let mut bytes = vec![0u8; rows * cols / 4 + tern_tensor::dtype::I2_S_TRAILER];
                pack_ternary_into(proj_ty, &all, t.scale(), &mut bytes)
                    .map_err(|e| bad(format!("{name}.weight: {e}")))?;
                sink.write_tensor(&format!("{name}.weight"), &bytes)?;
            } else {
                let row_bytes = proj_ty
                    .row_bytes(cols as u64)
                    .map_err(|e| bad(e.to_string()))? as usize;
                let mut buf = vec![0u8; row_bytes];
                let mut fbuf = vec![0f32; cols];
                sink.write_tensor_with(&format!("{name}.weight"), |out| {
                    for r in 0..rows {
                        t.row_codes(r, &mut codes);
                        if proj_ty.is_ternary() {
                            pack_ternary_into(proj_ty, &codes, 1.0, &mut buf)
                                .map_err(std::io::Error::other)?;
                        } else {
                            for (o, &c) in fbuf.iter_mut().zip(&codes) {
                                *o = f32::from(c);
                            }
                            quantize_into(proj_ty, &fbuf, &mut buf)
                                .map_err(std::io::Error::other)?;
                        }
                        std::io::Write::write_all(out, &buf)?;
                    }
                    Ok(())
                })?;
                sink.write_tensor(&format!("{name}.scale"), &t.scale().to_le_bytes())?;
            }
            if p == Proj::O {
                dense(
                    &mut sink,
                    &format!("blk.{l}.attn_sub_norm.weight"),
                    &canon("attn_sub_norm"),
                    GgmlType::F32,
                    &[cfg.q_dim()],
                )?;
                dense(
                    &mut sink,
                    &format!("blk.{l}.ffn_norm.weight"),
                    &canon("post_attention_layernorm"),
                    GgmlType::F32,
                    &[h],
                )?;
            }
        }
        dense(
            &mut sink,
            &format!("blk.{l}.ffn_sub_norm.weight"),
            &canon("ffn_sub_norm"),
            GgmlType::F32,
            &[f],
        )?;
    }
    dense(&mut sink, "output_norm.weight", NORM, GgmlType::F32, &[h])?;
    if !cfg.tie_word_embeddings {
        dense(&mut sink, "output.weight", LM_HEAD, dense_ty, &[v, h])?;
    }
    sink.finish()?;
    Ok(())
}
