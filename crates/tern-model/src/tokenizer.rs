//! Tokenizer glue: Hugging Face `tokenizer.json` files (through the pure-Rust
//! `tokenizers` crate), tokenizers stored in GGUF metadata, and a streaming
//! decoder for printing generated text as it arrives.
//!
//! Sources, in the order [`Tokenizer::from_gguf`] tries them:
//! 1. `tokenizer.huggingface.json`: the whole `tokenizer.json` as a string.
//! 2. `tokenizer.ggml.model == "gpt2"`: a byte-level BPE rebuilt from
//!    `tokenizer.ggml.tokens`, `.merges`, `.token_type`, `.pre` (`llama-bpe` or
//!    `gpt-2`), `.bos_token_id`, `.eos_token_id`, `.add_bos_token`,
//!    `.add_eos_token`.
//!
//! Anything else (for example a `llama` SentencePiece vocabulary without the
//! JSON) is refused with an error that asks for `--tokenizer tokenizer.json`.

use std::path::Path;

use serde_json::{json, Map, Value as Json};
use tern_io::gguf::{Array, GgufFile, Value};

/// GGUF key holding a complete Hugging Face `tokenizer.json`.
pub const HF_JSON_KEY: &str = "tokenizer.huggingface.json";
/// GGUF key naming the tokenizer family (`gpt2`, `llama`, ...).
pub const GGML_MODEL_KEY: &str = "tokenizer.ggml.model";
/// GGUF key: the vocabulary, one string per id.
pub const GGML_TOKENS_KEY: &str = "tokenizer.ggml.tokens";
/// GGUF key: BPE merges as `"left right"` strings, highest priority first.
pub const GGML_MERGES_KEY: &str = "tokenizer.ggml.merges";
/// GGUF key: per-token type (1 normal, 2 unknown, 3 control, 4 user defined,
/// 5 unused, 6 byte).
pub const GGML_TOKEN_TYPE_KEY: &str = "tokenizer.ggml.token_type";
/// GGUF key: the pre-tokenizer name (`llama-bpe`, `gpt-2`, ...).
pub const GGML_PRE_KEY: &str = "tokenizer.ggml.pre";
/// GGUF key: beginning-of-sequence token id.
pub const GGML_BOS_KEY: &str = "tokenizer.ggml.bos_token_id";
/// GGUF key: end-of-sequence token id.
pub const GGML_EOS_KEY: &str = "tokenizer.ggml.eos_token_id";
/// GGUF key: whether encoding prepends the BOS token.
pub const GGML_ADD_BOS_KEY: &str = "tokenizer.ggml.add_bos_token";
/// GGUF key: whether encoding appends the EOS token.
pub const GGML_ADD_EOS_KEY: &str = "tokenizer.ggml.add_eos_token";

/// The Llama-3 pre-tokenizer split pattern (llama.cpp's `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Token names recognised as BOS / EOS when nothing more specific says so.
const BOS_NAMES: &[&str] = &["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"];
const EOS_NAMES: &[&str] = &["<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"];

/// Errors of this module; every variant names the file or source involved.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer file could not be read.
    #[error("{name}: cannot read tokenizer file: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a tokenizer.json the `tokenizers` crate accepts.
    #[error("{name}: invalid tokenizer.json: {message}")]
    Parse { name: String, message: String },
    /// GGUF tokenizer metadata is missing, mistyped or inconsistent.
    #[error("{name}: {message}")]
    Gguf { name: String, message: String },
    /// The GGUF file carries no tokenizer tern can build.
    #[error(
        "{name}: {reason}; tern cannot build a tokenizer from this GGUF file, \
         pass --tokenizer tokenizer.json"
    )]
    UnsupportedGguf { name: String, reason: String },
    /// The model source carries no tokenizer at all.
    #[error("{name}: {message}")]
    Missing { name: String, message: String },
    /// Encoding text failed.
    #[error("{name}: encoding failed: {message}")]
    Encode { name: String, message: String },
    /// Decoding ids failed.
    #[error("{name}: decoding failed: {message}")]
    Decode { name: String, message: String },
    /// Serializing the tokenizer to JSON failed.
    #[error("{name}: cannot serialize the tokenizer: {message}")]
    Serialize { name: String, message: String },
}

impl TokenizerError {
    /// The error for a model source (`name`) that has no tokenizer;
    /// `message` says what to pass instead.
    pub fn source_missing(name: impl Into<String>, message: impl Into<String>) -> Self {
        TokenizerError::Missing {
            name: name.into(),
            message: message.into(),
        }
    }

    /// The file or source the error is about.
    pub fn source_name(&self) -> &str {
        match self {
            TokenizerError::Io { name, .. }
            | TokenizerError::Parse { name, .. }
            | TokenizerError::Gguf { name, .. }
            | TokenizerError::UnsupportedGguf { name, .. }
            | TokenizerError::Missing { name, .. }
            | TokenizerError::Encode { name, .. }
            | TokenizerError::Decode { name, .. }
            | TokenizerError::Serialize { name, .. } => name,
        }
    }
}

/// A text tokenizer: a `tokenizers::Tokenizer` plus where it came from and
/// its BOS / EOS ids.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    name: String,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.name)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    /// Load a Hugging Face `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            name: name.clone(),
            source,
        })?;
        Self::from_json_bytes(name, &bytes)
    }

    /// Parse a `tokenizer.json` held in memory; `label` names it in errors.
    ///
    /// Truncation and padding stored in the file are switched off: a
    /// generation prompt must reach the model whole.
    pub fn from_json_bytes(label: impl Into<String>, bytes: &[u8]) -> Result<Self, TokenizerError> {
        let name = label.into();
        let mut inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Parse {
                name: name.clone(),
                message: e.to_string(),
            })?;
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Parse {
                name: name.clone(),
                message: e.to_string(),
            })?;
        inner.with_padding(None);
        let mut tok = Tokenizer {
            inner,
            name,
            bos: None,
            eos: None,
        };
        let (bos, eos) = tok.identify_bos_eos();
        tok.bos = bos;
        tok.eos = eos;
        Ok(tok)
    }

    /// Build the tokenizer stored in a GGUF file (see the module docs for
    /// the keys read). `tokenizer.ggml.bos_token_id` / `eos_token_id`, when
    /// present, override the BOS / EOS ids found in the JSON.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let name = gguf.path().display().to_string();
        let meta = GgufMeta {
            gguf,
            name: name.clone(),
        };
        let mut tok = match gguf.get(HF_JSON_KEY) {
            Some(Value::String(json)) => {
                Self::from_json_bytes(format!("{name} ({HF_JSON_KEY})"), json.as_bytes())?
            }
            Some(other) => {
                return Err(meta.err(format!(
                    "metadata key '{HF_JSON_KEY}' has type {}, expected string",
                    other.type_name()
                )))
            }
            None => match gguf.get(GGML_MODEL_KEY) {
                Some(Value::String(model)) if model == "gpt2" => {
                    let json = meta.gpt2_json()?;
                    let bytes = serde_json::to_vec(&json).map_err(|e| meta.err(e.to_string()))?;
                    Self::from_json_bytes(format!("{name} ({GGML_MODEL_KEY} = gpt2)"), &bytes)?
                }
                Some(Value::String(model)) => {
                    return Err(TokenizerError::UnsupportedGguf {
                        name,
                        reason: format!(
                            "it has no '{HF_JSON_KEY}' and its '{GGML_MODEL_KEY}' is \
                             '{model}' (only 'gpt2' vocabularies are rebuilt)"
                        ),
                    })
                }
                Some(other) => {
                    return Err(meta.err(format!(
                        "metadata key '{GGML_MODEL_KEY}' has type {}, expected string",
                        other.type_name()
                    )))
                }
                None => {
                    return Err(TokenizerError::UnsupportedGguf {
                        name,
                        reason: format!("it has neither '{HF_JSON_KEY}' nor '{GGML_MODEL_KEY}'"),
                    })
                }
            },
        };
        // Errors from here on name the GGUF file itself.
        tok.name = name;
        let n = tok.vocab_size();
        if let Some(id) = meta.opt_id(GGML_BOS_KEY, n)? {
            tok.bos = Some(id);
        }
        if let Some(id) = meta.opt_id(GGML_EOS_KEY, n)? {
            tok.eos = Some(id);
        }
        Ok(tok)
    }

    /// Where this tokenizer came from (a path, or a label).
    pub fn source(&self) -> &str {
        &self.name
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`; with `add_special_tokens` the post-processor's
    /// template (e.g. a leading BOS) is applied.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode {
                name: self.name.clone(),
                message: e.to_string(),
            })
    }

    /// Text of `ids`; `skip_special` drops special tokens. Ids outside the
    /// vocabulary are dropped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode {
                name: self.name.clone(),
                message: e.to_string(),
            })
    }

    /// Number of distinct tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Beginning-of-sequence id: from GGUF metadata, else the token the
    /// post-processor template puts before the text, else a special token
    /// with a well-known BOS name.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id: from GGUF metadata, else the token the
    /// post-processor template puts after the text, else a special token
    /// with a well-known EOS name.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Id of a token string (vocabulary or added token).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// True when `id` is a special added token (skipped by
    /// `decode(.., skip_special = true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some_and(|t| self.inner.get_added_vocabulary().is_special_token(&t))
    }

    /// The tokenizer as compact `tokenizer.json` text (what the converter
    /// stores under `tokenizer.huggingface.json`).
    pub fn to_json_string(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(false)
            .map_err(|e| TokenizerError::Serialize {
                name: self.name.clone(),
                message: e.to_string(),
            })
    }

    /// A streaming decoder over this tokenizer.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder<'_> {
        StreamDecoder::new(self, skip_special)
    }

    /// BOS / EOS from the post-processor template, then from well-known names.
    fn identify_bos_eos(&self) -> (Option<u32>, Option<u32>) {
        let (mut bos, mut eos) = self
            .inner
            .get_post_processor()
            .and_then(|pp| serde_json::to_value(pp).ok())
            .and_then(|pp| find_template(&pp).map(template_bos_eos))
            .unwrap_or((None, None));
        let special = |names: &[&str]| {
            names.iter().find_map(|n| {
                let id = self.inner.token_to_id(n)?;
                self.is_special(id).then_some(id)
            })
        };
        if bos.is_none() {
            bos = special(BOS_NAMES);
        }
        if eos.is_none() {
            eos = special(EOS_NAMES);
        }
        (bos, eos)
    }
}

/// The first `TemplateProcessing` object in a serialized post-processor
/// (directly or inside a `Sequence`).
fn find_template(pp: &Json) -> Option<&Json> {
    match pp.get("type")?.as_str()? {
        "TemplateProcessing" => Some(pp),
        "Sequence" => pp
            .get("processors")?
            .as_array()?
            .iter()
            .find_map(find_template),
        _ => None,
    }
}

/// BOS = the special token just before the first `$A` of the single-sequence
/// template, EOS = the one just after it; each must map to exactly one id.
fn template_bos_eos(t: &Json) -> (Option<u32>, Option<u32>) {
    let Some(single) = t.get("single").and_then(Json::as_array) else {
        return (None, None);
    };
    let id_of = |piece: Option<&Json>| -> Option<u32> {
        let name = piece?.get("SpecialToken")?.get("id")?.as_str()?;
        let ids = t.get("special_tokens")?.get(name)?.get("ids")?.as_array()?;
        match ids.as_slice() {
            [one] => one.as_u64().and_then(|v| u32::try_from(v).ok()),
            _ => None,
        }
    };
    let Some(pos) = single.iter().position(|p| p.get("Sequence").is_some()) else {
        return (None, None);
    };
    let bos = pos.checked_sub(1).and_then(|i| id_of(single.get(i)));
    let eos = id_of(single.get(pos + 1));
    (bos, eos)
}

/// Typed access to the tokenizer keys of one GGUF file, with errors that
/// name the file.
struct GgufMeta<'a> {
    gguf: &'a GgufFile,
    name: String,
}

impl GgufMeta<'_> {
    fn err(&self, message: String) -> TokenizerError {
        TokenizerError::Gguf {
            name: self.name.clone(),
            message,
        }
    }

    fn required(&self, key: &str) -> Result<&Value, TokenizerError> {
        self.gguf
            .get(key)
            .ok_or_else(|| self.err(format!("metadata key '{key}' is missing")))
    }

    fn str_array(&self, key: &str) -> Result<&tern_io::gguf::StringArray, TokenizerError> {
        match self.required(key)? {
            Value::Array(Array::String(a)) => Ok(a),
            other => Err(self.err(format!(
                "metadata key '{key}' has type {}, expected array[string]",
                other.type_name()
            ))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        match self.gguf.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(format!(
                "metadata key '{key}' has type {}, expected bool",
                other.type_name()
            ))),
        }
    }

    /// An optional token id (any integer type), checked against `n_vocab`.
    fn opt_id(&self, key: &str, n_vocab: usize) -> Result<Option<u32>, TokenizerError> {
        let Some(v) = self.gguf.get(key) else {
            return Ok(None);
        };
        let id = int_value(v).ok_or_else(|| {
            self.err(format!(
                "metadata key '{key}' has type {}, expected an integer",
                v.type_name()
            ))
        })?;
        match u32::try_from(id) {
            Ok(id) if (id as usize) < n_vocab => Ok(Some(id)),
            _ => Err(self.err(format!(
                "metadata key '{key}' = {id} is outside the vocabulary of {n_vocab} tokens"
            ))),
        }
    }

    /// A `tokenizer.json` equivalent to the `gpt2` (byte-level BPE) keys.
    fn gpt2_json(&self) -> Result<Json, TokenizerError> {
        let tokens = self.str_array(GGML_TOKENS_KEY)?;
        let merges = self.str_array(GGML_MERGES_KEY)?;
        let n = tokens.len();
        if n == 0 {
            return Err(self.err(format!("metadata key '{GGML_TOKENS_KEY}' is empty")));
        }
        let types: Vec<i64> = match self.gguf.get(GGML_TOKEN_TYPE_KEY) {
            None => vec![1; n],
            Some(Value::Array(a)) => {
                let t: Option<Vec<i64>> = (0..a.len())
                    .map(|i| a.get(i).as_ref().and_then(int_value))
                    .collect();
                match t {
                    Some(t) if t.len() == n => t,
                    Some(t) => {
                        return Err(self.err(format!(
                            "metadata key '{GGML_TOKEN_TYPE_KEY}' has {} entries for {n} tokens",
                            t.len()
                        )))
                    }
                    None => {
                        return Err(self.err(format!(
                            "metadata key '{GGML_TOKEN_TYPE_KEY}' has type {}, expected an \
                             integer array",
                            a.type_name()
                        )))
                    }
                }
            }
            Some(other) => {
                return Err(self.err(format!(
                    "metadata key '{GGML_TOKEN_TYPE_KEY}' has type {}, expected an integer array",
                    other.type_name()
                )))
            }
        };
        let bos = self.opt_id(GGML_BOS_KEY, n)?;
        let eos = self.opt_id(GGML_EOS_KEY, n)?;

        let mut vocab = Map::with_capacity(n);
        let mut added = Vec::new();
        for (id, tok) in tokens.iter().enumerate() {
            if vocab.insert(tok.to_owned(), json!(id)).is_some() {
                return Err(self.err(format!(
                    "metadata key '{GGML_TOKENS_KEY}' repeats the token {tok:?} (id {id})"
                )));
            }
            let id32 = id as u32;
            let special = types[id] == TOKEN_TYPE_CONTROL || Some(id32) == bos || Some(id32) == eos;
            if special || types[id] == TOKEN_TYPE_USER_DEFINED {
                added.push(json!({
                    "id": id,
                    "content": tok,
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": false,
                    "special": special,
                }));
            }
        }
        let mut merge_pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            // Split at the first space after the first character, as llama.cpp does.
            let cut = m
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(p, _)| p);
            match cut {
                Some(p) => merge_pairs.push(json!([&m[..p], &m[p + 1..]])),
                None => {
                    return Err(self.err(format!(
                        "metadata key '{GGML_MERGES_KEY}' entry {i} ({m:?}) is not 'left right'"
                    )))
                }
            }
        }

        let pre = match self.gguf.get(GGML_PRE_KEY) {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(self.err(format!(
                    "metadata key '{GGML_PRE_KEY}' has type {}, expected string",
                    other.type_name()
                )))
            }
            None => {
                return Err(TokenizerError::UnsupportedGguf {
                    name: self.name.clone(),
                    reason: format!(
                    "its gpt2 vocabulary has no '{GGML_PRE_KEY}', so the pre-tokenizer is unknown"
                ),
                })
            }
        };
        let (pre_tokenizer, ignore_merges) = match pre {
            "llama-bpe" => (
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT},
                     "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                     "use_regex": false},
                ]}),
                true,
            ),
            "gpt-2" => (
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                       "use_regex": true}),
                false,
            ),
            other => {
                return Err(TokenizerError::UnsupportedGguf {
                    name: self.name.clone(),
                    reason: format!(
                        "its gpt2 vocabulary uses the pre-tokenizer '{other}' (supported: \
                         'llama-bpe', 'gpt-2')"
                    ),
                })
            }
        };

        let add_bos = self.opt_bool(GGML_ADD_BOS_KEY)?.unwrap_or(false);
        let add_eos = self.opt_bool(GGML_ADD_EOS_KEY)?.unwrap_or(false);
        let mut special_tokens = Map::new();
        let mut side = |flag: bool, id: Option<u32>, key: &str| -> Result<Vec<Json>, String> {
            if !flag {
                return Ok(Vec::new());
            }
            let id = id.ok_or_else(|| format!("'{key}' is set but the token id is missing"))?;
            let tok = tokens.get(id as usize).unwrap_or_default();
            special_tokens.insert(
                tok.to_owned(),
                json!({"id": tok, "ids": [id], "tokens": [tok]}),
            );
            Ok(vec![json!({"SpecialToken": {"id": tok, "type_id": 0}})])
        };
        let before = side(add_bos, bos, GGML_ADD_BOS_KEY).map_err(|m| self.err(m))?;
        let after = side(add_eos, eos, GGML_ADD_EOS_KEY).map_err(|m| self.err(m))?;
        let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
        let single: Vec<Json> = before
            .iter()
            .cloned()
            .chain([seq("A", 0)])
            .chain(after.iter().cloned())
            .collect();
        let mut pair = single.clone();
        pair.extend(before.iter().cloned());
        pair.push(seq("B", 1));
        pair.extend(after.iter().cloned());

        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": {"type": "Sequence", "processors": [
                {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
                 "use_regex": true},
                {"type": "TemplateProcessing", "single": single, "pair": pair,
                 "special_tokens": special_tokens},
            ]},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                        "use_regex": true},
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": ignore_merges,
                "vocab": vocab,
                "merges": merge_pairs,
            },
        }))
    }
}

/// An integer metadata value as i64 (u64 values above i64::MAX give None).
fn int_value(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

/// Incremental detokenizer for printing generated text as it arrives.
///
/// Tokens are pushed one at a time; each push returns the text that became
/// final with that token (possibly empty). It keeps a short window of
/// tokens, decodes the whole window and emits what the newest tokens added
/// to the decode of the older part, so decoders that depend on neighbours
/// (Metaspace's leading space, byte-level tokens that split a UTF-8
/// character) come out exactly as a full [`Tokenizer::decode`]. Output that
/// ends in U+FFFD (an incomplete UTF-8 sequence so far) is held back until a
/// later token completes it, or until [`StreamDecoder::finish`].
///
/// With `skip_special`, special tokens are dropped on arrival, which matches
/// `decode(ids, true)` (that drops them before its decoder runs).
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    /// Window of ids; `ids[..read]` has been emitted, `ids[..prefix]` is only
    /// kept as left context for the decoder.
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder with nothing pushed yet.
    pub fn new(tok: &'a Tokenizer, skip_special: bool) -> Self {
        StreamDecoder {
            tok,
            skip_special,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Add one token; returns the newly completed text (may be empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        if self.skip_special && self.tok.is_special(id) {
            return Ok(String::new());
        }
        self.ids.push(id);
        let window = self.ids.get(self.prefix..).unwrap_or_default();
        let done = self.ids.get(self.prefix..self.read).unwrap_or_default();
        let prefix_text = self.tok.decode(done, false)?;
        let text = self.tok.decode(window, false)?;
        if text.len() > prefix_text.len()
            && !text.ends_with('\u{FFFD}')
            && text.starts_with(&prefix_text)
        {
            let new = text.get(prefix_text.len()..).unwrap_or_default().to_owned();
            // The emitted tokens become the left context of the next window.
            self.ids.drain(..self.prefix);
            self.prefix = self.read - self.prefix;
            self.read = self.ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Emit whatever is still held back (an unfinished UTF-8 sequence comes
    /// out as U+FFFD, as `decode` renders it) and reset the decoder.
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let window = self.ids.get(self.prefix..).unwrap_or_default();
        let done = self.ids.get(self.prefix..self.read).unwrap_or_default();
        let prefix_text = self.tok.decode(done, false)?;
        let text = self.tok.decode(window, false)?;
        let common = common_prefix_len(&prefix_text, &text);
        let rest = text.get(common..).unwrap_or_default().to_owned();
        self.ids.clear();
        self.prefix = 0;
        self.read = 0;
        Ok(rest)
    }
}

/// Byte length of the longest common prefix of `a` and `b` that ends on a
/// character boundary (and covers all of `a` when `b` extends it).
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map_or_else(|| a.len().min(b.len()), |((i, _), _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_stops_at_first_difference() {
        assert_eq!(common_prefix_len("abc", "abcdef"), 3);
        assert_eq!(common_prefix_len("ab\u{FFFD}", "ab\u{4E2D}"), 2);
        assert_eq!(common_prefix_len("", "xyz"), 0);
        assert_eq!(common_prefix_len("xyz", "xy"), 2);
    }

    #[test]
    fn template_pieces_give_bos_and_eos() {
        let t = json!({
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
            ],
            "special_tokens": {
                "<s>": {"id": "<s>", "ids": [5], "tokens": ["<s>"]},
                "</s>": {"id": "</s>", "ids": [9], "tokens": ["</s>"]},
            },
        });
        let seq = json!({"type": "Sequence", "processors": [{"type": "ByteLevel"}, t]});
        let found = find_template(&seq).map(template_bos_eos);
        assert_eq!(found, Some((Some(5), Some(9))));
        let plain = json!({"type": "ByteLevel"});
        assert!(find_template(&plain).is_none());
    }
}
