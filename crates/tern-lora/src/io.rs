//! Adapter files: PEFT (`adapter_model.safetensors` + `adapter_config.json`)
//! and llama.cpp's GGUF LoRA (`--lora`), both ways.
//!
//! Shapes: PEFT stores `lora_A [r, in]` and `lora_B [out, r]`; GGUF stores the
//! same bytes as `<base>.lora_a` with `ne = {in, r}` and `<base>.lora_b` with
//! `ne = {r, out}` (ggml lists the innermost dimension first).

use crate::adapter::{Adapter, LoraConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tern_io::gguf::{GgufFile, GgufWriter};
use tern_io::safetensors::{write_safetensors, Checkpoint, Dtype};
use tern_model::{BitNetConfig, Param, Proj};
use tern_tensor::GgmlType;

/// A problem with an adapter file, naming the file and the field or tensor.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}")]
pub struct AdapterFileError {
    pub path: PathBuf,
    pub what: String,
}

/// From a safetensors error, which already names its file.
fn st_err(e: tern_io::safetensors::SafetensorsError) -> AdapterFileError {
    AdapterFileError {
        path: e.path.clone(),
        what: e.kind.to_string(),
    }
}

/// From a GGUF error, which already names its file.
fn gguf_err(e: tern_io::gguf::GgufError) -> AdapterFileError {
    AdapterFileError {
        path: e.path().to_path_buf(),
        what: e.kind().to_string(),
    }
}

fn err(path: &Path, what: impl Into<String>) -> AdapterFileError {
    AdapterFileError {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// PEFT's module path of a projection in layer `l`.
pub fn peft_module(l: usize, p: Proj) -> String {
    format!("base_model.model.model.layers.{l}.{}", p.hf_name())
}

/// llama.cpp's base tensor name of a projection in layer `l`.
pub fn gguf_base(l: usize, p: Proj) -> String {
    Param::Proj(l, p).gguf_name()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Write `dir/adapter_model.safetensors` and `dir/adapter_config.json`.
pub fn save_peft(ad: &Adapter, dir: &Path, base_model: &str) -> Result<(), AdapterFileError> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create folder: {e}")))?;
    let r = ad.cfg.rank;
    let mut tensors = Vec::new();
    for (&(l, k), (a, b)) in &ad.tensors {
        let m = peft_module(l, k);
        let inp = a.len() / r;
        let out = b.len() / r;
        tensors.push((
            format!("{m}.lora_A.weight"),
            Dtype::F32,
            vec![r, inp],
            f32_bytes(a),
        ));
        tensors.push((
            format!("{m}.lora_B.weight"),
            Dtype::F32,
            vec![out, r],
            f32_bytes(b),
        ));
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_owned(), "pt".to_owned());
    let st = dir.join("adapter_model.safetensors");
    write_safetensors(&st, &tensors, Some(meta)).map_err(st_err)?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": ad.cfg.alpha,
        "lora_dropout": ad.cfg.dropout,
        "target_modules": ad.cfg.targets.iter().map(|&p| p.module_name()).collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    let cj = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&config).expect("JSON of plain values");
    tern_io::atomic::write_atomic(&cj, text.as_bytes())
        .map_err(|e| err(&cj, format!("cannot write: {e}")))
}

/// Read a PEFT adapter folder for a model of config `model`.
pub fn load_peft(dir: &Path, model: &BitNetConfig) -> Result<Adapter, AdapterFileError> {
    let cj = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cj).map_err(|e| err(&cj, format!("cannot read: {e}")))?;
    let c: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(&cj, format!("invalid JSON: {e}")))?;
    let field = |k: &str| c.get(k).filter(|v| !v.is_null());
    if let Some(t) = field("peft_type").and_then(|v| v.as_str()) {
        if t != "LORA" {
            return Err(err(&cj, format!("peft_type {t:?} is not LORA")));
        }
    }
    for flag in ["use_rslora", "use_dora", "fan_in_fan_out"] {
        if field(flag).and_then(|v| v.as_bool()) == Some(true) {
            return Err(err(&cj, format!("`{flag}: true` is not supported")));
        }
    }
    for pat in ["rank_pattern", "alpha_pattern"] {
        if field(pat)
            .and_then(|v| v.as_object())
            .is_some_and(|o| !o.is_empty())
        {
            return Err(err(
                &cj,
                format!("`{pat}` (per-module ranks) is not supported"),
            ));
        }
    }
    let rank = field("r")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| err(&cj, "field `r` is missing or not a positive integer"))?
        as usize;
    let alpha = field("lora_alpha")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| err(&cj, "field `lora_alpha` is missing or not a number"))?
        as f32;
    let dropout = field("lora_dropout")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0) as f32;
    let st = dir.join("adapter_model.safetensors");
    let ck = Checkpoint::open(&st).map_err(st_err)?;
    let mut tensors = BTreeMap::new();
    let mut targets = Vec::new();
    for l in 0..model.num_hidden_layers {
        for p in Proj::ALL {
            let m = peft_module(l, p);
            let (an, bn) = (format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight"));
            let (ea, eb) = (ck.get(&an), ck.get(&bn));
            if ea.is_none() && eb.is_none() {
                continue;
            }
            let (out, inp) = p.shape(model);
            let read = |name: &str, shape: [usize; 2]| -> Result<Vec<f32>, AdapterFileError> {
                let e = ck.entry(name).map_err(st_err)?;
                if e.shape != shape {
                    return Err(err(
                        &st,
                        format!(
                            "tensor `{name}` has shape {:?}, the model needs {shape:?}",
                            e.shape
                        ),
                    ));
                }
                let v = ck.to_f32(name).map_err(st_err)?;
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(err(&st, format!("tensor `{name}` element {i} is {}", v[i])));
                }
                Ok(v)
            };
            let a = read(&an, [rank, inp])?;
            let b = read(&bn, [out, rank])?;
            if !targets.contains(&p) {
                targets.push(p);
            }
            tensors.insert((l, p), (a, b));
        }
    }
    if tensors.is_empty() {
        return Err(err(
            &st,
            "no LoRA tensors named like `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`",
        ));
    }
    targets.sort();
    let cfg = LoraConfig {
        rank,
        alpha,
        dropout,
        targets,
    };
    cfg.validate().map_err(|e| err(&cj, e.to_string()))?;
    Ok(Adapter { cfg, tensors })
}

/// Factors llama.cpp applies to a projection's output AFTER adding the LoRA
/// branch, per `(layer, projection)`.
///
/// llama.cpp's `bitnet` graph multiplies `ffn_gate` and `ffn_up` by their
/// `.scale` tensor after its LoRA hook (q, k, v, o and down get the scale
/// before it), so there it computes `s · (W x + (alpha/r) B A x)` where tern
/// and PEFT compute `s · W x + (alpha/r) B A x`. An adapter written for such a
/// base divides those B matrices by `s` (see [`save_gguf`]).
pub type PostScales = BTreeMap<(usize, Proj), f32>;

const POST_SCALE_KEY: &str = "tern.lora.post_scale";

/// The post-LoRA factors of a llama.cpp `bitnet` GGUF: its
/// `blk.N.ffn_{gate,up}.scale` tensors.
pub fn post_scales_from_gguf(f: &GgufFile) -> Result<PostScales, AdapterFileError> {
    let mut out = PostScales::new();
    let arch = f
        .get_str("general.architecture")
        .unwrap_or("bitnet")
        .to_owned();
    let layers = f
        .get(&format!("{arch}.block_count"))
        .and_then(|v| v.to_u64())
        .unwrap_or(0) as usize;
    for l in 0..layers {
        for p in [Proj::Gate, Proj::Up] {
            let name = Param::Proj(l, p).gguf_scale_name().expect("a projection");
            if let Some(t) = f.tensor(&name) {
                let mut v = [0f32];
                if t.n_elements() != 1 {
                    return Err(err(f.path(), format!("`{name}` is not a single value")));
                }
                tern_tensor::codec::dequantize_into(t.ty, f.tensor_data(t), &mut v)
                    .map_err(|x| err(f.path(), format!("`{name}`: {x}")))?;
                out.insert((l, p), v[0]);
            }
        }
    }
    Ok(out)
}

/// The post-LoRA factors a base will have once `tern convert` writes it for
/// llama.cpp: the per-tensor ternary scales of `ffn_gate` and `ffn_up`.
pub fn post_scales_from_ternary(
    src: &dyn tern_model::WeightSource,
) -> Result<PostScales, crate::LoraError> {
    let mut out = PostScales::new();
    for l in 0..src.config().num_hidden_layers {
        for p in [Proj::Gate, Proj::Up] {
            let t = src
                .ternary(l, p)
                .map_err(|e| crate::LoraError::Config(e.to_string()))?;
            out.insert((l, p), t.scale());
        }
    }
    Ok(out)
}

/// Write a llama.cpp LoRA adapter GGUF (`llama-cli --lora FILE`).
///
/// `post_scales` ([`PostScales`]) are divided out of the matching B matrices
/// so that llama.cpp applies exactly tern's adapter; each factor is also
/// stored as `tern.lora.post_scale.blk.N.<proj>` (llama.cpp ignores unknown
/// keys) so that [`load_gguf`] restores the adapter. Pass an empty map for a
/// base whose projections carry no separate scale.
pub fn save_gguf(
    ad: &Adapter,
    path: &Path,
    arch: &str,
    post_scales: &PostScales,
) -> Result<(), AdapterFileError> {
    let e = gguf_err;
    let mut w = GgufWriter::create(path).map_err(e)?;
    w.add_kv("general.architecture", arch).map_err(e)?;
    w.add_kv("general.type", "adapter").map_err(e)?;
    w.add_kv("adapter.type", "lora").map_err(e)?;
    w.add_kv("adapter.lora.alpha", ad.cfg.alpha).map_err(e)?;
    for &(l, k) in ad.tensors.keys() {
        if let Some(&s) = post_scales.get(&(l, k)) {
            if !(s.is_finite() && s > 0.0) {
                return Err(err(
                    path,
                    format!("post scale {s} of layer {l} is not positive"),
                ));
            }
            let key = format!("{POST_SCALE_KEY}.blk.{l}.{}", k.gguf_name());
            w.add_kv(key, s).map_err(e)?;
        }
    }
    let r = ad.cfg.rank as u64;
    for (&(l, k), (a, b)) in &ad.tensors {
        let base = gguf_base(l, k);
        w.add_tensor_info(
            format!("{base}.lora_a"),
            GgmlType::F32,
            &[a.len() as u64 / r, r],
        )
        .map_err(e)?;
        w.add_tensor_info(
            format!("{base}.lora_b"),
            GgmlType::F32,
            &[r, b.len() as u64 / r],
        )
        .map_err(e)?;
    }
    let mut sink = w.begin_data().map_err(e)?;
    for (&(l, k), (a, b)) in &ad.tensors {
        let base = gguf_base(l, k);
        sink.write_tensor(&format!("{base}.lora_a"), &f32_bytes(a))
            .map_err(e)?;
        let b_bytes = match post_scales.get(&(l, k)) {
            Some(&s) => f32_bytes(&b.iter().map(|x| x / s).collect::<Vec<_>>()),
            None => f32_bytes(b),
        };
        sink.write_tensor(&format!("{base}.lora_b"), &b_bytes)
            .map_err(e)?;
    }
    sink.finish().map_err(e)
}

/// Read a llama.cpp LoRA adapter GGUF for a model of config `model`.
pub fn load_gguf(path: &Path, model: &BitNetConfig) -> Result<Adapter, AdapterFileError> {
    let f = GgufFile::open(path).map_err(gguf_err)?;
    if f.get("general.type").and_then(|v| v.as_str()) != Some("adapter")
        || f.get("adapter.type").and_then(|v| v.as_str()) != Some("lora")
    {
        return Err(err(
            path,
            "not a LoRA adapter (general.type must be \"adapter\", adapter.type \"lora\")",
        ));
    }
    let alpha =
        f.get("adapter.lora.alpha")
            .and_then(|v| v.to_f64())
            .ok_or_else(|| err(path, "metadata `adapter.lora.alpha` is missing"))? as f32;
    let mut tensors = BTreeMap::new();
    let mut targets = Vec::new();
    let mut rank = None;
    for l in 0..model.num_hidden_layers {
        for p in Proj::ALL {
            let base = gguf_base(l, p);
            let (an, bn) = (format!("{base}.lora_a"), format!("{base}.lora_b"));
            let (Some(ta), Some(tb)) = (f.tensor(&an), f.tensor(&bn)) else {
                if f.tensor(&an).is_some() || f.tensor(&bn).is_some() {
                    return Err(err(
                        path,
                        format!("`{base}` has only one of lora_a / lora_b"),
                    ));
                }
                continue;
            };
            let (out, inp) = p.shape(model);
            let r = ta.ne.get(1).copied().unwrap_or(0) as usize;
            if ta.ne != [inp as u64, r as u64] || tb.ne != [r as u64, out as u64] || r == 0 {
                return Err(err(
                    path,
                    format!(
                        "`{base}`: lora_a ne {:?} / lora_b ne {:?} do not fit [{inp}, r] / [r, {out}]",
                        ta.ne, tb.ne
                    ),
                ));
            }
            if *rank.get_or_insert(r) != r {
                return Err(err(
                    path,
                    format!("`{an}` has rank {r}, other tensors another"),
                ));
            }
            let read = |t: &tern_io::gguf::TensorInfo| -> Result<Vec<f32>, AdapterFileError> {
                let mut v = vec![0f32; t.n_elements() as usize];
                tern_tensor::codec::dequantize_into(t.ty, f.tensor_data(t), &mut v)
                    .map_err(|x| err(path, format!("`{}`: {x}", t.name)))?;
                Ok(v)
            };
            if !targets.contains(&p) {
                targets.push(p);
            }
            let mut b = read(tb)?;
            let key = format!("{POST_SCALE_KEY}.blk.{l}.{}", p.gguf_name());
            if let Some(s) = f.get(&key).and_then(|v| v.to_f64()) {
                b.iter_mut().for_each(|x| *x *= s as f32);
            }
            tensors.insert((l, p), (read(ta)?, b));
        }
    }
    let rank = rank.ok_or_else(|| err(path, "no `blk.N.<proj>.weight.lora_a` tensors"))?;
    targets.sort();
    let cfg = LoraConfig {
        rank,
        alpha,
        dropout: 0.0,
        targets,
    };
    cfg.validate().map_err(|e| err(path, e.to_string()))?;
    Ok(Adapter { cfg, tensors })
}
