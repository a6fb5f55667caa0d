//! Exact-match evaluation: greedy decoding of each prompt, laid out exactly
//! as in training, compared token for token with the expected answer.
//!
//! The model reads `<s>` and [`Format::prompt`] (the same tokens the data
//! pipeline gives it in training), then takes the most likely token
//! ([`argmax`]) until it emits the layout's stop token (`<|im_end|>` in chat,
//! `</s>` in text) or has produced `max_new` tokens, the stop token
//! included. An answer is correct when the model stopped and the text before
//! the stop token (decoded with special tokens kept, so a stray `<pad>`
//! counts against it) equals the expected answer exactly.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use tern_backend::Backend;
use tern_model::sample::argmax;
use tern_model::tokenizer::Tokenizer;
use tern_model::Model;

use crate::task::{Example, Format, TaskKind};
use crate::vocab::{EOS, IM_END};
use crate::SynthError;

/// How many generations a [`Score`] keeps as samples (at least one per
/// task when more tasks than this are scored).
pub const SAMPLES: usize = 6;

/// One graded generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub task: TaskKind,
    pub prompt: String,
    pub expected: String,
    /// What the model wrote before its stop token (or before running out of
    /// tokens).
    pub generated: String,
    /// Whether the model emitted the stop token within `max_new` tokens.
    pub stopped: bool,
    pub correct: bool,
}

/// Correct / total of one task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskScore {
    pub correct: usize,
    pub total: usize,
}

impl TaskScore {
    /// `correct / total` (0 when there is nothing to score).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

/// The result of an exact-match evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub correct: usize,
    pub total: usize,
    /// `correct / total`.
    pub accuracy: f64,
    pub per_task: BTreeMap<TaskKind, TaskScore>,
    /// Sample generations in example order: the first
    /// `ceil(SAMPLES / tasks)` of each task, so every task shows up.
    pub samples: Vec<Generation>,
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exact match {}/{} ({:.1}%)",
            self.correct,
            self.total,
            100.0 * self.accuracy
        )?;
        if self.per_task.len() > 1 {
            for (t, s) in &self.per_task {
                write!(
                    f,
                    "\n  {t:<6} {}/{} ({:.1}%)",
                    s.correct,
                    s.total,
                    100.0 * s.accuracy()
                )?;
            }
        }
        for g in &self.samples {
            let mark = if g.correct { "ok " } else { "bad" };
            let cut = if g.stopped { "" } else { " [no stop]" };
            write!(
                f,
                "\n  {mark} {} -> {}{cut} (expected {})",
                g.prompt, g.generated, g.expected
            )?;
        }
        Ok(())
    }
}

/// Exact-match accuracy of `model` on `examples` in the chat layout (the
/// fine-tuning format; the default corpus also pretrains on it). See
/// [`exact_match_as`].
pub fn exact_match<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    examples: &[Example],
    max_new: usize,
) -> Result<Score, SynthError> {
    exact_match_as(model, tok, examples, Format::Chat, max_new)
}

/// Exact-match accuracy of `model` on `examples` laid out as `format` (see
/// the module docs), generating at most `max_new` tokens per example.
///
/// Sets the model's context to the longest prompt plus `max_new` and
/// resets the cache before each example.
pub fn exact_match_as<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    examples: &[Example],
    format: Format,
    max_new: usize,
) -> Result<Score, SynthError> {
    if max_new == 0 {
        return Err(SynthError::Options(
            "max_new must be at least 1 (the stop token counts)".into(),
        ));
    }
    let stop = stop_id(tok, format)?;
    let prompts = examples
        .iter()
        .map(|e| prompt_ids(tok, format, e))
        .collect::<Result<Vec<_>, _>>()?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    model.set_context(longest + max_new)?;
    let generated = prompts
        .iter()
        .map(|ids| greedy(model, ids, stop, max_new))
        .collect::<Result<Vec<_>, _>>()?;
    score(tok, examples, &generated, stop)
}

/// Grade generations (`generated[i]` answers `examples[i]`; see [`grade`])
/// and tally them.
pub fn score(
    tok: &Tokenizer,
    examples: &[Example],
    generated: &[Vec<u32>],
    stop: u32,
) -> Result<Score, SynthError> {
    if examples.len() != generated.len() {
        return Err(SynthError::Options(format!(
            "{} generations for {} examples",
            generated.len(),
            examples.len()
        )));
    }
    let mut score = Score {
        correct: 0,
        total: 0,
        accuracy: 0.0,
        per_task: BTreeMap::new(),
        samples: Vec::new(),
    };
    let n_tasks = examples
        .iter()
        .map(|e| e.task)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let per_task_samples = SAMPLES.div_ceil(n_tasks.max(1));
    let mut shown: BTreeMap<TaskKind, usize> = BTreeMap::new();
    for (ex, ids) in examples.iter().zip(generated) {
        let g = grade(tok, ex, ids, stop)?;
        score.total += 1;
        let t = score.per_task.entry(ex.task).or_default();
        t.total += 1;
        if g.correct {
            score.correct += 1;
            t.correct += 1;
        }
        let k = shown.entry(ex.task).or_default();
        if *k < per_task_samples {
            *k += 1;
            score.samples.push(g);
        }
    }
    score.accuracy = TaskScore {
        correct: score.correct,
        total: score.total,
    }
    .accuracy();
    Ok(score)
}

/// The token that ends an answer in `format`.
pub fn stop_id(tok: &Tokenizer, format: Format) -> Result<u32, SynthError> {
    let name = match format {
        Format::Chat => IM_END,
        Format::Text => EOS,
    };
    tok.token_to_id(name).ok_or_else(|| {
        SynthError::Tokenizer(format!(
            "{}: has no '{name}' token to end answers with",
            tok.source()
        ))
    })
}

/// The tokens a model reads before answering: BOS (when the tokenizer has
/// one) and the prompt laid out as `format`.
pub fn prompt_ids(tok: &Tokenizer, format: Format, ex: &Example) -> Result<Vec<u32>, SynthError> {
    let mut ids: Vec<u32> = tok.bos_id().into_iter().collect();
    ids.extend(tok.encode(&format.prompt(ex), false)?);
    Ok(ids)
}

/// Greedy continuation of `prompt`: at most `max_new` tokens, ending early
/// after `stop` (which is kept as the last token).
fn greedy<B: Backend>(
    model: &mut Model<B>,
    prompt: &[u32],
    stop: u32,
    max_new: usize,
) -> Result<Vec<u32>, SynthError> {
    model.reset();
    let mut logits = model.forward(prompt, false)?;
    let mut out = Vec::with_capacity(max_new);
    loop {
        let t = argmax(&logits);
        out.push(t);
        if t == stop || out.len() == max_new {
            return Ok(out);
        }
        logits = model.forward(&[t], false)?;
    }
}

/// Grade generated ids against an example: correct when the ids end with
/// `stop` and the text before it, special tokens kept, equals the answer.
pub fn grade(
    tok: &Tokenizer,
    ex: &Example,
    generated: &[u32],
    stop: u32,
) -> Result<Generation, SynthError> {
    let (body, stopped) = match generated.split_last() {
        Some((&last, body)) if last == stop => (body, true),
        _ => (generated, false),
    };
    let text = tok.decode(body, false)?;
    Ok(Generation {
        task: ex.task,
        prompt: ex.prompt.clone(),
        expected: ex.answer.clone(),
        correct: stopped && text == ex.answer,
        generated: text,
        stopped,
    })
}
