//! `cargo xtask`: thin orchestration over cargo, the release `tern` binary and
//! the Python oracles. xtask depends on no tern crate, so `cargo xtask`
//! itself compiles quickly (anyhow, clap and serde_json: well under a minute on
//! a fresh clone); everything that computes runs in `tern`, built
//! in release by the first command that needs it (cargo's progress shown).

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

mod demo;
mod interop;
mod venv;

use venv::Venv;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "tern's development tasks: the demo, the tests with their oracles, benchmarks, \
             interop with llama.cpp",
    after_help = "The tasks that run models build `tern` in release first (on a fresh clone \
                  that compiles every dependency once, several minutes on 2 cores; later runs \
                  reuse it)."
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// The built-in demo: exact match of models/demo/tern-demo.gguf on a task it never saw,
    /// LoRA fine-tuning on it, exact match again (outputs in target/demo/).
    Demo(demo::DemoArgs),
    /// Create or update the oracle venv target/pyenv (gguf, numpy, safetensors).
    Pyenv {
        /// Also target/torchenv (torch, transformers, peft: the PEFT export and
        /// tokenizer checks, which CI runs; about 5.6 GB from PyPI).
        #[arg(long)]
        torch: bool,
    },
    /// `pyenv`, then `cargo test --workspace --release` with the oracles enabled.
    ///
    /// The release profile lets the tests reuse the dependencies that
    /// `cargo xtask demo` (or any release build of `tern`) compiled.
    Test(PassArgs),
    /// Regenerate every committed oracle fixture under tests/fixtures.
    Fixtures,
    /// `tern convert` in a release build (`cargo xtask convert --help` shows its flags).
    #[command(disable_help_flag = true)]
    Convert(PassArgs),
    /// `tern gen-checkpoint` in a release build: a random Hugging Face checkpoint of a
    /// built-in config, written tensor by tensor.
    #[command(disable_help_flag = true)]
    GenCheckpoint(PassArgs),
    /// `tern finetune` (LoRA) in a release build.
    #[command(disable_help_flag = true)]
    Finetune(PassArgs),
    /// `tern bench` over random-weight zoo configs in a release build, then a markdown table.
    Bench(BenchArgs),
    /// Convert a tiny model, run it in llama.cpp (built in target/interop-venv) and compare
    /// its logits with tern's (docs/interop.md).
    Interop,
}

/// Arguments handed on unchanged.
#[derive(Args)]
struct PassArgs {
    /// Arguments for the underlying command.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// Run tern-backend's criterion micro-benchmarks instead.
    #[arg(long)]
    criterion: bool,
    /// Comma-separated built-in configs (random weights) or .gguf files.
    #[arg(long, default_value = "125m,1b,b1.58-2b-4t,7b,13b")]
    models: String,
    /// JSON lines file the results are appended to [default: target/bench.jsonl].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the ops run: cpu or wgpu (`tern bench --backend`).
    #[arg(long)]
    backend: Option<String>,
    /// Further `tern bench` flags (`--prefill 128 --decode 128 --lora-steps 10` ...).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    tern_args: Vec<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Pyenv { torch } => {
            Venv::Oracles.ensure(&root)?;
            if torch {
                Venv::Torch.ensure(&root)?;
            }
            Ok(())
        }
        Task::Test(a) => test(&root, &a.args),
        Task::Fixtures => fixtures(&root),
        Task::Convert(a) => tern_task(&root, "convert", &a.args),
        Task::GenCheckpoint(a) => tern_task(&root, "gen-checkpoint", &a.args),
        Task::Finetune(a) => tern_task(&root, "finetune", &a.args),
        Task::Demo(a) => demo::demo(&root, &a),
        Task::Interop => interop::interop(&root),
        Task::Bench(a) => bench(&root, &a),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Cargo's target folder (`CARGO_TARGET_DIR`, else `target/`).
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// `cargo build --release` of `packages`, with cargo's progress on the
/// terminal and a line saying what is built and why. Returns the folder that
/// holds the binaries.
fn build_release(root: &Path, packages: &[&str], why: &str) -> Result<PathBuf> {
    eprintln!(
        "xtask: building {} in release for {why} (a fresh clone compiles every dependency once: \
         several minutes on 2 cores; later runs take seconds)",
        packages
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root).args(["build", "--release"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    run(&mut cmd)?;
    Ok(target_dir(root).join("release"))
}

/// The release `tern` binary, built if needed.
fn tern_release(root: &Path, why: &str) -> Result<PathBuf> {
    Ok(build_release(root, &["tern"], why)?.join("tern"))
}

/// `tern SUBCOMMAND ARGS...` in a release build.
fn tern_task(root: &Path, subcommand: &str, args: &[String]) -> Result<()> {
    let tern = tern_release(root, &format!("`tern {subcommand}`"))?;
    run(Command::new(tern)
        .current_dir(root)
        .arg(subcommand)
        .args(args))
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    let python = Venv::Oracles.ensure(root)?;
    eprintln!(
        "xtask: `cargo test --workspace --release`: the release profile shares its compiled \
         dependencies with `cargo xtask demo` and the other release builds of `tern`"
    );
    run(Command::new(env!("CARGO"))
        .current_dir(root)
        .env("TERN_PYTHON", &python)
        .args(["test", "--workspace", "--release"])
        .args(extra))
}

/// Every `tests/fixtures/gen_*.py`, run with the oracle venv, or the torch
/// venv for the scripts that import torch or transformers.
fn fixtures(root: &Path) -> Result<()> {
    let dir = root.join("tests/fixtures");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("gen_") && n.ends_with(".py"))
        })
        .collect();
    scripts.sort();
    for script in scripts {
        let text = std::fs::read_to_string(&script)
            .with_context(|| format!("reading {}", script.display()))?;
        let needs_torch = text.lines().any(|l| {
            let l = l.trim_start();
            [
                "import torch",
                "from torch",
                "import transformers",
                "from transformers",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        });
        let python = if needs_torch {
            Venv::Torch.ensure(root)?
        } else {
            Venv::Oracles.ensure(root)?
        };
        run(Command::new(&python).current_dir(root).arg(&script))?;
    }
    Ok(())
}

/// `cargo xtask bench`: `tern bench` over zoo configs, results as JSON lines
/// and a markdown table.
fn bench(root: &Path, a: &BenchArgs) -> Result<()> {
    if a.criterion {
        return run(Command::new(env!("CARGO")).current_dir(root).args([
            "bench",
            "-p",
            "tern-backend",
        ]));
    }
    if let Some(own) = a
        .tern_args
        .iter()
        .find(|t| matches!(t.as_str(), "--models" | "--out" | "--criterion"))
    {
        bail!("{own} is a flag of `cargo xtask bench`: give it before `tern bench`'s flags");
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/bench.jsonl"));
    let tern = tern_release(root, "`cargo xtask bench`")?;
    for m in a.models.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let model = if m.contains(':') || m.ends_with(".gguf") {
            m.to_string()
        } else {
            format!("random:{m}")
        };
        let mut cmd = Command::new(&tern);
        cmd.current_dir(root)
            .args(["bench", "--model", &model, "--json"])
            .arg(&out);
        if let Some(b) = &a.backend {
            cmd.args(["--backend", b]);
        }
        run(cmd.args(&a.tern_args))?;
    }
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    println!("| model | backend | prefill tok/s | decode tok/s | LoRA tok/s | LoRA peak MiB | peak MiB |");
    println!("|---|---|---|---|---|---|---|");
    let f = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", out.display(), i + 1))?;
        let peak = if v["peak_device_mib"].is_null() {
            &v["peak_rss_mib"]
        } else {
            &v["peak_device_mib"]
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            v["model"].as_str().unwrap_or("?"),
            v["backend"].as_str().unwrap_or("?"),
            f(&v["prefill_tok_s"]),
            f(&v["decode_tok_s"]),
            f(&v["lora_tok_s"]),
            f(&v["lora_peak_device_mib"]),
            f(peak)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The dependency builds of the release `tern` (the demo's) are a subset
    /// of those of `cargo test --workspace --release` (`cargo xtask test`):
    /// same packages with the same features, so a fresh clone compiles the
    /// heavy dependencies once for both README commands. A new
    /// dev-dependency that turns on a feature breaks this; pin the feature in
    /// tools/tern/Cargo.toml as bitflags' and memchr's are.
    #[test]
    fn release_tern_shares_the_test_builds_dependencies() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let tree = |args: &[&str]| -> std::collections::BTreeSet<String> {
            let out = Command::new(env!("CARGO"))
                .current_dir(&root)
                .args(["tree", "--offline", "--prefix", "none", "-f", "{p} [{f}]"])
                .args(args)
                .output()
                .expect("run cargo tree");
            assert!(
                out.status.success(),
                "cargo tree {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim_end_matches(" (*)").to_string())
                .collect()
        };
        let tern = tree(&["-p", "tern", "-e", "normal,build"]);
        let tests = tree(&["--workspace", "-e", "normal,build,dev"]);
        let only_tern: Vec<_> = tern.difference(&tests).collect();
        assert!(
            only_tern.is_empty(),
            "the release tern builds these with features the workspace tests do not use, \
             so `cargo xtask test` would compile them (and their dependents) again: \
             {only_tern:?}"
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_task_and_argument_has_help() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            assert!(
                sub.get_about().is_some(),
                "task {} has no help",
                sub.get_name()
            );
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some() || arg.get_long_help().is_some(),
                    "cargo xtask {} {}: no help text",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn pass_through_tasks_hand_on_every_flag() {
        let cli = Cli::try_parse_from([
            "xtask", "convert", "model", "--out", "m.gguf", "--help", "-t",
        ])
        .unwrap();
        let Task::Convert(a) = cli.task else {
            panic!("not convert")
        };
        assert_eq!(a.args, ["model", "--out", "m.gguf", "--help", "-t"]);
        let cli = Cli::try_parse_from([
            "xtask",
            "bench",
            "--models",
            "125m",
            "--backend",
            "wgpu",
            "--decode",
            "8",
        ])
        .unwrap();
        let Task::Bench(b) = cli.task else {
            panic!("not bench")
        };
        assert_eq!(b.models, "125m");
        assert_eq!(b.backend.as_deref(), Some("wgpu"));
        assert_eq!(b.tern_args, ["--decode", "8"]);
    }
}
