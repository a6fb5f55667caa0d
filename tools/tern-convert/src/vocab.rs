//! The tokenizer of a Hugging Face model folder as GGUF metadata, the way
//! llama.cpp's `convert_hf_to_gguf.py` writes it, so that llama.cpp (and the
//! bitnet.cpp fork) can run the file without the Hugging Face JSON:
//!
//! - byte-level BPE (`tokenizer.json` whose model is BPE with a `ByteLevel`
//!   pre-tokenizer or decoder; Llama-3, GPT-2): `tokenizer.ggml.model =
//!   "gpt2"`, `.pre`, `.tokens`, `.token_type`, `.merges`;
//! - SentencePiece (`tokenizer.model`, decoded as [`ModelProto`]; or
//!   a `tokenizer.json` whose model is Unigram, or BPE with Metaspace /
//!   byte fallback, as Llama-2 and 1bitLLM ship): `"llama"` with `.tokens`,
//!   `.scores`, `.token_type`, `.pre = "default"`;
//!
//! plus `.bos_token_id`, `.eos_token_id`, `.add_bos_token` / `.add_eos_token`
//! where known. Token types: 1 normal, 2 unknown, 3 control, 4 user defined,
//! 5 unused, 6 byte. The vocabulary is padded to the config's `vocab_size`
//! (llama.cpp needs one token per embedding row) with `[PAD…]` tokens, as the
//! Python converter does. The whole `tokenizer.json` is stored besides, under
//! `tokenizer.huggingface.json`.

use crate::ConvertError;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use tern_io::gguf::{StringArray, Value};
use tern_model::tokenizer::{
    Tokenizer, GGML_ADD_BOS_KEY, GGML_ADD_EOS_KEY, GGML_BOS_KEY, GGML_EOS_KEY, GGML_MERGES_KEY,
    GGML_MODEL_KEY, GGML_PRE_KEY, GGML_TOKENS_KEY, GGML_TOKEN_TYPE_KEY, HF_JSON_KEY,
};

/// GGUF key: per-token scores of a SentencePiece vocabulary.
pub const GGML_SCORES_KEY: &str = "tokenizer.ggml.scores";

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// Llama-3's pre-tokenizer split pattern, which llama.cpp calls `llama-bpe`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer keys for a model folder, and what was found.
#[derive(Clone, Debug, Default)]
pub struct VocabMetadata {
    pub kv: Vec<(String, Value)>,
    /// `gpt2`, `llama`, or empty when only the Hugging Face JSON is stored.
    pub ggml_model: String,
    /// `tokenizer.ggml.pre`.
    pub pre: String,
    /// Which files were read.
    pub sources: Vec<PathBuf>,
    /// Things the user should know (an unrecognised pre-tokenizer...).
    pub warnings: Vec<String>,
}

fn tok_err(file: &Path, reason: impl Into<String>) -> ConvertError {
    ConvertError::Tokenizer {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// Tokenizer metadata for the model in `dir`; `vocab_size` is the config's
/// (embedding rows), `bos` / `eos` the config's ids. `Ok` with no keys when
/// the folder has no tokenizer at all.
pub fn tokenizer_metadata(
    dir: &Path,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<VocabMetadata, ConvertError> {
    let json_path = dir.join("tokenizer.json");
    let spm_path = dir.join("tokenizer.model");
    let mut meta = VocabMetadata::default();
    let json_text = if json_path.is_file() {
        Some(std::fs::read_to_string(&json_path).map_err(|e| tok_err(&json_path, e.to_string()))?)
    } else {
        None
    };
    let tok = match &json_text {
        Some(text) => Some(
            Tokenizer::from_json_bytes(json_path.display().to_string(), text.as_bytes())
                .map_err(|e| tok_err(&json_path, e.to_string()))?,
        ),
        None => None,
    };
    let json: Option<Json> = match &json_text {
        Some(t) => Some(serde_json::from_str(t).map_err(|e| tok_err(&json_path, e.to_string()))?),
        None => None,
    };
    let tcfg = read_tokenizer_config(dir)?;
    let bos = bos.or(tok.as_ref().and_then(Tokenizer::bos_id));
    let eos = eos.or(tok.as_ref().and_then(Tokenizer::eos_id));

    let mut vocab = if spm_path.is_file() {
        meta.sources.push(spm_path.clone());
        Some(spm_vocab(&spm_path, dir, json.as_ref(), vocab_size)?)
    } else if let Some(j) = &json {
        meta.sources.push(json_path.clone());
        json_vocab(&json_path, j, vocab_size, &mut meta.warnings)?
    } else {
        meta.warnings.push(format!(
            "{} has neither tokenizer.json nor tokenizer.model: the GGUF carries no tokenizer \
             (pass --tokenizer to tern, llama.cpp cannot run it)",
            dir.display()
        ));
        None
    };
    if let Some(v) = vocab.as_mut() {
        meta.ggml_model = v.model.to_owned();
        meta.pre = v.pre.clone();
        let n = v.tokens.len();
        meta.kv.push((GGML_MODEL_KEY.into(), Value::from(v.model)));
        meta.kv
            .push((GGML_PRE_KEY.into(), Value::from(v.pre.as_str())));
        meta.kv.push((
            GGML_TOKENS_KEY.into(),
            Value::from(
                std::mem::take(&mut v.tokens)
                    .into_iter()
                    .collect::<StringArray>(),
            ),
        ));
        if let Some(scores) = v.scores.take() {
            meta.kv.push((GGML_SCORES_KEY.into(), Value::from(scores)));
        }
        meta.kv.push((
            GGML_TOKEN_TYPE_KEY.into(),
            Value::from(std::mem::take(&mut v.types)),
        ));
        if let Some(merges) = v.merges.take() {
            meta.kv.push((
                GGML_MERGES_KEY.into(),
                Value::from(merges.into_iter().collect::<StringArray>()),
            ));
        }
        for (key, id) in [(GGML_BOS_KEY, bos), (GGML_EOS_KEY, eos)] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(tok_err(
                        &dir.join("config.json"),
                        format!("{key} = {id} is outside the vocabulary of {n} tokens"),
                    ));
                }
                meta.kv.push((key.into(), Value::U32(id)));
            }
        }
        // tokenizer_config.json decides, else what encoding actually does.
        let add_bos = tcfg
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(Json::as_bool)
            .or_else(|| {
                let (t, b) = (tok.as_ref()?, bos?);
                Some(t.encode("a", true).ok()?.first() == Some(&b))
            });
        let add_eos = tcfg
            .as_ref()
            .and_then(|c| c.get("add_eos_token"))
            .and_then(Json::as_bool)
            .or_else(|| {
                let (t, e) = (tok.as_ref()?, eos?);
                Some(t.encode("a", true).ok()?.last() == Some(&e))
            });
        if let Some(b) = add_bos {
            meta.kv.push((GGML_ADD_BOS_KEY.into(), Value::Bool(b)));
        }
        if let Some(b) = add_eos {
            meta.kv.push((GGML_ADD_EOS_KEY.into(), Value::Bool(b)));
        }
    }
    if let Some(t) = tok {
        let compact = t
            .to_json_string()
            .map_err(|e| tok_err(&json_path, e.to_string()))?;
        meta.kv.push((HF_JSON_KEY.into(), Value::from(compact)));
        if !meta.sources.contains(&json_path) {
            meta.sources.push(json_path);
        }
    }
    Ok(meta)
}

fn read_tokenizer_config(dir: &Path) -> Result<Option<Json>, ConvertError> {
    let p = dir.join("tokenizer_config.json");
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).map_err(|e| tok_err(&p, e.to_string()))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| tok_err(&p, format!("invalid JSON: {e}")))
}

/// A vocabulary in GGUF form.
struct GgufVocab {
    model: &'static str,
    pre: String,
    tokens: Vec<String>,
    types: Vec<i32>,
    scores: Option<Vec<f32>>,
    merges: Option<Vec<String>>,
}

/// True when some object in `j` has `"type": "ByteLevel"`.
fn has_type(j: &Json, ty: &str) -> bool {
    match j {
        Json::Object(m) => {
            m.get("type").and_then(Json::as_str) == Some(ty) || m.values().any(|v| has_type(v, ty))
        }
        Json::Array(a) => a.iter().any(|v| has_type(v, ty)),
        _ => false,
    }
}

/// llama.cpp's pre-tokenizer name for a byte-level BPE `pre_tokenizer`.
///
/// llama.cpp's converter hashes the token ids of a probe text against a table
/// of known models; tern recognises the two pre-tokenizers its own GGUF
/// tokenizer rebuilds from their structure instead, and writes `default`
/// (with a warning) for anything else.
fn bpe_pre(pre: &Json) -> Option<&'static str> {
    let ty = pre.get("type").and_then(Json::as_str)?;
    match ty {
        "ByteLevel" if pre.get("use_regex").and_then(Json::as_bool) != Some(false) => Some("gpt-2"),
        "Sequence" => {
            let items = pre.get("pretokenizers")?.as_array()?;
            let split = items.iter().find_map(|p| {
                (p.get("type")?.as_str()? == "Split")
                    .then(|| p.get("pattern")?.get("Regex")?.as_str())
                    .flatten()
            });
            let byte_level = items.iter().any(|p| {
                p.get("type").and_then(Json::as_str) == Some("ByteLevel")
                    && p.get("use_regex").and_then(Json::as_bool) == Some(false)
            });
            (split == Some(LLAMA3_SPLIT) && byte_level && items.len() == 2).then_some("llama-bpe")
        }
        _ => None,
    }
}

/// The added tokens of a `tokenizer.json`: `(id, content, special)`.
fn added_tokens(file: &Path, j: &Json) -> Result<Vec<(usize, String, bool)>, ConvertError> {
    let Some(list) = j.get("added_tokens").and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let id = t.get("id").and_then(Json::as_u64);
            let content = t.get("content").and_then(Json::as_str);
            match (id, content) {
                (Some(id), Some(c)) => Ok((
                    id as usize,
                    c.to_owned(),
                    t.get("special").and_then(Json::as_bool).unwrap_or(false),
                )),
                _ => Err(tok_err(
                    file,
                    format!("added_tokens[{i}] lacks an integer `id` or a string `content`"),
                )),
            }
        })
        .collect()
}

/// Tokens, types and scores in id order.
type Columns = (Vec<String>, Vec<i32>, Vec<f32>);

/// Place `(id, token, type, score)` entries into id order, padding gaps.
fn assemble(
    file: &Path,
    n: usize,
    entries: impl IntoIterator<Item = (usize, String, i32, f32)>,
    pad: impl Fn(usize) -> (String, i32, f32),
) -> Result<Columns, ConvertError> {
    let mut slots: Vec<Option<(String, i32, f32)>> = vec![None; n];
    for (id, tok, ty, score) in entries {
        if id >= n {
            return Err(tok_err(
                file,
                format!(
                    "token {tok:?} has id {id}, outside the model's vocab_size {n} \
                     (config.json vocab_size must cover the tokenizer)"
                ),
            ));
        }
        slots[id] = Some((tok, ty, score));
    }
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    for (id, s) in slots.into_iter().enumerate() {
        let (t, ty, sc) = s.unwrap_or_else(|| pad(id));
        tokens.push(t);
        types.push(ty);
        scores.push(sc);
    }
    Ok((tokens, types, scores))
}

/// A vocabulary from `tokenizer.json` alone (no `tokenizer.model`).
fn json_vocab(
    file: &Path,
    j: &Json,
    n: usize,
    warnings: &mut Vec<String>,
) -> Result<Option<GgufVocab>, ConvertError> {
    let model = j
        .get("model")
        .ok_or_else(|| tok_err(file, "no `model` object"))?;
    let mtype = model.get("type").and_then(Json::as_str).unwrap_or("");
    let added = added_tokens(file, j)?;
    let special_ids: std::collections::HashSet<usize> =
        added.iter().filter(|a| a.2).map(|a| a.0).collect();
    let added_ids: std::collections::HashSet<usize> = added.iter().map(|a| a.0).collect();
    let byte_level = has_type(j.get("pre_tokenizer").unwrap_or(&Json::Null), "ByteLevel")
        || has_type(j.get("decoder").unwrap_or(&Json::Null), "ByteLevel");
    let is_byte_token = |t: &str| {
        t.len() == 6
            && t.starts_with("<0x")
            && t.ends_with('>')
            && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
    };
    let added_entries = |score: f32| {
        added.iter().map(move |(id, c, sp)| {
            (
                *id,
                c.clone(),
                if *sp { CONTROL } else { USER_DEFINED },
                score,
            )
        })
    };
    match mtype {
        "BPE" => {
            let vocab = model
                .get("vocab")
                .and_then(Json::as_object)
                .ok_or_else(|| tok_err(file, "model.vocab is not an object"))?;
            let mut base = Vec::with_capacity(vocab.len());
            for (t, id) in vocab {
                let id = id
                    .as_u64()
                    .ok_or_else(|| tok_err(file, format!("model.vocab[{t:?}] is not an id")))?
                    as usize;
                if !added_ids.contains(&id) {
                    base.push((id, t.clone()));
                }
            }
            if byte_level {
                let merges = merges_of(file, model)?;
                let pre_json = j.get("pre_tokenizer").unwrap_or(&Json::Null);
                let pre = match bpe_pre(pre_json) {
                    Some(p) => p.to_owned(),
                    None => {
                        warnings.push(format!(
                            "{}: byte-level BPE pre-tokenizer not recognised (tern knows \
                             llama-bpe and gpt-2); wrote tokenizer.ggml.pre = \"default\", \
                             llama.cpp may split text differently",
                            file.display()
                        ));
                        "default".to_owned()
                    }
                };
                let entries = base
                    .into_iter()
                    .map(|(id, t)| (id, t, NORMAL, 0.0))
                    .chain(added_entries(0.0));
                let (tokens, types, _) = assemble(file, n, entries, |i| {
                    (format!("[PAD{i}]"), USER_DEFINED, 0.0)
                })?;
                Ok(Some(GgufVocab {
                    model: "gpt2",
                    pre,
                    tokens,
                    types,
                    scores: None,
                    merges: Some(merges),
                }))
            } else {
                // SentencePiece-style BPE (Metaspace, byte fallback). Pieces
                // of such a vocabulary are numbered in merge order, so `-id`
                // orders them as the model's own scores do (llama.cpp's
                // Python converter writes a flat -1000 here, which leaves its
                // SentencePiece tokenizer without merge priorities).
                let unk = model.get("unk_token").and_then(Json::as_str);
                let entries = base
                    .into_iter()
                    .map(|(id, t)| {
                        let ty = if special_ids.contains(&id) {
                            CONTROL
                        } else if Some(t.as_str()) == unk {
                            UNKNOWN
                        } else if is_byte_token(&t) {
                            BYTE
                        } else {
                            NORMAL
                        };
                        (id, t, ty, -(id as f32))
                    })
                    .chain(added_entries(-1000.0));
                let (tokens, types, scores) =
                    assemble(file, n, entries, |i| (format!("[PAD{i}]"), UNUSED, -1000.0))?;
                Ok(Some(GgufVocab {
                    model: "llama",
                    pre: "default".into(),
                    tokens,
                    types,
                    scores: Some(scores),
                    merges: None,
                }))
            }
        }
        "Unigram" => {
            let vocab = model
                .get("vocab")
                .and_then(Json::as_array)
                .ok_or_else(|| tok_err(file, "model.vocab is not an array"))?;
            let unk_id = model
                .get("unk_id")
                .and_then(Json::as_u64)
                .map(|u| u as usize);
            let mut entries = Vec::with_capacity(vocab.len());
            for (id, e) in vocab.iter().enumerate() {
                let piece = e.get(0).and_then(Json::as_str);
                let score = e.get(1).and_then(Json::as_f64);
                let (Some(piece), Some(score)) = (piece, score) else {
                    return Err(tok_err(
                        file,
                        format!("model.vocab[{id}] is not [piece, score]"),
                    ));
                };
                if added_ids.contains(&id) {
                    continue;
                }
                let ty = if Some(id) == unk_id {
                    UNKNOWN
                } else if special_ids.contains(&id) {
                    CONTROL
                } else if is_byte_token(piece) {
                    BYTE
                } else {
                    NORMAL
                };
                entries.push((id, piece.to_owned(), ty, score as f32));
            }
            let entries = entries.into_iter().chain(added_entries(0.0));
            let (tokens, types, scores) =
                assemble(file, n, entries, |i| (format!("[PAD{i}]"), UNUSED, -1000.0))?;
            Ok(Some(GgufVocab {
                model: "llama",
                pre: "default".into(),
                tokens,
                types,
                scores: Some(scores),
                merges: None,
            }))
        }
        other => {
            warnings.push(format!(
                "{}: tokenizer model {other:?} has no llama.cpp vocabulary form; only \
                 tokenizer.huggingface.json is written",
                file.display()
            ));
            Ok(None)
        }
    }
}

/// BPE merges as `"left right"` strings (tokenizer.json stores strings or,
/// since tokenizers 0.20, pairs).
fn merges_of(file: &Path, model: &Json) -> Result<Vec<String>, ConvertError> {
    let Some(list) = model.get("merges").and_then(Json::as_array) else {
        return Err(tok_err(file, "BPE model has no `merges` array"));
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                _ => Err(tok_err(
                    file,
                    format!("model.merges[{i}] is not two strings"),
                )),
            },
            _ => Err(tok_err(file, format!("model.merges[{i}] is not a merge"))),
        })
        .collect()
}

/// A SentencePiece `tokenizer.model`, as llama.cpp's `_set_vocab_sentencepiece`
/// reads it: every piece with its score and type (user-defined pieces count
/// as normal there), then `added_tokens.json` entries not yet present as
/// user-defined tokens, then `[PAD1]`, `[PAD2]`… (unused, -1000) up to
/// `vocab_size`. Added tokens of a `tokenizer.json` beside it that lie past
/// the pieces are placed at their ids too.
fn spm_vocab(
    file: &Path,
    dir: &Path,
    json: Option<&Json>,
    n: usize,
) -> Result<GgufVocab, ConvertError> {
    let model = read_sentencepiece(file)?;
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    for p in model.pieces {
        // User-defined pieces count as normal, as in llama.cpp's converter.
        types.push(match p.r#type() {
            PieceType::Unknown => UNKNOWN,
            PieceType::Control => CONTROL,
            PieceType::Unused => UNUSED,
            PieceType::Byte => BYTE,
            PieceType::Normal | PieceType::UserDefined => NORMAL,
        });
        scores.push(p.score.unwrap_or(0.0));
        tokens.push(p.piece.unwrap_or_default());
    }
    let added_path = dir.join("added_tokens.json");
    if added_path.is_file() {
        let text = std::fs::read_to_string(&added_path)
            .map_err(|e| tok_err(&added_path, e.to_string()))?;
        let map: serde_json::Map<String, Json> = serde_json::from_str(&text)
            .map_err(|e| tok_err(&added_path, format!("invalid JSON: {e}")))?;
        let mut extra: Vec<(u64, String)> = map
            .into_iter()
            .map(|(k, v)| (v.as_u64().unwrap_or(u64::MAX), k))
            .collect();
        extra.sort();
        for (_, k) in extra {
            if !tokens.contains(&k) {
                tokens.push(k);
                scores.push(-1000.0);
                types.push(USER_DEFINED);
            }
        }
    }
    if let Some(j) = json {
        let mut added = added_tokens(file, j)?;
        added.sort();
        for (id, c, special) in added {
            if id == tokens.len() && !tokens.contains(&c) {
                tokens.push(c);
                scores.push(-1000.0);
                types.push(if special { CONTROL } else { USER_DEFINED });
            }
        }
    }
    if tokens.len() > n {
        return Err(tok_err(
            file,
            format!(
                "{} tokens do not fit the model's vocab_size {n} (config.json)",
                tokens.len()
            ),
        ));
    }
    for i in 1..=n - tokens.len() {
        tokens.push(format!("[PAD{i}]"));
        scores.push(-1000.0);
        types.push(UNUSED);
    }
    Ok(GgufVocab {
        model: "llama",
        pre: "default".into(),
        tokens,
        types,
        scores: Some(scores),
        merges: None,
    })
}

/// SentencePiece's `ModelProto` (sentencepiece_model.proto), as far as tern
/// reads it: the pieces. Its other fields (`trainer_spec` = 2,
/// `normalizer_spec` = 3, `self_test_data` = 4, `denormalizer_spec` = 5)
/// change nothing in the GGUF vocabulary and are skipped as unknown fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// `repeated SentencePiece pieces = 1`, in id order.
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<SentencePiece>,
}

/// One `ModelProto.SentencePiece`: `optional string piece = 1; optional
/// float score = 2; optional Type type = 3 [default = NORMAL]`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SentencePiece {
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    #[prost(enumeration = "PieceType", optional, tag = "3", default = "Normal")]
    pub r#type: Option<i32>,
}

/// `ModelProto.SentencePiece.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PieceType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

/// Read a serialized SentencePiece model (`tokenizer.model`). Errors name
/// `file` and, for malformed protobuf, the message and field
/// (`ModelProto.pieces: SentencePiece.piece: ...`).
pub fn read_sentencepiece(file: &Path) -> Result<ModelProto, ConvertError> {
    use prost::Message;
    let bytes = std::fs::read(file).map_err(|e| tok_err(file, e.to_string()))?;
    let model = ModelProto::decode(bytes.as_slice())
        .map_err(|e| tok_err(file, format!("not a SentencePiece model: {e}")))?;
    if model.pieces.is_empty() {
        return Err(tok_err(
            file,
            "ModelProto.pieces is empty: not a SentencePiece model",
        ));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn piece(p: &str, score: f32, kind: Option<u64>) -> Vec<u8> {
        let mut m = vec![0x0a];
        varint(p.len() as u64, &mut m);
        m.extend_from_slice(p.as_bytes());
        m.push(0x15);
        m.extend_from_slice(&score.to_le_bytes());
        if let Some(k) = kind {
            m.push(0x18);
            varint(k, &mut m);
        }
        let mut out = vec![0x0a];
        varint(m.len() as u64, &mut out);
        out.extend(m);
        out
    }

    /// `bytes` as a `tokenizer.model` in a fresh folder.
    fn model_file(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.model");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_pieces_and_skips_other_fields() {
        // Wire bytes written by hand (not by prost), as sentencepiece lays them out.
        let mut b = Vec::new();
        b.extend(piece("<unk>", 0.0, Some(2)));
        b.extend(piece("<s>", 0.0, Some(3)));
        // trainer_spec (field 2, a message) in between: skipped.
        b.extend([0x12, 0x03, 0x18, 0x01, 0x20]);
        b.extend(piece("▁the", -3.5, None));
        b.extend(piece("<0x0A>", 0.0, Some(6)));
        let (_dir, path) = model_file(&b);
        let p = read_sentencepiece(&path).unwrap().pieces;
        assert_eq!(p.len(), 4);
        assert_eq!(p[2].piece.as_deref(), Some("▁the"));
        assert_eq!(p[2].score, Some(-3.5));
        assert_eq!(p[2].r#type(), PieceType::Normal, "type defaults to NORMAL");
        assert_eq!(
            (p[0].r#type(), p[1].r#type(), p[3].r#type()),
            (PieceType::Unknown, PieceType::Control, PieceType::Byte)
        );
        // Truncation is an error naming the file, not a panic.
        let (_dir, path) = model_file(&b[..b.len() - 3]);
        let e = read_sentencepiece(&path).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.model") && e.contains("ModelProto.pieces"),
            "{e}"
        );
        let (_dir, path) = model_file(b"");
        let e = read_sentencepiece(&path).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.model") && e.contains("pieces is empty"),
            "{e}"
        );
        // A piece that is not UTF-8: the error names the field.
        let mut bad = piece("ab", 0.0, None);
        bad[4] = 0xff;
        let (_dir, path) = model_file(&bad);
        let e = read_sentencepiece(&path).unwrap_err().to_string();
        assert!(
            e.contains("SentencePiece.piece") && e.contains("UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn spm_vocab_maps_types_and_pads() {
        let mut b = Vec::new();
        b.extend(piece("<unk>", 0.0, Some(2)));
        b.extend(piece("<s>", 0.0, Some(3)));
        b.extend(piece("▁a", -1.0, Some(4)));
        b.extend(piece("<0x41>", 0.0, Some(6)));
        b.extend(piece("▁b", -2.0, Some(5)));
        b.extend(piece("▁c", -3.0, Some(9)));
        let (dir, path) = model_file(&b);
        let v = spm_vocab(&path, dir.path(), None, 8).unwrap();
        assert_eq!(
            v.tokens,
            ["<unk>", "<s>", "▁a", "<0x41>", "▁b", "▁c", "[PAD1]", "[PAD2]"]
        );
        // User-defined and unknown type ids count as normal.
        assert_eq!(
            v.types,
            [UNKNOWN, CONTROL, NORMAL, BYTE, UNUSED, NORMAL, UNUSED, UNUSED]
        );
        assert_eq!(
            v.scores.unwrap(),
            [0.0, 0.0, -1.0, 0.0, -2.0, -3.0, -1000.0, -1000.0]
        );
        let e = spm_vocab(&path, dir.path(), None, 5)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("tokenizer.model") && e.contains("vocab_size 5"),
            "{e}"
        );
    }

    #[test]
    fn llama3_pre_tokenizer_is_recognised() {
        let pre = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
        assert_eq!(bpe_pre(&pre), Some("llama-bpe"));
        let gpt2 =
            serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true});
        assert_eq!(bpe_pre(&gpt2), Some("gpt-2"));
        let other = serde_json::json!({"type": "Whitespace"});
        assert_eq!(bpe_pre(&other), None);
    }
}
