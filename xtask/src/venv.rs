//! The Python venvs under target/ that hold tern's oracles, each pinned by a
//! requirements file under tests/ and rebuilt when that file changes.

use crate::run;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One of tern's oracle venvs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Venv {
    /// target/pyenv: gguf, numpy, safetensors (every test run needs it).
    Oracles,
    /// target/torchenv: torch, transformers, peft (fixture scripts, the
    /// PEFT export and tokenizer checks; about 5.6 GB from PyPI).
    Torch,
    /// target/interop-venv: llama-cpp-python, built from source.
    Interop,
}

impl Venv {
    fn dir(self) -> &'static str {
        match self {
            Venv::Oracles => "target/pyenv",
            Venv::Torch => "target/torchenv",
            Venv::Interop => "target/interop-venv",
        }
    }

    fn requirements(self) -> &'static str {
        match self {
            Venv::Oracles => "tests/requirements.txt",
            Venv::Torch => "tests/requirements-torch.txt",
            Venv::Interop => "tests/requirements-interop.txt",
        }
    }

    /// Create the venv (idempotent: kept while its requirements file is
    /// unchanged) and return its python.
    pub fn ensure(self, root: &Path) -> Result<PathBuf> {
        let venv = root.join(self.dir());
        let python = venv.join("bin/python");
        let requirements = root.join(self.requirements());
        let stamp = venv.join(".tern-requirements");
        let wanted = std::fs::read_to_string(&requirements)
            .with_context(|| format!("reading {}", requirements.display()))?;
        if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
            return Ok(python);
        }
        let host = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(&host).args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(&python).args(["-m", "pip", "install", "-q", "--upgrade", "pip"]))?;
        let mut pip = Command::new(&python);
        pip.args(["-m", "pip", "install", "-q", "-r"])
            .arg(&requirements);
        match self {
            Venv::Oracles => {}
            Venv::Torch => eprintln!(
                "xtask: installing {} into {} (torch with its CUDA libraries from PyPI, \
                 about 5.6 GB; minutes)",
                requirements.display(),
                venv.display()
            ),
            Venv::Interop => {
                // llama-cpp-python builds llama.cpp from source; its multimodal
                // library is not needed here and costs build time.
                if std::env::var_os("CMAKE_ARGS").is_none() {
                    pip.env("CMAKE_ARGS", "-DLLAVA_BUILD=OFF");
                }
                eprintln!(
                    "xtask: building llama-cpp-python from source (several minutes on 2 cores)"
                );
            }
        }
        run(&mut pip)?;
        std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
        Ok(python)
    }
}
