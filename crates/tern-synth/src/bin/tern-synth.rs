//! `tern-synth DIR [options]`: write a synthetic corpus (tokenizer,
//! pretraining documents, fine-tuning conversations, held-out examples).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tern_synth::{write_corpus, CorpusOptions, TaskKind};

/// The defaults of every option (`CorpusOptions::default()`).
static DEFAULT: std::sync::LazyLock<CorpusOptions> =
    std::sync::LazyLock::new(CorpusOptions::default);

/// Write a synthetic corpus: tokenizer.json, pretraining documents,
/// fine-tuning conversations and held-out examples.
#[derive(Parser, Debug)]
#[command(name = "tern-synth", version)]
struct Args {
    /// Output folder.
    dir: PathBuf,
    /// Seed of every generator (examples, order, layouts).
    #[arg(long, default_value_t = DEFAULT.seed)]
    seed: u64,
    /// Distinct training examples per pretraining task.
    #[arg(long, value_name = "N", default_value_t = DEFAULT.pretrain_per_task)]
    pretrain_per_task: usize,
    /// Distinct training examples per fine-tuning task.
    #[arg(long, value_name = "N", default_value_t = DEFAULT.finetune_per_task)]
    finetune_per_task: usize,
    /// Distinct held-out examples per task.
    #[arg(long, value_name = "N", default_value_t = DEFAULT.heldout_per_task)]
    heldout_per_task: usize,
    /// Share of pretraining documents laid out as chat, in [0, 1].
    #[arg(long, value_name = "F", default_value_t = DEFAULT.chat_fraction)]
    chat_fraction: f64,
    /// Pretraining tasks, comma-separated [default: every task but `first`].
    #[arg(long, value_name = "a,b,...", value_delimiter = ',')]
    pretrain_tasks: Option<Vec<TaskKind>>,
    /// Fine-tuning tasks, comma-separated [default: first].
    #[arg(long, value_name = "a,b,...", value_delimiter = ',')]
    finetune_tasks: Option<Vec<TaskKind>>,
}

impl Args {
    fn options(self) -> CorpusOptions {
        let d = CorpusOptions::default();
        CorpusOptions {
            seed: self.seed,
            pretrain_tasks: self.pretrain_tasks.unwrap_or(d.pretrain_tasks),
            finetune_tasks: self.finetune_tasks.unwrap_or(d.finetune_tasks),
            pretrain_per_task: self.pretrain_per_task,
            finetune_per_task: self.finetune_per_task,
            heldout_per_task: self.heldout_per_task,
            chat_fraction: self.chat_fraction,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dir = args.dir.clone();
    match write_corpus(&dir, &args.options()) {
        Ok(s) => {
            println!(
                "{}: vocabulary {} tokens; pretraining {} documents ({} chat), {} tokens; \
                 fine-tuning {} conversations, {} tokens; {} held-out examples; longest \
                 sequence {} tokens",
                dir.display(),
                s.vocab_size,
                s.pretrain_documents,
                s.pretrain_chat_documents,
                s.pretrain_tokens,
                s.finetune_conversations,
                s.finetune_tokens,
                s.heldout_examples,
                s.max_sequence_tokens
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern-synth: {e}");
            ExitCode::FAILURE
        }
    }
}
