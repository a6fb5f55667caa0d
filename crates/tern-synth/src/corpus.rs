//! A corpus: pretraining documents from the seen tasks, fine-tuning
//! conversations from the unseen ones, held-out examples of every task, and
//! the tokenizer, written as files that `tern finetune` (and the pretraining
//! loop) read directly.
//!
//! Files written by [`Corpus::write`] / [`write_corpus`]:
//!
//! | file | content |
//! |---|---|
//! | `tokenizer.json` | the corpus tokenizer ([`crate::vocab`]) |
//! | `pretrain.jsonl` | `{"text": ...}` documents, the seen tasks shuffled together; a share of them ([`CorpusOptions::chat_fraction`]) laid out as ChatML conversations, the rest as `prompt answer` |
//! | `finetune.jsonl` | `{"messages": [user, assistant]}` conversations of the fine-tuning tasks, for `tern finetune --assistant-loss-only` |
//! | `heldout.jsonl` | `{"task", "prompt", "answer"}` held-out examples of every task (read back with [`read_examples`]) |
//! | `corpus.json` | the [`CorpusSummary`]: options, vocabulary size, counts |
//!
//! Pretraining documents are framed `<s> ... </s>` by the data pipeline, so
//! a text document teaches the model to answer after the prompt and to stop
//! with `</s>`, and a chat document to answer after
//! `<|im_start|>assistant\n` and to stop with `<|im_end|>`: the fine-tuning
//! format is known before fine-tuning, which then only has to teach the task.

use std::collections::BTreeSet;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::task::{examples, Example, Format, Split, TaskKind};
use crate::vocab;
use crate::SynthError;

/// Tokenizer file name.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Pretraining documents.
pub const PRETRAIN_FILE: &str = "pretrain.jsonl";
/// Fine-tuning conversations.
pub const FINETUNE_FILE: &str = "finetune.jsonl";
/// Held-out examples of every task.
pub const HELDOUT_FILE: &str = "heldout.jsonl";
/// The summary.
pub const SUMMARY_FILE: &str = "corpus.json";

/// What a corpus holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorpusOptions {
    /// Seed of every generator (examples, order, layouts).
    pub seed: u64,
    /// Tasks mixed into the pretraining documents.
    pub pretrain_tasks: Vec<TaskKind>,
    /// Tasks of the fine-tuning set; none of them may be a pretraining task.
    pub finetune_tasks: Vec<TaskKind>,
    /// Distinct training examples per pretraining task.
    pub pretrain_per_task: usize,
    /// Distinct training examples per fine-tuning task.
    pub finetune_per_task: usize,
    /// Distinct held-out examples per task (pretraining and fine-tuning).
    pub heldout_per_task: usize,
    /// Share of pretraining documents laid out as chat, in `[0, 1]`.
    pub chat_fraction: f64,
}

impl Default for CorpusOptions {
    /// Every task but [`TaskKind::UNSEEN`] (`first`) in pretraining, that
    /// one for fine-tuning.
    fn default() -> Self {
        CorpusOptions {
            seed: 0,
            pretrain_tasks: TaskKind::ALL
                .into_iter()
                .filter(|&t| t != TaskKind::UNSEEN)
                .collect(),
            finetune_tasks: vec![TaskKind::UNSEEN],
            pretrain_per_task: 2000,
            finetune_per_task: 1000,
            heldout_per_task: 200,
            chat_fraction: 0.5,
        }
    }
}

impl CorpusOptions {
    fn validate(&self) -> Result<(), SynthError> {
        let err = |m: String| Err(SynthError::Options(m));
        if !(0.0..=1.0).contains(&self.chat_fraction) {
            return err(format!(
                "chat_fraction {} is outside [0, 1]",
                self.chat_fraction
            ));
        }
        let pre: BTreeSet<TaskKind> = self.pretrain_tasks.iter().copied().collect();
        let fine: BTreeSet<TaskKind> = self.finetune_tasks.iter().copied().collect();
        if pre.len() != self.pretrain_tasks.len() || fine.len() != self.finetune_tasks.len() {
            return err("a task is listed twice".into());
        }
        if let Some(t) = pre.intersection(&fine).next() {
            return err(format!(
                "task '{t}' is both a pretraining and a fine-tuning task; the fine-tuning \
                 tasks must be unseen in pretraining"
            ));
        }
        Ok(())
    }

    /// Every task of the corpus, pretraining ones first.
    pub fn tasks(&self) -> Vec<TaskKind> {
        let mut t = self.pretrain_tasks.clone();
        t.extend(&self.finetune_tasks);
        t
    }
}

/// A generated corpus, in memory.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub options: CorpusOptions,
    /// Pretraining documents in file order, each with its layout.
    pub pretrain: Vec<(Example, Format)>,
    /// Fine-tuning examples in file order.
    pub finetune: Vec<Example>,
    /// Held-out examples, task by task in [`CorpusOptions::tasks`] order.
    pub heldout: Vec<Example>,
}

/// Sizes and files of a written corpus (also stored as `corpus.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorpusSummary {
    pub options: CorpusOptions,
    /// Tokens of the tokenizer (the `vocab_size` a model needs).
    pub vocab_size: usize,
    pub pretrain_documents: usize,
    /// Of those, documents in the chat layout.
    pub pretrain_chat_documents: usize,
    /// Pretraining tokens per epoch, BOS and EOS of every document included.
    pub pretrain_tokens: usize,
    pub finetune_conversations: usize,
    /// Fine-tuning tokens per epoch (BOS + rendered conversation).
    pub finetune_tokens: usize,
    pub heldout_examples: usize,
    /// The longest sequence of any example in either layout, framing
    /// included (BOS, and EOS or the final `<|im_end|>\n`).
    pub max_sequence_tokens: usize,
    /// Folder the files are in (not stored in `corpus.json`).
    #[serde(skip)]
    pub dir: PathBuf,
}

impl CorpusSummary {
    /// Path of one of the corpus files (`TOKENIZER_FILE`, ...).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Corpus {
    /// Generate the corpus `opts` describe.
    pub fn generate(opts: &CorpusOptions) -> Result<Corpus, SynthError> {
        opts.validate()?;
        let seed = opts.seed;
        let mut pretrain = Vec::new();
        for &t in &opts.pretrain_tasks {
            pretrain.extend(examples(t, Split::Train, opts.pretrain_per_task, seed)?);
        }
        let mut rng = Rng::new(seed, "pretrain/order", 0);
        rng.shuffle(&mut pretrain);
        // Exactly round(fraction * n) chat documents, at shuffled positions.
        let n_chat = (opts.chat_fraction * pretrain.len() as f64).round() as usize;
        let mut is_chat: Vec<bool> = (0..pretrain.len()).map(|i| i < n_chat).collect();
        Rng::new(seed, "pretrain/layout", 0).shuffle(&mut is_chat);
        let pretrain = pretrain
            .into_iter()
            .zip(is_chat)
            .map(|(e, c)| (e, if c { Format::Chat } else { Format::Text }))
            .collect();
        let mut finetune = Vec::new();
        for &t in &opts.finetune_tasks {
            finetune.extend(examples(t, Split::Train, opts.finetune_per_task, seed)?);
        }
        Rng::new(seed, "finetune/order", 0).shuffle(&mut finetune);
        let mut heldout = Vec::new();
        for t in opts.tasks() {
            heldout.extend(examples(t, Split::HeldOut, opts.heldout_per_task, seed)?);
        }
        Ok(Corpus {
            options: opts.clone(),
            pretrain,
            finetune,
            heldout,
        })
    }

    /// Held-out examples of one task.
    pub fn heldout(&self, task: TaskKind) -> Vec<Example> {
        self.heldout
            .iter()
            .filter(|e| e.task == task)
            .cloned()
            .collect()
    }

    /// The pretraining documents' texts, in file order.
    pub fn pretrain_texts(&self) -> impl Iterator<Item = String> + '_ {
        self.pretrain.iter().map(|(e, f)| f.full_text(e))
    }

    /// Write the files (see the module docs) into `dir`, creating it.
    pub fn write(&self, dir: &Path) -> Result<CorpusSummary, SynthError> {
        std::fs::create_dir_all(dir).map_err(|e| SynthError::io(dir, e))?;
        let tok = vocab::tokenizer()?;
        let json = vocab::tokenizer_json()?;
        let path = dir.join(TOKENIZER_FILE);
        std::fs::write(&path, json).map_err(|e| SynthError::io(&path, e))?;

        let count =
            |text: &str| -> Result<usize, SynthError> { Ok(tok.encode(text, false)?.len()) };
        let mut max_seq = 0usize;
        let mut pretrain_tokens = 0usize;
        write_jsonl(&dir.join(PRETRAIN_FILE), self.pretrain_texts(), |text| {
            // BOS + document + EOS.
            let n = count(&text)? + 2;
            pretrain_tokens += n;
            max_seq = max_seq.max(n);
            Ok(serde_json::json!({ "text": text }))
        })?;
        let mut finetune_tokens = 0usize;
        write_jsonl(&dir.join(FINETUNE_FILE), self.finetune.iter(), |e| {
            // BOS + rendered conversation.
            let n = count(&Format::Chat.full_text(e))? + 1;
            finetune_tokens += n;
            max_seq = max_seq.max(n);
            Ok(e.chat_record())
        })?;
        write_jsonl(&dir.join(HELDOUT_FILE), self.heldout.iter(), |e| {
            let text = count(&Format::Text.full_text(e))? + 2;
            let chat = count(&Format::Chat.full_text(e))? + 1;
            max_seq = max_seq.max(text).max(chat);
            serde_json::to_value(e).map_err(|e| SynthError::Json(e.to_string()))
        })?;
        let summary = CorpusSummary {
            options: self.options.clone(),
            vocab_size: tok.vocab_size(),
            pretrain_documents: self.pretrain.len(),
            pretrain_chat_documents: self
                .pretrain
                .iter()
                .filter(|(_, f)| *f == Format::Chat)
                .count(),
            pretrain_tokens,
            finetune_conversations: self.finetune.len(),
            finetune_tokens,
            heldout_examples: self.heldout.len(),
            max_sequence_tokens: max_seq,
            dir: dir.to_path_buf(),
        };
        let path = dir.join(SUMMARY_FILE);
        let text =
            serde_json::to_string_pretty(&summary).map_err(|e| SynthError::Json(e.to_string()))?;
        std::fs::write(&path, text + "\n").map_err(|e| SynthError::io(&path, e))?;
        Ok(summary)
    }
}

/// Generate the corpus `opts` describe and write it into `dir`.
pub fn write_corpus(dir: &Path, opts: &CorpusOptions) -> Result<CorpusSummary, SynthError> {
    Corpus::generate(opts)?.write(dir)
}

/// Write one JSON object per item, one per line.
fn write_jsonl<T>(
    path: &Path,
    items: impl Iterator<Item = T>,
    mut record: impl FnMut(T) -> Result<serde_json::Value, SynthError>,
) -> Result<(), SynthError> {
    let file = std::fs::File::create(path).map_err(|e| SynthError::io(path, e))?;
    let mut w = BufWriter::new(file);
    for item in items {
        let line =
            serde_json::to_string(&record(item)?).map_err(|e| SynthError::Json(e.to_string()))?;
        writeln!(w, "{line}").map_err(|e| SynthError::io(path, e))?;
    }
    w.flush().map_err(|e| SynthError::io(path, e))
}

/// Read examples written as `{"task", "prompt", "answer"}` lines (the
/// held-out file); blank lines are skipped.
pub fn read_examples(path: &Path) -> Result<Vec<Example>, SynthError> {
    let file = std::fs::File::open(path).map_err(|e| SynthError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| SynthError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let ex: Example = serde_json::from_str(&line).map_err(|e| {
            SynthError::Json(format!(
                "{}:{}: expected {{\"task\", \"prompt\", \"answer\"}}: {e}",
                path.display(),
                i + 1
            ))
        })?;
        out.push(ex);
    }
    Ok(out)
}
