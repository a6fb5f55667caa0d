//! The `tern` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

mod adapters;
mod convert;
mod eval;
mod finetune;
mod inspect;
mod pretrain;
mod run;

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "BitNet b1.58 models on ordinary hardware"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the metadata and the tensor table of a GGUF or safetensors file.
    ///
    /// FILE is a .gguf file, a .safetensors file, a sharded
    /// model.safetensors.index.json, or a folder holding one of those.
    Inspect {
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Convert a Hugging Face BitNet checkpoint to packed ternary GGUF.
    Convert(convert::ConvertArgs),
    /// Generate text, streaming tokens; ends with prefill and decode tok/s.
    Generate(run::GenerateArgs),
    /// Write the logits of every position as a [T, vocab] f32 .npy file.
    Logits(run::LogitsArgs),
    /// LoRA fine-tuning (flags as llama.cpp's llama-finetune-lora).
    Finetune(Box<finetune::FinetuneArgs>),
    /// Train a model from scratch (quantization-aware) and write a ternary GGUF.
    Pretrain(Box<pretrain::PretrainArgs>),
    /// Exact-match accuracy on held-out task examples (tern-synth), greedy decoding.
    Eval(Box<eval::EvalArgs>),
    /// Fold LoRA adapters into a model and write it as an f16/f32 GGUF.
    Merge(adapters::MergeArgs),
    /// Work with LoRA adapters.
    Adapters {
        #[command(subcommand)]
        command: adapters::AdaptersCommand,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect { file, json } => {
            let report = inspect::Report::open(&file)?;
            let mut out = std::io::stdout().lock();
            if json {
                report.write_json(&mut out)?;
            } else {
                report.write_text(&mut out)?;
            }
        }
        Command::Convert(a) => convert::run(&a)?,
        Command::Generate(a) => run::generate(&a)?,
        Command::Logits(a) => run::logits(&a)?,
        Command::Finetune(a) => finetune::run(&a)?,
        Command::Pretrain(a) => pretrain::run(&a)?,
        Command::Eval(a) => eval::run(&a)?,
        Command::Merge(a) => adapters::merge(&a)?,
        Command::Adapters { command } => adapters::run(&command)?,
    }
    Ok(())
}
