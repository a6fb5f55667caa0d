//! The tokenizer of a Hugging Face model folder as GGUF metadata, the way
//! llama.cpp's `convert_hf_to_gguf.py` writes it, so that llama.cpp (and the
//! bitnet.cpp fork) can run the file without the Hugging Face JSON:
//!
//! - byte-level BPE (`tokenizer.json` whose model is BPE with a `ByteLevel`
//!   pre-tokenizer or decoder; Llama-3, GPT-2): `tokenizer.ggml.model =
//!   "gpt2"`, `.pre`, `.tokens`, `.token_type`, `.merges`;
//! - SentencePiece (`tokenizer.model`, read with the protobuf reader below; or
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
    let bytes = std::fs::read(file).map_err(|e| tok_err(file, e.to_string()))?;
    let pieces = parse_sentencepiece(&bytes).map_err(|r| tok_err(file, r))?;
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    for p in pieces {
        tokens.push(p.piece);
        scores.push(p.score);
        types.push(match p.kind {
            2 => UNKNOWN,
            3 => CONTROL,
            5 => UNUSED,
            6 => BYTE,
            _ => NORMAL,
        });
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

/// One `SentencePiece` entry of a `ModelProto`.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    /// `Type`: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
    pub kind: u32,
}

/// The pieces of a serialized SentencePiece `ModelProto` (field 1, repeated
/// `SentencePiece { string piece = 1; float score = 2; Type type = 3 [default
/// = NORMAL]; }`); every other field is skipped.
pub fn parse_sentencepiece(bytes: &[u8]) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut r = Proto { b: bytes, pos: 0 };
    while !r.done() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == 2 {
            let msg = r.bytes()?;
            let mut m = Proto { b: msg, pos: 0 };
            let mut p = Piece {
                piece: String::new(),
                score: 0.0,
                kind: 1,
            };
            while !m.done() {
                match m.key()? {
                    (1, 2) => {
                        p.piece = String::from_utf8(m.bytes()?.to_vec())
                            .map_err(|_| format!("piece {} is not UTF-8", out.len()))?
                    }
                    (2, 5) => p.score = f32::from_le_bytes(m.fixed::<4>()?),
                    (3, 0) => p.kind = m.varint()? as u32,
                    (_, w) => m.skip(w)?,
                }
            }
            out.push(p);
        } else {
            r.skip(wire)?;
        }
    }
    if out.is_empty() {
        return Err("no pieces: not a SentencePiece model".into());
    }
    Ok(out)
}

/// A minimal protobuf wire-format reader.
struct Proto<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Proto<'a> {
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .b
                .get(self.pos)
                .ok_or_else(|| format!("truncated varint at byte {}", self.pos))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }
    fn key(&mut self) -> Result<(u64, u8), String> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("field of {n} bytes at byte {} overruns the data", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| "length overflow".to_string())?)
    }
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            w => Err(format!("unsupported wire type {w} at byte {}", self.pos)),
        }
    }
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

    #[test]
    fn reads_pieces_and_skips_other_fields() {
        let mut b = Vec::new();
        b.extend(piece("<unk>", 0.0, Some(2)));
        b.extend(piece("<s>", 0.0, Some(3)));
        // trainer_spec (field 2, a message) in between: skipped.
        b.extend([0x12, 0x03, 0x18, 0x01, 0x20]);
        b.extend(piece("▁the", -3.5, None));
        b.extend(piece("<0x0A>", 0.0, Some(6)));
        let p = parse_sentencepiece(&b).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[2].piece, "▁the");
        assert_eq!(p[2].score, -3.5);
        assert_eq!(p[2].kind, 1, "type defaults to NORMAL");
        assert_eq!((p[0].kind, p[1].kind, p[3].kind), (2, 3, 6));
        // Truncation is an error, not a panic.
        assert!(parse_sentencepiece(&b[..b.len() - 3]).is_err());
        assert!(parse_sentencepiece(b"").is_err());
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
