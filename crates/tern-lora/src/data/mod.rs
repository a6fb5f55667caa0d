//! The fine-tuning data pipeline: files -> token sequences -> micro-batches
//! of `tokens` / `targets` for [`Trainer::forward_backward`](crate::Trainer).
//!
//! # Formats
//! The extension picks how a file is read, the records pick what they are:
//! - `.txt` (also `.text`, `.md`): the whole file is one text document.
//! - `.jsonl` / `.json` (also `.ndjson`): JSON Lines, one object per line,
//!   blank lines skipped. A record with a `text` string is a text document;
//!   a record with `messages` (`[{role, content}, ...]`, roles `system`,
//!   `user`, `assistant`, `tool`) is a conversation. A file holds one kind.
//!
//! # Text: packing
//! Each document is tokenized without the tokenizer's post-processor, then
//! framed as `BOS? ids EOS?` (BOS when [`DataOptions::add_bos`] and the
//! tokenizer has one, EOS when the tokenizer has one). The documents are
//! concatenated into one stream and cut into windows of `ctx + 1` tokens
//! that overlap by one token (stride `ctx`): window `k` covers
//! `stream[k*ctx ..= k*ctx + ctx]`, its inputs are the first `ctx` tokens and
//! its targets the last `ctx`. Every token after the first is thus predicted
//! exactly once per epoch. Attention crosses document boundaries inside a
//! window (the EOS / BOS pair marks them), as in the usual causal-LM
//! packing. The last, partial window is kept: its inputs are as long as what
//! is left, and [`Dataset::batch`] pads it with ignored targets, so the tail
//! of the data is trained on rather than dropped.
//!
//! # Chat: one conversation per sequence
//! A conversation is rendered with the chat template (built-in ChatML unless
//! [`DataOptions::chat_template`] names one; see [`template`]) and tokenized
//! as it renders (`add_special_tokens = false`: the template writes its own
//! BOS; with `add_bos` a BOS is put in front only when the rendering does not
//! already start with it). Conversations are never packed together; one
//! longer than `ctx + 1` tokens is truncated to `ctx + 1` and counted in
//! [`DataStats::truncated`].
//!
//! With [`DataOptions::assistant_loss_only`] only tokens of assistant turns
//! are targets: the assistant's content and the end-of-turn marker that
//! closes it (`<|im_end|>` in ChatML), as PEFT / TRL train; the role header
//! (`<|im_start|>assistant\n`) and the separator after the marker are not.
//! The spans come from rendering conversation prefixes (see
//! [`template`]), mapped to tokens through the tokenizer's offsets: a token
//! is a target when its source bytes overlap an assistant span.
//!
//! # Split and order
//! A validation split takes a seeded random subset of the examples (windows
//! or conversations); both parts keep file order. [`Dataset::epoch_order`]
//! is a seeded permutation of the training examples per epoch, or file order
//! with `shuffle = false`. The generator is tern's SplitMix64
//! ([`tern_tensor::rng`]), so a seed means the same split and order
//! everywhere.

mod error;
mod rng;
mod source;
pub mod template;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use tern_model::tokenizer::Tokenizer;

pub use error::DataError;
pub use source::ROLES;
pub use template::{discover_chat_template, ChatTemplate, CHATML_TEMPLATE};

use rng::Rng;
use source::{ChatRecord, Records, TextRecord};
use template::Renderer;

/// A target that does not count in the loss.
pub const IGNORE: u32 = u32::MAX;

/// How many examples are held out for validation.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum ValidationSplit {
    /// No validation set.
    #[default]
    None,
    /// This fraction of the examples, in `[0, 1)`, rounded, at least one when
    /// positive.
    Fraction(f64),
    /// Exactly this many examples.
    Count(usize),
}

/// How to read and cut a data file.
#[derive(Clone, Debug)]
pub struct DataOptions {
    /// Sequence length: tokens per training sequence (inputs), so windows
    /// and conversations span at most `ctx + 1` tokens.
    pub ctx: usize,
    /// Chat template for `messages` records: Jinja source, or a path to a
    /// `tokenizer_config.json` or a `.jinja` file (see
    /// [`ChatTemplate::from_spec`] and [`discover_chat_template`]). `None`:
    /// built-in ChatML. Not used for text data.
    pub chat_template: Option<String>,
    /// Train only on assistant turns (chat data only).
    pub assistant_loss_only: bool,
    /// Validation hold-out.
    pub validation: ValidationSplit,
    /// Seed of the split and of the epoch shuffles.
    pub seed: u64,
    /// Shuffle the training examples every epoch (`false`: file order).
    pub shuffle: bool,
    /// Put the tokenizer's BOS in front of each document / conversation.
    pub add_bos: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            ctx: 512,
            chat_template: None,
            assistant_loss_only: false,
            validation: ValidationSplit::None,
            seed: 0,
            shuffle: true,
            add_bos: true,
        }
    }
}

/// What kind of records the file held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFormat {
    /// Text documents, packed into windows.
    Text,
    /// Conversations, one per sequence.
    Chat,
}

/// One training sequence, unpadded: `targets[i]` is the token expected after
/// `inputs[i]`, or [`IGNORE`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    /// Line of the record the sequence starts in (1-based; 1 for `.txt`).
    pub line: usize,
}

impl Example {
    /// Targets that count in the loss.
    pub fn n_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }
}

/// A micro-batch laid out as [`Trainer::forward_backward`](crate::Trainer)
/// takes it: `batch` rows of `seq` tokens, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    /// Targets that count in the loss.
    pub fn n_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }
}

/// Counts gathered while loading, for the run report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataStats {
    /// Documents or conversations read.
    pub records: usize,
    /// Text records whose `text` was empty (skipped).
    pub empty_records: usize,
    /// Tokens produced: documents with their BOS / EOS, or conversations
    /// before truncation.
    pub tokens: usize,
    /// Examples (windows or conversations) before the split.
    pub examples: usize,
    pub train_examples: usize,
    pub validation_examples: usize,
    /// Targets that count in the loss, per epoch.
    pub train_tokens: usize,
    pub validation_tokens: usize,
    /// Conversations cut to `ctx + 1` tokens.
    pub truncated: usize,
    /// Tokens those cuts removed.
    pub truncated_tokens: usize,
    /// Examples without a single target that counts (e.g. an assistant turn
    /// that starts past `ctx`, or a conversation without one).
    pub no_target_examples: usize,
}

impl fmt::Display for DataStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records, {} tokens -> {} examples ({} train / {} validation), \
             {} train tokens per epoch, {} validation tokens",
            self.records,
            self.tokens,
            self.examples,
            self.train_examples,
            self.validation_examples,
            self.train_tokens,
            self.validation_tokens
        )?;
        if self.truncated > 0 {
            write!(
                f,
                "; {} conversations truncated ({} tokens cut)",
                self.truncated, self.truncated_tokens
            )?;
        }
        if self.empty_records > 0 {
            write!(f, "; {} empty records skipped", self.empty_records)?;
        }
        if self.no_target_examples > 0 {
            write!(
                f,
                "; {} examples have no target that counts",
                self.no_target_examples
            )?;
        }
        Ok(())
    }
}

/// A loaded, tokenized, split data set.
#[derive(Clone, Debug)]
pub struct Dataset {
    path: PathBuf,
    format: DataFormat,
    ctx: usize,
    seed: u64,
    shuffle: bool,
    pad_id: u32,
    train: Vec<Example>,
    validation: Vec<Example>,
    stats: DataStats,
}

impl Dataset {
    /// Read `path`, tokenize it with `tok` and split it as `opts` say.
    pub fn load(path: &Path, tok: &Tokenizer, opts: &DataOptions) -> Result<Self, DataError> {
        if opts.ctx == 0 {
            return Err(DataError::Options("ctx must be at least 1".into()));
        }
        match opts.validation {
            ValidationSplit::Fraction(f) if !(0.0..1.0).contains(&f) => {
                return Err(DataError::Options(format!(
                    "validation fraction {f} is outside [0, 1)"
                )))
            }
            _ => {}
        }
        let mut stats = DataStats::default();
        let (format, examples) = match source::read(path)? {
            Records::Text(records) => {
                if opts.assistant_loss_only {
                    return Err(DataError::file_msg(
                        path,
                        "--assistant-loss-only needs chat records (`messages`); this file \
                         holds plain text",
                    ));
                }
                let ex = pack_text(path, &records, tok, opts, &mut stats)?;
                (DataFormat::Text, ex)
            }
            Records::Chat(records) => {
                let tpl = match &opts.chat_template {
                    Some(spec) => ChatTemplate::from_spec(spec)?,
                    None => ChatTemplate::chatml(),
                };
                let token_str = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
                let renderer =
                    Renderer::new(&tpl, token_str(tok.bos_id()), token_str(tok.eos_id()))?;
                let ex = chat_examples(path, &records, tok, &renderer, opts, &mut stats)?;
                (DataFormat::Chat, ex)
            }
        };
        if examples.is_empty() {
            return Err(DataError::file_msg(
                path,
                "no training sequence: the data tokenizes to fewer than two tokens",
            ));
        }
        stats.examples = examples.len();
        stats.no_target_examples = examples.iter().filter(|e| e.n_targets() == 0).count();
        let (train, validation) = split(path, examples, opts)?;
        stats.train_examples = train.len();
        stats.validation_examples = validation.len();
        stats.train_tokens = train.iter().map(Example::n_targets).sum();
        stats.validation_tokens = validation.iter().map(Example::n_targets).sum();
        let pad_id = tok.eos_id().or(tok.bos_id()).unwrap_or(0);
        Ok(Dataset {
            path: path.to_path_buf(),
            format,
            ctx: opts.ctx,
            seed: opts.seed,
            shuffle: opts.shuffle,
            pad_id,
            train,
            validation,
            stats,
        })
    }

    /// The file the data came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Text (packed) or chat (one conversation per sequence).
    pub fn format(&self) -> DataFormat {
        self.format
    }

    /// Sequence length the data was cut for.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Counts gathered while loading.
    pub fn stats(&self) -> &DataStats {
        &self.stats
    }

    /// Training examples, in file order.
    pub fn train(&self) -> &[Example] {
        &self.train
    }

    /// Validation examples, in file order.
    pub fn validation(&self) -> &[Example] {
        &self.validation
    }

    /// Number of training examples.
    pub fn train_len(&self) -> usize {
        self.train.len()
    }

    /// Number of validation examples.
    pub fn validation_len(&self) -> usize {
        self.validation.len()
    }

    /// Targets that count in the loss in one epoch of training.
    pub fn train_tokens(&self) -> usize {
        self.stats.train_tokens
    }

    /// Targets that count in the loss in one pass over the validation set.
    pub fn validation_tokens(&self) -> usize {
        self.stats.validation_tokens
    }

    /// The order of the training examples in `epoch`: a permutation seeded by
    /// `(seed, epoch)`, or file order when shuffling is off.
    pub fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        if self.shuffle {
            Rng::new(self.seed, "epoch", epoch as u64).shuffle(&mut order);
        }
        order
    }

    /// The micro-batch of training examples `indices`, laid out as `assemble` describes.
    ///
    /// # Panics
    /// When an index is not below [`Self::train_len`].
    pub fn batch(&self, indices: &[usize]) -> Batch {
        self.assemble(&self.train, indices)
    }

    /// The micro-batch of validation examples `indices`.
    ///
    /// # Panics
    /// When an index is not below [`Self::validation_len`].
    pub fn validation_batch(&self, indices: &[usize]) -> Batch {
        self.assemble(&self.validation, indices)
    }

    /// The validation set in file order, `batch_size` examples at a time.
    pub fn validation_batches(&self, batch_size: usize) -> impl Iterator<Item = Batch> + '_ {
        let n = self.validation.len();
        (0..n).step_by(batch_size.max(1)).map(move |s| {
            self.validation_batch(&(s..(s + batch_size.max(1)).min(n)).collect::<Vec<_>>())
        })
    }

    /// Rows of the selected examples, each padded to the longest of them
    /// (so `seq <= ctx`; packed text windows are all `ctx` but the last).
    /// Padding positions hold the EOS id (else BOS, else 0) as input and
    /// [`IGNORE`] as target; with causal attention they never influence the
    /// real positions before them.
    fn assemble(&self, set: &[Example], indices: &[usize]) -> Batch {
        let rows: Vec<&Example> = indices
            .iter()
            .map(|&i| {
                set.get(i).unwrap_or_else(|| {
                    panic!("example index {i} out of range ({} examples)", set.len())
                })
            })
            .collect();
        let seq = rows.iter().map(|e| e.inputs.len()).max().unwrap_or(0);
        let mut tokens = Vec::with_capacity(rows.len() * seq);
        let mut targets = Vec::with_capacity(rows.len() * seq);
        for e in &rows {
            tokens.extend_from_slice(&e.inputs);
            targets.extend_from_slice(&e.targets);
            let pad = seq - e.inputs.len();
            tokens.extend(std::iter::repeat_n(self.pad_id, pad));
            targets.extend(std::iter::repeat_n(IGNORE, pad));
        }
        Batch {
            tokens,
            targets,
            batch: rows.len(),
            seq,
        }
    }
}

/// Tokenize and pack text documents (see the module docs).
fn pack_text(
    path: &Path,
    records: &[TextRecord],
    tok: &Tokenizer,
    opts: &DataOptions,
    stats: &mut DataStats,
) -> Result<Vec<Example>, DataError> {
    let bos = tok.bos_id().filter(|_| opts.add_bos);
    let eos = tok.eos_id();
    // The token stream and, per document, (first token index, line).
    let mut stream: Vec<u32> = Vec::new();
    let mut starts: Vec<(usize, usize)> = Vec::new();
    for rec in records {
        stats.records += 1;
        if rec.text.is_empty() {
            stats.empty_records += 1;
            continue;
        }
        let ids = tok
            .encode(&rec.text, false)
            .map_err(|e| DataError::Tokenize {
                file: path.to_path_buf(),
                line: rec.line,
                tokenizer: tok.source().to_owned(),
                message: e.to_string(),
            })?;
        starts.push((stream.len(), rec.line));
        stream.extend(bos);
        stream.extend_from_slice(&ids);
        stream.extend(eos);
    }
    stats.tokens = stream.len();
    let ctx = opts.ctx;
    let mut out = Vec::new();
    let mut start = 0;
    while start + 1 < stream.len() {
        let end = (start + ctx + 1).min(stream.len());
        let w = &stream[start..end];
        // The document the window starts in.
        let doc = starts.partition_point(|&(s, _)| s <= start);
        let line = starts.get(doc.saturating_sub(1)).map_or(1, |&(_, l)| l);
        out.push(Example {
            inputs: w[..w.len() - 1].to_vec(),
            targets: w[1..].to_vec(),
            line,
        });
        start += ctx;
    }
    Ok(out)
}

/// Render, tokenize and mask each conversation (see the module docs).
fn chat_examples(
    path: &Path,
    records: &[ChatRecord],
    tok: &Tokenizer,
    renderer: &Renderer,
    opts: &DataOptions,
    stats: &mut DataStats,
) -> Result<Vec<Example>, DataError> {
    let bos = tok.bos_id().filter(|_| opts.add_bos);
    let mut out = Vec::with_capacity(records.len());
    for rec in records {
        stats.records += 1;
        let (text, spans) = renderer
            .render_with_spans(&rec.messages, rec.tools.as_ref(), opts.assistant_loss_only)
            .map_err(|message| DataError::Render {
                file: path.to_path_buf(),
                line: rec.line,
                template: renderer.origin().to_owned(),
                message,
            })?;
        let enc = tok
            .inner()
            .encode(text.as_str(), false)
            .map_err(|e| DataError::Tokenize {
                file: path.to_path_buf(),
                line: rec.line,
                tokenizer: tok.source().to_owned(),
                message: e.to_string(),
            })?;
        let mut ids = enc.get_ids().to_vec();
        let mut trained: Vec<bool> = enc
            .get_offsets()
            .iter()
            .map(|&(s, e)| !opts.assistant_loss_only || overlaps(s..e, &spans))
            .collect();
        if let Some(b) = bos {
            if ids.first() != Some(&b) {
                ids.insert(0, b);
                trained.insert(0, false);
            }
        }
        stats.tokens += ids.len();
        let keep = opts.ctx + 1;
        if ids.len() > keep {
            stats.truncated += 1;
            stats.truncated_tokens += ids.len() - keep;
            ids.truncate(keep);
            trained.truncate(keep);
        }
        if ids.len() < 2 {
            continue;
        }
        let targets = ids[1..]
            .iter()
            .zip(&trained[1..])
            .map(|(&id, &t)| if t { id } else { IGNORE })
            .collect();
        ids.pop();
        out.push(Example {
            inputs: ids,
            targets,
            line: rec.line,
        });
    }
    Ok(out)
}

/// True when the token's source bytes `tok` overlap one of `spans`; a token
/// with an empty range counts when it sits inside a span.
fn overlaps(tok: Range<usize>, spans: &[Range<usize>]) -> bool {
    spans.iter().any(|s| {
        if tok.is_empty() {
            s.contains(&tok.start)
        } else {
            tok.start < s.end && s.start < tok.end
        }
    })
}

/// Seeded hold-out of validation examples; both parts keep file order.
fn split(
    path: &Path,
    examples: Vec<Example>,
    opts: &DataOptions,
) -> Result<(Vec<Example>, Vec<Example>), DataError> {
    let n = examples.len();
    let n_val = match opts.validation {
        ValidationSplit::None => 0,
        ValidationSplit::Fraction(f) if f > 0.0 => ((f * n as f64).round() as usize).max(1),
        ValidationSplit::Fraction(_) => 0,
        ValidationSplit::Count(c) => c,
    };
    if n_val == 0 {
        return Ok((examples, Vec::new()));
    }
    if n_val >= n {
        return Err(DataError::file_msg(
            path,
            format!(
                "a validation split of {n_val} leaves no training examples (the file gives \
                 {n} examples at ctx {})",
                opts.ctx
            ),
        ));
    }
    let mut perm: Vec<usize> = (0..n).collect();
    Rng::new(opts.seed, "validation", 0).shuffle(&mut perm);
    let mut is_val = vec![false; n];
    for &i in &perm[..n_val] {
        is_val[i] = true;
    }
    let (val, train): (Vec<_>, Vec<_>) = examples.into_iter().zip(is_val).partition(|(_, v)| *v);
    Ok((
        train.into_iter().map(|(e, _)| e).collect(),
        val.into_iter().map(|(e, _)| e).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_rule() {
        let spans = [5..10, 20..22];
        assert!(overlaps(4..6, &spans));
        assert!(overlaps(9..12, &spans));
        assert!(!overlaps(10..12, &spans));
        assert!(!overlaps(0..5, &spans));
        assert!(overlaps(7..7, &spans));
        assert!(!overlaps(10..10, &spans));
        assert!(overlaps(21..30, &spans));
        assert!(!overlaps(12..20, &spans));
    }
}
