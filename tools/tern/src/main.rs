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
        /// The file or folder to describe.
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Convert a Hugging Face BitNet checkpoint to packed ternary GGUF.
    Convert(convert::ConvertArgs),
    /// Write a Hugging Face checkpoint of seeded random weights for a config, tensor by
    /// tensor (input for conversion tests and benchmarks).
    GenCheckpoint(convert::GenCheckpointArgs),
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
        Command::GenCheckpoint(a) => convert::gen_checkpoint(&a)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument of `cmd` and its subcommands without help text, as
    /// `path --flag`.
    fn missing_help(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() {
                out.push(format!("{p} (the command)"));
            }
            missing_help(sub, &p, out);
        }
    }

    #[test]
    fn every_command_and_argument_has_help() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        missing_help(&cmd, "tern", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn the_help_walk_sees_a_missing_help_text() {
        let cmd = clap::Command::new("t")
            .arg(clap::Arg::new("documented").long("a").help("documented"))
            .subcommand(
                clap::Command::new("s")
                    .about("s")
                    .arg(clap::Arg::new("bare").long("b")),
            );
        let mut missing = Vec::new();
        missing_help(&cmd, "t", &mut missing);
        assert_eq!(missing, ["t s bare"]);
    }

    /// The short and long names llama.cpp users type, with the same meaning.
    #[test]
    fn llama_cpp_names_parse() {
        let cli = Cli::try_parse_from([
            "tern",
            "generate",
            "-m",
            "m.gguf",
            "-f",
            "p.txt",
            "-n",
            "5",
            "-c",
            "256",
            "-s",
            "7",
            "--temp",
            "0",
            "-t",
            "2",
            "--top-k",
            "3",
            "--top-p",
            "0.5",
            "--repeat-penalty",
            "1.1",
            "--repeat-last-n",
            "8",
            "--ignore-eos",
        ])
        .unwrap();
        let Command::Generate(g) = cli.command else {
            panic!("not generate")
        };
        assert_eq!(g.model.model, "m.gguf");
        assert_eq!(g.file.as_deref(), Some(std::path::Path::new("p.txt")));
        assert_eq!((g.n_predict, g.model.ctx, g.seed), (5, Some(256), 7));
        assert_eq!((g.temperature, g.top_k, g.top_p), (0.0, 3, 0.5));
        assert_eq!((g.repeat_penalty, g.repeat_last_n), (1.1, 8));
        assert_eq!(g.model.backend.threads, Some(2));
        assert!(g.ignore_eos);
        let cli = Cli::try_parse_from([
            "tern",
            "generate",
            "--model",
            "m",
            "--ctx-size",
            "9",
            "--predict",
            "4",
            "-p",
            "hi",
        ])
        .unwrap();
        let Command::Generate(g) = cli.command else {
            panic!("not generate")
        };
        assert_eq!((g.model.ctx, g.n_predict), (Some(9), 4));
        assert_eq!(g.prompt.as_deref(), Some("hi"));
        // -p and -f are two ways to give one prompt.
        assert!(
            Cli::try_parse_from(["tern", "generate", "-m", "m", "-p", "a", "-f", "b"]).is_err()
        );
        let cli = Cli::try_parse_from(["tern", "bench", "-p", "16", "-n", "4"]).unwrap();
        let Command::Bench(b) = cli.command else {
            panic!("not bench")
        };
        assert_eq!((b.prefill, b.decode), (16, 4));
    }

    #[test]
    fn model_help_lists_every_built_in_config() {
        let help = Cli::command()
            .find_subcommand_mut("generate")
            .expect("generate")
            .render_help()
            .to_string();
        for (name, _) in tern_model::config::ZOO {
            assert!(help.contains(name), "`tern generate --help` lacks {name}");
        }
    }
}
