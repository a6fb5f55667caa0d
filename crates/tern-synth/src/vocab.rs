//! The corpus tokenizer, built by code: one token per word, digit, symbol or
//! special marker, assembled as a Hugging Face `tokenizers` word-level
//! tokenizer so that it serializes to an ordinary `tokenizer.json` (for
//! `tern finetune --tokenizer` and GGUF's `tokenizer.huggingface.json`).
//!
//! - Model: `WordLevel` over [`vocabulary`], unknown pieces map to `<unk>`.
//! - Pre-tokenizer: split on whitespace, then isolate punctuation, then
//!   split numbers into single digits (`473.` -> `4 7 3 .`).
//! - Post-processor: `<s> $A` (a BOS in front when special tokens are added,
//!   as `tern generate` encodes prompts).
//! - No decoder: ids decode to their tokens joined by single spaces, so every
//!   text the corpus writes (tokens separated by single spaces) decodes back
//!   to exactly itself.
//!
//! The vocabulary order is fixed, so the ids are the same in every build.

use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use tern_model::tokenizer::Tokenizer;

use crate::lexicon::Lexicon;
use crate::SynthError;

/// Unknown piece.
pub const UNK: &str = "<unk>";
/// Beginning of sequence.
pub const BOS: &str = "<s>";
/// End of sequence.
pub const EOS: &str = "</s>";
/// Padding.
pub const PAD: &str = "<pad>";
/// ChatML start-of-turn marker.
pub const IM_START: &str = "<|im_start|>";
/// ChatML end-of-turn marker.
pub const IM_END: &str = "<|im_end|>";

/// Special tokens, ids 0.. in this order.
pub const SPECIALS: &[&str] = &[UNK, BOS, EOS, PAD, IM_START, IM_END];

/// Chat roles (plain words: ChatML writes them as text).
pub const ROLES: &[&str] = &["system", "user", "assistant"];

/// Symbols of the tasks (the full stop ends a Ternish sentence).
pub const SYMBOLS: &[&str] = &["+", "-", "=", "."];

/// Digits, one token each.
pub const DIGITS: &[&str] = &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Task markers (the first word of each prompt) and the one connective
/// word (`in`) of the count task.
pub const MARKERS: &[&str] = &[
    "add", "sub", "copy", "rev", "sort", "first", "last", "count", "max", "flip", "trans", "back",
    "in",
];

/// Tokens that are not made-up words (the lexicon avoids all of them).
pub(crate) fn fixed_words() -> Vec<&'static str> {
    [SPECIALS, ROLES, SYMBOLS, DIGITS, MARKERS].concat()
}

/// The whole vocabulary in id order: special tokens, roles, symbols,
/// digits, task markers, then the made-up words.
pub fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = fixed_words().iter().map(|s| s.to_string()).collect();
    v.extend(Lexicon::get().words().iter().map(|s| s.to_string()));
    v
}

/// Number of tokens (the `vocab_size` a model for this corpus needs).
pub fn vocab_size() -> usize {
    fixed_words().len() + Lexicon::get().words().len()
}

/// Build the `tokenizers` tokenizer.
fn build_inner() -> Result<tokenizers::Tokenizer, SynthError> {
    let err = |m: String| SynthError::Tokenizer(format!("building the corpus tokenizer: {m}"));
    let vocab = vocabulary();
    let model = WordLevel::builder()
        .vocab(
            vocab
                .iter()
                .enumerate()
                .map(|(i, w)| (w.clone(), i as u32))
                .collect(),
        )
        .unk_token(UNK.to_owned())
        .build()
        .map_err(|e| err(e.to_string()))?;
    let mut tok = tokenizers::Tokenizer::new(model);
    let pre: Vec<PreTokenizerWrapper> = vec![
        WhitespaceSplit.into(),
        Punctuation::new(SplitDelimiterBehavior::Isolated).into(),
        Digits::new(true).into(),
    ];
    tok.with_pre_tokenizer(Some(Sequence::new(pre)));
    let bos_id = vocab.iter().position(|w| w == BOS).expect("BOS in vocab") as u32;
    let post = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A"))
        .map_err(err)?
        .special_tokens(vec![(BOS, bos_id)])
        .build()
        .map_err(|e| err(e.to_string()))?;
    tok.with_post_processor(Some(post));
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(&specials);
    Ok(tok)
}

/// The corpus tokenizer as compact `tokenizer.json` text. Deterministic:
/// the same bytes in every build.
pub fn tokenizer_json() -> Result<String, SynthError> {
    build_inner()?
        .to_string(false)
        .map_err(|e| SynthError::Tokenizer(format!("serializing the corpus tokenizer: {e}")))
}

/// The corpus tokenizer, as tern uses tokenizers (parsed back from
/// [`tokenizer_json`], so it is exactly what a `tokenizer.json` file or a
/// GGUF file holding it gives).
pub fn tokenizer() -> Result<Tokenizer, SynthError> {
    let json = tokenizer_json()?;
    Ok(Tokenizer::from_json_bytes(
        "tern-synth tokenizer",
        json.as_bytes(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_vocabulary_order() {
        let tok = tokenizer().unwrap();
        let vocab = vocabulary();
        assert_eq!(tok.vocab_size(), vocab.len());
        assert_eq!(vocab.len(), vocab_size());
        for (i, w) in vocab.iter().enumerate() {
            assert_eq!(tok.token_to_id(w), Some(i as u32), "{w}");
        }
        assert_eq!(tok.bos_id(), tok.token_to_id(BOS));
        assert_eq!(tok.eos_id(), tok.token_to_id(EOS));
        for s in SPECIALS {
            assert!(tok.is_special(tok.token_to_id(s).unwrap()), "{s}");
        }
        assert!(!tok.is_special(tok.token_to_id("add").unwrap()));
    }

    #[test]
    fn json_is_deterministic_and_reloads() {
        let a = tokenizer_json().unwrap();
        let b = tokenizer_json().unwrap();
        assert_eq!(a, b);
        let tok = tokenizer().unwrap();
        assert_eq!(tok.to_json_string().unwrap(), a);
    }

    #[test]
    fn pre_tokenizer_splits_digits_and_punctuation() {
        let tok = tokenizer().unwrap();
        let ids = tok.encode("add 473+89 =", false).unwrap();
        let text = tok.decode(&ids, false).unwrap();
        assert_eq!(text, "add 4 7 3 + 8 9 =");
        let with_bos = tok.encode("add", true).unwrap();
        assert_eq!(with_bos, vec![tok.bos_id().unwrap(), ids[0]]);
        let unk = tok.token_to_id(UNK).unwrap();
        assert_eq!(tok.encode("qqq", false).unwrap(), vec![unk]);
        let chat = format!("{IM_START}user\nrev 1 2{IM_END}\n{IM_START}assistant\n");
        let ids = tok.encode(&chat, false).unwrap();
        let pieces: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        assert_eq!(
            pieces,
            [
                IM_START,
                "user",
                "rev",
                "1",
                "2",
                IM_END,
                IM_START,
                "assistant"
            ]
        );
    }
}
