//! tern-synth: a corpus made entirely by tern's own code, for training a
//! tiny BitNet model from scratch and fine-tuning it on a task it has never
//! seen.
//!
//! Draw seeded examples of a task and tokenize them with the corpus's
//! code-built tokenizer:
//!
//! ```
//! use tern_synth::{examples, tokenizer, Split, TaskKind, MAX_SEQUENCE_TOKENS};
//!
//! let train = examples(TaskKind::Max, Split::Train, 3, 0)?;
//! assert_eq!(train, examples(TaskKind::Max, Split::Train, 3, 0)?); // same seed, same examples
//! let tok = tokenizer()?;
//! for ex in &train {
//!     // A held-out prompt never appears in training: the split is a hash of the prompt.
//!     assert_eq!(Split::of(&ex.prompt), Split::Train);
//!     let ids = tok.encode(&format!("{} {}", ex.prompt, ex.answer), true)?;
//!     assert!(ids.len() <= MAX_SEQUENCE_TOKENS);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`lexicon`]: a small made-up language (Ternish: nouns, verbs and
//!   adjectives with number agreement) and a second word set (Zemic) to
//!   translate into.
//! - [`vocab`]: a word-level tokenizer over digits, symbols, task markers and
//!   those words (about three hundred tokens), built with the `tokenizers`
//!   crate and serialized as an ordinary `tokenizer.json`.
//! - [`task`]: seeded generators of `prompt -> answer` examples (arithmetic,
//!   list operations, sentence agreement, translation) with train and
//!   held-out splits that never share a prompt.
//! - [`corpus`]: pretraining documents, fine-tuning conversations and
//!   held-out files ([`write_corpus`]).
//! - [`eval`]: exact-match accuracy of a [`tern_model::Model`] by greedy
//!   decoding ([`exact_match`]).
//!
//! Every sequence fits in 64 tokens, so a model with a 64-token context can
//! train on and answer all of them.

pub mod corpus;
pub mod eval;
pub mod lexicon;
mod rng;
pub mod task;
pub mod vocab;

use std::path::Path;

pub use corpus::{read_examples, write_corpus, Corpus, CorpusOptions, CorpusSummary};
pub use eval::{exact_match, exact_match_as, Generation, Score, TaskScore};
pub use lexicon::Lexicon;
pub use task::{examples, Example, Format, Split, TaskKind};
pub use vocab::{tokenizer, tokenizer_json, vocab_size};

/// The longest sequence any example makes, in either layout, framing
/// included (checked by the tests).
pub const MAX_SEQUENCE_TOKENS: usize = 64;

/// Errors of this crate; each names the file, option or source involved.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Options that cannot make a corpus or an evaluation.
    #[error("{0}")]
    Options(String),
    /// Building or using the tokenizer failed.
    #[error("{0}")]
    Tokenizer(String),
    /// Malformed or unwritable JSON.
    #[error("{0}")]
    Json(String),
    /// The tokenizer wrapper failed.
    #[error(transparent)]
    TokenizerGlue(#[from] tern_model::tokenizer::TokenizerError),
    /// The model failed while evaluating.
    #[error(transparent)]
    Model(#[from] tern_model::ModelError),
}

impl SynthError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        SynthError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = SynthError> = std::result::Result<T, E>;
