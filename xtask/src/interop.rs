//! `cargo xtask interop`: tern's GGUF files run in llama.cpp, logits compared.
//!
//! Orchestration only; the work is done by committed tools:
//! 1. `target/interop-venv` with llama-cpp-python (built from source), gguf and
//!    numpy, pinned by `tests/requirements-interop.txt` (skipped when the stamp
//!    matches the file);
//! 2. `tests/interop/make_model.py` writes a tiny SiLU BitNet checkpoint with
//!    the real byte-level BPE tokenizer;
//! 3. `tern convert` writes it as F32, TQ2_0 and TQ1_0 GGUF;
//! 4. `tests/interop/llamacpp_logits.py` runs each file in llama.cpp, and
//!    `tern logits` runs it in tern (F32 with `--act-quant none`, because
//!    llama.cpp multiplies float activations with F32 weights; TQ with tern's
//!    default int8 activations, because llama.cpp quantizes them to 8 bits per
//!    256 values for TQ weights);
//! 5. `tests/interop/compare.py` checks the token ids and the logits against
//!    the bounds below and fails the task if any is exceeded.

use crate::run;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// (projection type, `--act-quant` for tern, bound on max |logit diff|).
const CASES: [(&str, &str, &str); 3] = [
    ("f32", "none", "1e-4"),
    ("tq2_0", "int8", "5e-2"),
    ("tq1_0", "int8", "5e-2"),
];

/// Threads for both runtimes (CI has 2 cores).
const THREADS: &str = "2";

/// Create `target/interop-venv` (idempotent) and install the pinned llama.cpp
/// oracle.
fn venv(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/interop-venv");
    let python = venv.join("bin/python");
    let requirements = root.join("tests/requirements-interop.txt");
    let stamp = venv.join(".tern-requirements");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        eprintln!("interop venv up to date ({})", venv.display());
        return Ok(python);
    }
    let host = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(&host).args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q", "--upgrade", "pip"]))?;
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "-q", "-r"])
        .arg(&requirements);
    // llama-cpp-python builds llama.cpp from source; its multimodal library
    // is not needed here and costs build time.
    if std::env::var_os("CMAKE_ARGS").is_none() {
        pip.env("CMAKE_ARGS", "-DLLAVA_BUILD=OFF");
    }
    eprintln!("building llama-cpp-python from source (several minutes on 2 cores)");
    run(&mut pip)?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

pub fn interop(root: &Path) -> Result<()> {
    let start = Instant::now();
    let mut times: Vec<(&str, Duration)> = Vec::new();
    let mut lap = Instant::now();
    let mut mark = |what: &'static str, lap: &mut Instant| {
        times.push((what, lap.elapsed()));
        *lap = Instant::now();
    };

    let python = venv(root)?;
    mark("venv (llama-cpp-python)", &mut lap);

    run(Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["build", "-p", "tern"]))?;
    let tern = target_dir(root).join("debug/tern");
    mark("build tern", &mut lap);

    let dir = root.join("target/interop");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let scripts = root.join("tests/interop");
    let model = dir.join("model");
    run(Command::new(&python)
        .arg(scripts.join("make_model.py"))
        .arg(&model))?;
    let prompt_file = scripts.join("prompt.txt");
    let prompt = std::fs::read_to_string(&prompt_file)
        .with_context(|| format!("reading {}", prompt_file.display()))?;
    for (ty, _, _) in CASES {
        run(Command::new(&tern)
            .arg("convert")
            .arg(&model)
            .arg("-o")
            .arg(dir.join(format!("tiny-{ty}.gguf")))
            .args(["--type", ty, "--embed-type", "f32", "--quiet"]))?;
    }
    mark("model + tern convert", &mut lap);

    for (ty, _, _) in CASES {
        run(Command::new(&python)
            .arg(scripts.join("llamacpp_logits.py"))
            .arg(dir.join(format!("tiny-{ty}.gguf")))
            .arg("--prompt-file")
            .arg(&prompt_file)
            .arg("--ids")
            .arg(dir.join(format!("llama-{ty}.json")))
            .arg("--logits")
            .arg(dir.join(format!("llama-{ty}.npy")))
            .args(["--threads", THREADS]))?;
    }
    mark("llama.cpp logits", &mut lap);

    let tern_logits = |gguf: &str, act: &str, stem: &str| -> Result<()> {
        run(Command::new(&tern)
            .arg("logits")
            .arg("-m")
            .arg(dir.join(gguf))
            .arg("-p")
            .arg(&prompt)
            .args(["--act-quant", act, "-t", THREADS])
            .arg("--ids-out")
            .arg(dir.join(format!("{stem}.json")))
            .arg("--out")
            .arg(dir.join(format!("{stem}.npy"))))
    };
    for (ty, act, _) in CASES {
        tern_logits(&format!("tiny-{ty}.gguf"), act, &format!("tern-{ty}"))?;
    }
    // Control: tern's faithful int8 mode on the F32 file must NOT pass the
    // F32 bound, or that comparison could not see activation quantization.
    tern_logits("tiny-f32.gguf", "int8", "tern-f32-int8")?;
    mark("tern logits", &mut lap);

    let mut compare = Command::new(&python);
    compare.arg(scripts.join("compare.py")).arg(&dir);
    for (ty, _, bound) in CASES {
        compare.arg("--case").arg(format!("{ty}:{bound}"));
    }
    compare
        .args(["--control", "f32:tern-f32-int8:10"])
        .arg("--report")
        .arg(dir.join("report.json"));
    let verdict = run(&mut compare);
    mark("compare", &mut lap);

    eprintln!("interop timings:");
    for (what, d) in &times {
        eprintln!("  {what:<26} {:>7.1} s", d.as_secs_f64());
    }
    eprintln!("  {:<26} {:>7.1} s", "total", start.elapsed().as_secs_f64());
    verdict.context("tern and llama.cpp disagree (see the table above)")?;
    eprintln!("interop: tern and llama.cpp agree within the bounds");
    Ok(())
}
