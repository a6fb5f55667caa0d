//! `cargo xtask`: thin orchestration over cargo, the tern tools and the
//! Python oracles. Logic lives in the crates; this only runs commands.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  pyenv      create or update the oracle venv in target/pyenv (gguf, numpy, safetensors)
  test       pyenv, then `cargo test --workspace` with the oracles enabled
  fixtures   regenerate every committed oracle fixture under tests/fixtures
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("pyenv") => pyenv(&root).map(|_| ()),
        Some("test") => test(&root, &args[1..]),
        Some("fixtures") => fixtures(&root),
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
