//! The `tern` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

mod adapters;
mod backend;
mod bench;
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
    /// Prefill, decode and LoRA training speed and peak memory of a model.
    Bench(Box<bench::BenchArgs>),
    /// The CPU and GPU adapters tern can use, with the GPU's limits and features.
    Info {
        /// wgpu: describe the adapter whose name contains this text.
        #[arg(long)]
        gpu: Option<String>,
    },
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
        Command::Bench(a) => bench::run(&a)?,
        Command::Info { gpu } => info(gpu)?,
    }
    Ok(())
}

/// `tern info`.
fn info(gpu: Option<String>) -> Result<()> {
    use tern_backend::Backend;
    println!("tern {}", env!("CARGO_PKG_VERSION"));
    println!("cpu: {}", tern_backend::Cpu::new().name());
    let adapters = tern_wgpu::list_adapters();
    if adapters.is_empty() {
        println!("wgpu: no adapter (install a Vulkan driver; without a GPU: mesa-vulkan-drivers)");
        return Ok(());
    }
    println!("wgpu adapters:");
    for a in &adapters {
        println!("  {a}");
    }
    let b = backend::open_wgpu(gpu)?;
    let r = b.report();
    println!("chosen: {}", b.name());
    println!(
        "  device type: {}, driver: {} {}",
        r.device_type, r.driver, r.driver_info
    );
    println!("  subgroup size: {}..{}", r.subgroup_min, r.subgroup_max);
    println!(
        "  max storage binding: {} bytes ({} MiB); max buffer: {} bytes ({} MiB)",
        r.max_storage_binding,
        r.max_storage_binding >> 20,
        r.max_buffer,
        r.max_buffer >> 20
    );
    println!(
        "  workgroup memory: {} bytes; invocations per workgroup: {}",
        r.max_workgroup_storage, r.max_invocations
    );
    println!(
        "  shader f16: {}; subgroups: {}",
        if r.shader_f16 { "yes" } else { "no" },
        if r.subgroups { "yes" } else { "no" }
    );
    println!("  features: {}", r.features);
    Ok(())
}
