//! `tern-synth DIR [options]`: write a synthetic corpus (tokenizer,
//! pretraining documents, fine-tuning conversations, held-out examples).

use std::path::PathBuf;
use std::process::ExitCode;

use tern_synth::{write_corpus, CorpusOptions, TaskKind};

const USAGE: &str = "usage: tern-synth DIR [--seed N] [--pretrain-per-task N] \
[--finetune-per-task N] [--heldout-per-task N] [--chat-fraction F] \
[--pretrain-tasks a,b,...] [--finetune-tasks a,b,...]";

fn parse_tasks(s: &str) -> Result<Vec<TaskKind>, String> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<TaskKind>().map_err(|e| e.to_string()))
        .collect()
}

fn parse_args() -> Result<(PathBuf, CorpusOptions), String> {
    let mut opts = CorpusOptions::default();
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if !a.starts_with("--") {
            if dir.replace(PathBuf::from(&a)).is_some() {
                return Err(format!("more than one output folder given ('{a}')"));
            }
            continue;
        }
        if a == "--help" {
            return Err(String::new());
        }
        let v = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        let int = |v: &str| v.parse::<usize>().map_err(|e| format!("{a} {v}: {e}"));
        match a.as_str() {
            "--seed" => opts.seed = v.parse().map_err(|e| format!("{a} {v}: {e}"))?,
            "--pretrain-per-task" => opts.pretrain_per_task = int(&v)?,
            "--finetune-per-task" => opts.finetune_per_task = int(&v)?,
            "--heldout-per-task" => opts.heldout_per_task = int(&v)?,
            "--chat-fraction" => {
                opts.chat_fraction = v.parse().map_err(|e| format!("{a} {v}: {e}"))?
            }
            "--pretrain-tasks" => opts.pretrain_tasks = parse_tasks(&v)?,
            "--finetune-tasks" => opts.finetune_tasks = parse_tasks(&v)?,
            _ => return Err(format!("unknown option {a}")),
        }
    }
    let dir = dir.ok_or("no output folder given")?;
    Ok((dir, opts))
}

fn main() -> ExitCode {
    let (dir, opts) = match parse_args() {
        Ok(x) => x,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("tern-synth: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match write_corpus(&dir, &opts) {
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
