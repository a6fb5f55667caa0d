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
//! 5. LoRA: `tern adapters init --random-b` writes a seeded adapter for the
//!    model (llama.cpp's `--lora` layout, with the base's post-LoRA scales
//!    divided out); llama.cpp runs the F32 file with it, tern runs `--lora`
//!    with the same file in float mode, and llama.cpp also runs `tern merge`'s
//!    dense F32 model without any adapter;
//! 6. `tests/interop/compare.py` checks the token ids and the logits against
//!    the bounds below and fails the task if any is exceeded.

use crate::run;
use anyhow::{bail, Context, Result};
use std::path::Path;
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

/// The interop adapter (`tern adapters init`): rank and alpha (scaling
/// alpha / r = 2, as in the PEFT fixtures) on every projection of every layer,
/// the seed of A (PEFT's init) and of B, and B's half-width (PEFT's B = 0
/// would be a no-op).
const LORA_RANK: &str = "8";
const LORA_ALPHA: &str = "16";
const LORA_SEED: u64 = 0x7e4e_104a;
const LORA_B_MAX: &str = "0.05";

/// Bound on max |logit diff| for the LoRA cases: both runtimes compute float
/// activations times F32 weights plus the float low-rank branch.
const LORA_BOUND: &str = "1e-4";

/// The adapter must move llama.cpp's logits by more than this many times
/// `LORA_BOUND`, or the LoRA comparison could not see an adapter that is
/// ignored, half applied or applied with the wrong scaling.
const LORA_EFFECT_FACTOR: &str = "100";

pub fn interop(root: &Path) -> Result<()> {
    let start = Instant::now();
    let mut times: Vec<(&str, Duration)> = Vec::new();
    let mut lap = Instant::now();
    let mut mark = |what: &'static str, lap: &mut Instant| {
        times.push((what, lap.elapsed()));
        *lap = Instant::now();
    };

    let python = crate::venv::Venv::Interop.ensure(root)?;
    mark("venv (llama-cpp-python)", &mut lap);

    let tern = crate::tern_release(root, "`cargo xtask interop`")?;
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

    // LoRA: tern's export for this base (`lora.gguf`: llama.cpp's post-LoRA
    // ffn_gate/ffn_up scales divided out, see tern_lora::io::PostScales), the
    // same adapter written without that compensation (`lora-raw.gguf`, a
    // control), and the base with the adapter folded in by `tern merge`.
    let base_f32 = dir.join("tiny-f32.gguf");
    let adapter = dir.join("lora.gguf");
    let adapter_raw = dir.join("lora-raw.gguf");
    for (path, extra) in [(&adapter, None), (&adapter_raw, Some("--no-post-scales"))] {
        let mut cmd = Command::new(&tern);
        cmd.args(["adapters", "init", "-m"])
            .arg(&base_f32)
            .arg("--out")
            .arg(path)
            .args(["--lora-rank", LORA_RANK, "--lora-alpha", LORA_ALPHA])
            .args(["--lora-modules", "all", "--seed", &LORA_SEED.to_string()])
            .args(["--random-b", LORA_B_MAX])
            .args(extra);
        run(&mut cmd)?;
    }
    let merged = dir.join("merged-f32.gguf");
    run(Command::new(&tern)
        .arg("merge")
        .arg("-m")
        .arg(&base_f32)
        .arg("--lora")
        .arg(&adapter)
        .args(["--type", "f32", "--embed-type", "f32", "--out"])
        .arg(&merged))?;
    if !has_key(&tern, &merged, "tokenizer.ggml.model")? {
        bail!(
            "{}: `tern merge` dropped the tokenizer metadata",
            merged.display()
        );
    }
    mark("LoRA adapter + tern merge", &mut lap);

    let llama_logits = |gguf: &str, lora: Option<&Path>, stem: &str| -> Result<()> {
        let mut cmd = Command::new(&python);
        cmd.arg(scripts.join("llamacpp_logits.py"))
            .arg(dir.join(gguf))
            .arg("--prompt-file")
            .arg(&prompt_file)
            .arg("--ids")
            .arg(dir.join(format!("{stem}.json")))
            .arg("--logits")
            .arg(dir.join(format!("{stem}.npy")))
            .args(["--threads", THREADS]);
        if let Some(lora) = lora {
            cmd.arg("--lora").arg(lora);
        }
        run(&mut cmd)
    };
    for (ty, _, _) in CASES {
        llama_logits(&format!("tiny-{ty}.gguf"), None, &format!("llama-{ty}"))?;
    }
    llama_logits("tiny-f32.gguf", Some(&adapter), "llama-f32-lora")?;
    llama_logits("tiny-f32.gguf", Some(&adapter_raw), "llama-f32-lora-raw")?;
    llama_logits("merged-f32.gguf", None, "llama-f32-merged")?;
    mark("llama.cpp logits", &mut lap);

    let tern_logits = |gguf: &str, act: &str, lora: Option<&Path>, stem: &str| -> Result<()> {
        let mut cmd = Command::new(&tern);
        cmd.arg("logits")
            .arg("-m")
            .arg(dir.join(gguf))
            .arg("-p")
            .arg(&prompt)
            .args(["--act-quant", act, "-t", THREADS])
            .arg("--ids-out")
            .arg(dir.join(format!("{stem}.json")))
            .arg("--out")
            .arg(dir.join(format!("{stem}.npy")));
        if let Some(lora) = lora {
            cmd.arg("--lora").arg(lora);
        }
        run(&mut cmd)
    };
    for (ty, act, _) in CASES {
        tern_logits(&format!("tiny-{ty}.gguf"), act, None, &format!("tern-{ty}"))?;
    }
    // Control: tern's faithful int8 mode on the F32 file must NOT pass the
    // F32 bound, or that comparison could not see activation quantization.
    tern_logits("tiny-f32.gguf", "int8", None, "tern-f32-int8")?;
    tern_logits("tiny-f32.gguf", "none", Some(&adapter), "tern-f32-lora")?;
    mark("tern logits", &mut lap);

    let mut compare = Command::new(&python);
    compare.arg(scripts.join("compare.py")).arg(&dir);
    for (ty, _, bound) in CASES {
        compare.arg("--case").arg(format!("{ty}:{bound}"));
    }
    // tern's base with `--lora` (tern's export) against llama.cpp's base with
    // the compensated adapter, and against llama.cpp's run of the merged
    // model (no adapter).
    compare
        .arg("--case")
        .arg(format!("f32-lora:{LORA_BOUND}"))
        .arg("--case")
        .arg(format!(
            "f32-merged:{LORA_BOUND}:tern-f32-lora:llama-f32-merged"
        ));
    compare
        .args(["--control", "f32:tern-f32-int8:10"])
        // llama.cpp without the adapter against llama.cpp with it.
        .arg("--control")
        .arg(format!("f32-lora:llama-f32:{LORA_EFFECT_FACTOR}"))
        // The adapter without the post-scale compensation, in llama.cpp:
        // its ffn_gate/ffn_up branches get scaled by `.scale` there, so it
        // must be far off (this also notices if llama.cpp changes that order).
        .arg("--control")
        .arg(format!("f32-lora:llama-f32-lora-raw:{LORA_EFFECT_FACTOR}"))
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

/// Whether the GGUF file at `path` holds the metadata key `key` (read with
/// `tern inspect --json`).
fn has_key(tern: &Path, path: &Path, key: &str) -> Result<bool> {
    let out = Command::new(tern)
        .arg("inspect")
        .arg(path)
        .arg("--json")
        .output()
        .with_context(|| format!("could not start {}", tern.display()))?;
    if !out.status.success() {
        bail!(
            "tern inspect {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("tern inspect {} --json: not JSON", path.display()))?;
    let Some(meta) = report["metadata"].as_array() else {
        bail!("tern inspect {} --json: no metadata list", path.display());
    };
    Ok(meta.iter().any(|m| m["key"] == key))
}
