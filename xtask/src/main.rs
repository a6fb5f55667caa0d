//! `cargo xtask`: thin orchestration over cargo, the tern tools and the
//! Python oracles. Logic lives in the crates; this only runs commands.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

mod demo;
mod interop;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  demo       [--retrain] [--quick]: the built-in demo: exact match of models/demo/tern-demo.gguf
             on a task it never saw, LoRA fine-tuning on it, exact match again (target/demo/);
             --retrain first rebuilds the corpus and re-pretrains the model
  pyenv      create or update the oracle venv in target/pyenv (gguf, numpy, safetensors)
  test       pyenv, then `cargo test --workspace` with the oracles enabled
  fixtures   regenerate every committed oracle fixture under tests/fixtures
  convert    INPUT --out OUT.gguf [--type T] [--target T] [--embed-type T] [--hf-repo R]:
             `tern convert` in a release build (see docs/convert.md)
  gen-checkpoint --config 7b [--dtype f16|bf16|f32] [--seed N] --out DIR:
             write a random Hugging Face checkpoint of a zoo config, tensor by tensor
  finetune   --model M --data D [flags]: `tern finetune` (LoRA) in a release build
  bench      [--backend cpu|wgpu] [--models 125m,1b,...] [--out FILE.jsonl] [tern bench flags]:
             `tern bench` (prefill, decode, LoRA tok/s, peak memory) over random-weight zoo
             configs in a release build, then a markdown table of the results;
             `bench --criterion` runs the criterion micro-benchmarks instead
  interop    convert a tiny model, run it in llama.cpp (built in target/interop-venv) and
             compare its logits with tern's (docs/interop.md)
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("pyenv") => pyenv(&root).map(|_| ()),
        Some("test") => test(&root, &args[1..]),
        Some("fixtures") => fixtures(&root),
        Some("convert") => run(Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(["run", "--release", "--quiet", "-p", "tern", "--", "convert"])
            .args(&args[1..])),
        Some("finetune") => run(Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "tern",
                "--",
                "finetune",
            ])
            .args(&args[1..])),
        Some("gen-checkpoint") => gen_checkpoint(&root, &args[1..]),
        Some("demo") => demo::demo(&root, &args[1..]),
        Some("interop") => interop::interop(&root),
        Some("bench") => bench(&root, &args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown xtask command '{other}'\n\n{USAGE}"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
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

/// Create `target/pyenv` (idempotent) and install `tests/requirements.txt`.
fn pyenv(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/pyenv");
    let python = venv.join("bin/python");
    let requirements = root.join("tests/requirements.txt");
    let stamp = venv.join(".tern-requirements");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(python);
    }
    let host = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(&host).args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q", "--upgrade", "pip"]))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "-r"])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    let python = pyenv(root)?;
    run(Command::new(env!("CARGO"))
        .current_dir(root)
        .env("TERN_PYTHON", &python)
        .args(["test", "--workspace"])
        .args(extra))
}

/// Every `tests/fixtures/gen_*.py`, run with the oracle venv.
fn fixtures(root: &Path) -> Result<()> {
    let python = pyenv(root)?;
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
        run(Command::new(&python).current_dir(root).arg(&script))?;
    }
    Ok(())
}

/// `gen-checkpoint`: generation is arithmetic on gigabytes, so a debug xtask
/// hands over to a release build of itself.
fn gen_checkpoint(root: &Path, args: &[String]) -> Result<()> {
    if cfg!(debug_assertions) {
        return run(Command::new(env!("CARGO"))
            .current_dir(root)
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "xtask",
                "--",
                "gen-checkpoint",
            ])
            .args(args));
    }
    let (mut config, mut dtype, mut out, mut seed) = (None, "f16".to_owned(), None, 0u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--config" => config = Some(val()?),
            "--dtype" => dtype = val()?,
            "--out" => out = Some(PathBuf::from(val()?)),
            "--seed" => seed = val()?.parse().context("--seed")?,
            other => bail!("gen-checkpoint: unknown argument {other}"),
        }
    }
    let (Some(config), Some(out)) = (config, out) else {
        bail!("usage: cargo xtask gen-checkpoint --config 7b [--dtype f16] [--seed N] --out DIR");
    };
    let cfg = tern_model::BitNetConfig::zoo(&config)?;
    let dtype = tern_convert::gen::GenDtype::parse(&dtype)?;
    let t0 = std::time::Instant::now();
    let (files, bytes) =
        tern_convert::gen::write_random_checkpoint(&cfg, dtype, seed, &out, |_, _| {})?;
    eprintln!(
        "wrote {} files, {:.2} GB of tensors, to {} in {:.1} s",
        files.len(),
        bytes as f64 / 1e9,
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo xtask bench`: `tern bench` over zoo configs, results as JSON lines
/// and a markdown table.
fn bench(root: &Path, args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--criterion") {
        return run(Command::new(env!("CARGO")).current_dir(root).args([
            "bench",
            "-p",
            "tern-backend",
        ]));
    }
    let mut models = "125m,1b,b1.58-2b-4t,7b,13b".to_string();
    let mut out = root.join("target/bench.jsonl");
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--models" => models = it.next().context("--models needs a value")?.clone(),
            "--out" => out = PathBuf::from(it.next().context("--out needs a value")?),
            _ => rest.push(a.clone()),
        }
    }
    run(Command::new(env!("CARGO")).current_dir(root).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "tern",
    ]))?;
    let tern = root.join("target/release/tern");
    for m in models.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let model = if m.contains(':') || m.ends_with(".gguf") {
            m.to_string()
        } else {
            format!("random:{m}")
        };
        run(Command::new(&tern)
            .args(["bench", "--model", &model, "--json"])
            .arg(&out)
            .args(&rest))?;
    }
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    println!("| model | backend | prefill tok/s | decode tok/s | LoRA tok/s | LoRA peak MiB | peak MiB |");
    println!("|---|---|---|---|---|---|---|");
    let f = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
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
