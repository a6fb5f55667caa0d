//! Tasks: seeded generators of `prompt -> answer` examples with short answers
//! that are checked by exact match.
//!
//! Every prompt starts with its task marker and ends with `=`; every prompt
//! and answer is a sequence of vocabulary tokens separated by single spaces
//! (numbers are written digit by digit), so it tokenizes without unknown
//! pieces and decodes back to itself.
//!
//! | task | prompt | answer |
//! |---|---|---|
//! | `add` | `add 4 7 3 + 8 9 =` | `5 6 2` |
//! | `sub` | `sub 4 7 3 - 8 9 =` | `3 8 4` |
//! | `copy` | `copy tomi 7 rev =` | `tomi 7 rev` |
//! | `rev` | `rev 3 9 1 4 =` | `4 1 9 3` |
//! | `sort` | `sort 3 9 1 4 =` | `1 3 4 9` |
//! | `first` / `last` | `first 3 9 1 4 =` | `3` |
//! | `count` | `count 3 in 1 3 3 7 =` | `2` |
//! | `max` | `max 3 9 1 4 =` | `9` |
//! | `flip` | `flip ka tomi mirata ki velon . =` | `ki tomin mirato ki velon .` |
//! | `trans` | `trans tomi vela =` | `oxaj ihuq` |
//! | `back` | `back oxaj ihuq =` | `tomi vela` |
//!
//! (The words above only show the shapes; the real ones come from
//! [`Lexicon`].)
//!
//! # Splits
//! An example's split is a fixed function of its prompt text (a hash: one
//! prompt in [`HELD_OUT_DENOMINATOR`] is held out), and the two splits draw
//! from separate seed streams (`"{task}/train"` and `"{task}/heldout"`, one
//! generator per example index). A held-out prompt therefore never appears in
//! any training split, whatever the seeds and sizes, and the held-out set of
//! a task is the same whichever other tasks a corpus mixes.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::lexicon::{Lexicon, DET_PLURAL, DET_SINGULAR};
use crate::rng::{hash_str, Rng};
use crate::vocab::{DIGITS, IM_END, IM_START, MARKERS};
use crate::SynthError;

/// One prompt in this many is held out.
pub const HELD_OUT_DENOMINATOR: u64 = 8;
/// Shortest list of the list tasks.
pub const MIN_LIST: usize = 2;
/// Longest list of the list tasks.
pub const MAX_LIST: usize = 8;
/// Most nouns in a translation prompt.
pub const MAX_TRANSLATE: usize = 5;

/// The tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Sum of two 2-3 digit numbers.
    Add,
    /// Difference of two 2-3 digit numbers, larger first.
    Sub,
    /// The list as given.
    Copy,
    /// The list backwards.
    #[serde(rename = "rev")]
    Reverse,
    /// Digits in ascending order.
    Sort,
    /// First element of the list.
    First,
    /// Last element of the list.
    Last,
    /// How often a digit occurs in a list of digits.
    Count,
    /// Largest digit.
    Max,
    /// A Ternish sentence with its subject's number switched (determiner,
    /// noun and verb all change).
    Flip,
    /// Ternish nouns to Zemic, word by word.
    #[serde(rename = "trans")]
    Translate,
    /// Zemic words to Ternish nouns.
    #[serde(rename = "back")]
    BackTranslate,
}

impl TaskKind {
    /// Every task, in a fixed order.
    pub const ALL: [TaskKind; 12] = [
        TaskKind::Add,
        TaskKind::Sub,
        TaskKind::Copy,
        TaskKind::Reverse,
        TaskKind::Sort,
        TaskKind::First,
        TaskKind::Last,
        TaskKind::Count,
        TaskKind::Max,
        TaskKind::Flip,
        TaskKind::Translate,
        TaskKind::BackTranslate,
    ];

    /// The task held back from pretraining and learned by fine-tuning in the
    /// demo (`cargo xtask demo`): the first element of a list. Pretraining
    /// teaches copying, reversal and the last element, never `first` as a
    /// task (its marker only occurs as a list item), so the pretrained model
    /// does not answer it; a short LoRA run has to teach the model to answer
    /// one item and stop, a lesson small enough for a few minutes on two
    /// cores.
    pub const UNSEEN: TaskKind = TaskKind::First;

    /// The marker word that starts the prompt; also the task's name.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Add => "add",
            TaskKind::Sub => "sub",
            TaskKind::Copy => "copy",
            TaskKind::Reverse => "rev",
            TaskKind::Sort => "sort",
            TaskKind::First => "first",
            TaskKind::Last => "last",
            TaskKind::Count => "count",
            TaskKind::Max => "max",
            TaskKind::Flip => "flip",
            TaskKind::Translate => "trans",
            TaskKind::BackTranslate => "back",
        }
    }

    /// One example from `rng` (either split; see [`examples`]).
    fn sample(self, rng: &mut Rng) -> Example {
        let lex = Lexicon::get();
        let (body, answer) = match self {
            TaskKind::Add | TaskKind::Sub => {
                let mut a = number(rng);
                let mut b = number(rng);
                if self == TaskKind::Sub && a < b {
                    std::mem::swap(&mut a, &mut b);
                }
                let (op, r) = if self == TaskKind::Add {
                    ("+", a + b)
                } else {
                    ("-", a - b)
                };
                (
                    format!("{} {op} {}", spell(a), spell(b)),
                    spell(r).to_string(),
                )
            }
            TaskKind::Copy | TaskKind::Reverse | TaskKind::First | TaskKind::Last => {
                let items = list(rng);
                let answer = match self {
                    TaskKind::Copy => items.join(" "),
                    TaskKind::Reverse => {
                        let mut r = items.clone();
                        r.reverse();
                        r.join(" ")
                    }
                    TaskKind::First => items[0].to_string(),
                    _ => items[items.len() - 1].to_string(),
                };
                (items.join(" "), answer)
            }
            TaskKind::Sort | TaskKind::Max => {
                let n = rng.range(MIN_LIST, MAX_LIST);
                let d: Vec<usize> = (0..n).map(|_| rng.below(10)).collect();
                let answer = if self == TaskKind::Sort {
                    let mut s = d.clone();
                    s.sort_unstable();
                    join_digits(&s)
                } else {
                    d.iter().max().expect("non-empty").to_string()
                };
                (join_digits(&d), answer)
            }
            TaskKind::Count => {
                let target = rng.below(10);
                let n = rng.range(MIN_LIST, MAX_LIST);
                // One element in three is the target, so counts spread over 0..=n.
                let d: Vec<usize> = (0..n)
                    .map(|_| {
                        if rng.chance(1, 3) {
                            target
                        } else {
                            rng.below(10)
                        }
                    })
                    .collect();
                let c = d.iter().filter(|&&x| x == target).count();
                (format!("{target} in {}", join_digits(&d)), c.to_string())
            }
            TaskKind::Flip => {
                let s = Sentence::sample(rng, lex);
                let plural = rng.chance(1, 2);
                (s.render(lex, plural), s.render(lex, !plural))
            }
            TaskKind::Translate | TaskKind::BackTranslate => {
                let n = rng.range(1, MAX_TRANSLATE);
                let idx: Vec<usize> = (0..n).map(|_| rng.below(lex.nouns.len())).collect();
                let ternish: Vec<&str> = idx
                    .iter()
                    .map(|&i| lex.nouns[i].singular.as_str())
                    .collect();
                let zemic: Vec<&str> = idx.iter().map(|&i| lex.zemic[i].as_str()).collect();
                if self == TaskKind::Translate {
                    (ternish.join(" "), zemic.join(" "))
                } else {
                    (zemic.join(" "), ternish.join(" "))
                }
            }
        };
        Example {
            task: self,
            prompt: format!("{} {body} =", self.name()),
            answer,
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TaskKind {
    type Err = SynthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskKind::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = TaskKind::ALL.iter().map(|t| t.name()).collect();
                SynthError::Options(format!(
                    "unknown task '{s}'; tasks are {}",
                    known.join(", ")
                ))
            })
    }
}

/// A 2- or 3-digit number (each length equally likely).
fn number(rng: &mut Rng) -> u32 {
    if rng.chance(1, 2) {
        rng.range(10, 99) as u32
    } else {
        rng.range(100, 999) as u32
    }
}

/// A number digit by digit: `473` -> `4 7 3`.
pub fn spell(n: u32) -> String {
    let s = n.to_string();
    let digits: Vec<String> = s.chars().map(String::from).collect();
    digits.join(" ")
}

fn join_digits(d: &[usize]) -> String {
    let s: Vec<&str> = d.iter().map(|&x| DIGITS[x]).collect();
    s.join(" ")
}

/// Tokens a list task may hold: every made-up word and every task marker
/// (so pretraining trains the embedding of a marker it never uses as one).
fn word_pool() -> &'static [String] {
    static POOL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let mut p: Vec<String> = Lexicon::get()
            .words()
            .iter()
            .map(|s| s.to_string())
            .collect();
        p.extend(MARKERS.iter().map(|s| s.to_string()));
        p
    })
}

/// A list of 2..=8 items: digits only, or words, each half the time.
fn list(rng: &mut Rng) -> Vec<&'static str> {
    let n = rng.range(MIN_LIST, MAX_LIST);
    let digits = rng.chance(1, 2);
    (0..n)
        .map(|_| {
            if digits {
                *rng.pick(DIGITS)
            } else {
                rng.pick(word_pool()).as_str()
            }
        })
        .collect()
}

/// A Ternish sentence before its subject's number is chosen.
struct Sentence {
    subject: usize,
    subject_adj: Option<usize>,
    verb: usize,
    object: usize,
    object_plural: bool,
    object_adj: Option<usize>,
}

impl Sentence {
    fn sample(rng: &mut Rng, lex: &Lexicon) -> Self {
        let adj = |rng: &mut Rng| rng.chance(1, 2).then(|| rng.below(lex.adjectives.len()));
        Sentence {
            subject: rng.below(lex.nouns.len()),
            subject_adj: adj(rng),
            verb: rng.below(lex.verbs.len()),
            object: rng.below(lex.nouns.len()),
            object_plural: rng.chance(1, 2),
            object_adj: adj(rng),
        }
    }

    /// `det noun [adj] verb det noun [adj] .` with the subject in the given
    /// number; determiners agree with their nouns, the verb with the subject.
    fn render(&self, lex: &Lexicon, subject_plural: bool) -> String {
        let det = |pl: bool| if pl { DET_PLURAL } else { DET_SINGULAR };
        let mut w: Vec<&str> = vec![
            det(subject_plural),
            lex.nouns[self.subject].form(subject_plural),
        ];
        w.extend(self.subject_adj.map(|a| lex.adjectives[a].as_str()));
        w.push(lex.verbs[self.verb].form(subject_plural));
        w.push(det(self.object_plural));
        w.push(lex.nouns[self.object].form(self.object_plural));
        w.extend(self.object_adj.map(|a| lex.adjectives[a].as_str()));
        w.push(".");
        w.join(" ")
    }
}

/// Which split an example belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    #[serde(rename = "heldout")]
    HeldOut,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::HeldOut => "heldout",
        }
    }

    /// The split a prompt belongs to: a fixed hash of its text.
    pub fn of(prompt: &str) -> Split {
        if hash_str(0x5917_11D0, prompt) % HELD_OUT_DENOMINATOR == 0 {
            Split::HeldOut
        } else {
            Split::Train
        }
    }
}

/// One example: a prompt and the one answer that counts as correct.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Example {
    pub task: TaskKind,
    pub prompt: String,
    pub answer: String,
}

/// How an example is laid out for a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `prompt answer` as one text document (framed `<s> ... </s>` by the
    /// data pipeline); the model answers after the prompt and stops with
    /// `</s>`.
    Text,
    /// One user turn (the prompt) and one assistant turn (the answer) in
    /// ChatML, as `tern finetune` renders `messages` records with its
    /// built-in template; the model answers after `<|im_start|>assistant\n`
    /// and stops with `<|im_end|>`.
    #[default]
    Chat,
}

impl Format {
    /// The text a model reads before answering.
    pub fn prompt(self, ex: &Example) -> String {
        match self {
            Format::Text => ex.prompt.clone(),
            Format::Chat => format!(
                "{IM_START}user\n{}{IM_END}\n{IM_START}assistant\n",
                ex.prompt
            ),
        }
    }

    /// The whole training text of an example: [`Self::prompt`] then the
    /// answer (and, in chat, the end-of-turn marker and its newline, as
    /// ChatML renders a finished conversation).
    pub fn full_text(self, ex: &Example) -> String {
        match self {
            Format::Text => format!("{} {}", ex.prompt, ex.answer),
            Format::Chat => format!("{}{}{IM_END}\n", self.prompt(ex), ex.answer),
        }
    }
}

impl Example {
    /// The example as a chat `messages` record (`tern finetune` JSONL).
    pub fn chat_record(&self) -> serde_json::Value {
        serde_json::json!({
            "messages": [
                {"role": "user", "content": self.prompt},
                {"role": "assistant", "content": self.answer},
            ]
        })
    }
}

/// `n` distinct examples of `task` from `split`, generated from `seed`.
///
/// Candidate `i` comes from its own generator (stream `"{task}/{split}"`,
/// index `i`); a candidate is kept when its prompt belongs to `split` (see
/// [`Split::of`]) and has not been kept before. Fails when the task cannot
/// supply `n` distinct prompts in a reasonable number of draws.
pub fn examples(
    task: TaskKind,
    split: Split,
    n: usize,
    seed: u64,
) -> Result<Vec<Example>, SynthError> {
    let stream = format!("{}/{}", task.name(), split.name());
    let max_draws = 64 * n as u64 + 4096;
    let mut out = Vec::with_capacity(n);
    let mut seen = HashSet::with_capacity(n);
    let mut i = 0u64;
    while out.len() < n {
        if i == max_draws {
            return Err(SynthError::Options(format!(
                "task '{task}' gave only {} distinct {} prompts in {max_draws} draws \
                 ({n} asked for)",
                out.len(),
                split.name()
            )));
        }
        let ex = task.sample(&mut Rng::new(seed, &stream, i));
        i += 1;
        if Split::of(&ex.prompt) == split && seen.insert(ex.prompt.clone()) {
            out.push(ex);
        }
    }
    Ok(out)
}
