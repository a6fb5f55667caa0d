//! The built-in demo model (`models/demo/tern-demo.gguf`, made by
//! `cargo xtask demo --retrain`) and a shortened `cargo xtask demo`.

use std::path::{Path, PathBuf};
use std::process::Command;

use tern_backend::Cpu;
use tern_model::source::ModelSource;
use tern_model::Model;
use tern_synth::{exact_match, examples, CorpusOptions, Split, TaskKind};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_path() -> PathBuf {
    root().join("models/demo/tern-demo.gguf")
}

/// Held-out examples per task scored by these tests.
const N: usize = 100;
/// Lowest accepted accuracy of the committed model on `max` (a pretrained
/// task); docs/demo.md gives the measured value.
const MAX_FLOOR: f64 = 0.90;
/// Highest accepted accuracy of the committed model on the unseen task
/// before fine-tuning.
const UNSEEN_CEILING: f64 = 0.15;

#[test]
fn the_committed_model_loads_and_knows_its_tasks() {
    let path = model_path();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(
        meta.len() <= 3 << 20,
        "{} is {} bytes",
        path.display(),
        meta.len()
    );
    let src = ModelSource::open(path.to_str().unwrap()).unwrap();
    let tok = src.tokenizer(None).unwrap();
    assert_eq!(tok.vocab_size(), tern_synth::vocab_size());
    let mut model = Model::load(Cpu::with_threads(2), src.weights()).unwrap();
    // The corpus seed of `cargo xtask demo` is 0: these are its held-out
    // examples, which pretraining never saw.
    let seen = examples(TaskKind::Max, Split::HeldOut, N, 0).unwrap();
    let score = exact_match(&mut model, &tok, &seen, 16).unwrap();
    println!("max: {score}");
    assert!(
        score.accuracy >= MAX_FLOOR,
        "max: {:.1}% < {:.0}%",
        100.0 * score.accuracy,
        100.0 * MAX_FLOOR
    );
    let unseen = examples(TaskKind::UNSEEN, Split::HeldOut, N, 0).unwrap();
    let score = exact_match(&mut model, &tok, &unseen, 16).unwrap();
    println!("{}: {score}", TaskKind::UNSEEN);
    assert!(
        score.accuracy <= UNSEEN_CEILING,
        "{}: {:.1}% before any fine-tuning",
        TaskKind::UNSEEN,
        100.0 * score.accuracy
    );
}

fn tern(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    c.current_dir(root()).args(args);
    c
}

fn ok(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tern eval --json` accuracy of one task.
fn accuracy(dir: &Path, heldout: &Path, lora: Option<&Path>, name: &str) -> f64 {
    let json = dir.join(format!("{name}.json"));
    let task = TaskKind::UNSEEN.name();
    let mut c = tern(&["eval", "--threads", "2", "--task", task]);
    c.arg("--model")
        .arg(model_path())
        .arg("--data")
        .arg(heldout)
        .arg("--json")
        .arg(&json);
    if let Some(l) = lora {
        c.arg("--lora").arg(l);
    }
    ok(&mut c);
    let score: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let t = &score["per_task"][task];
    let (correct, total) = (t["correct"].as_u64().unwrap(), t["total"].as_u64().unwrap());
    assert_eq!(total as usize, N);
    correct as f64 / total as f64
}

/// The demo, shortened: a few dozen LoRA steps on the unseen task's
/// conversations lift its held-out exact match far above the base model's.
#[test]
fn a_short_lora_run_learns_the_unseen_task() {
    let dir = tempfile::tempdir().unwrap();
    let opts = CorpusOptions {
        pretrain_per_task: 1,
        finetune_per_task: 400,
        heldout_per_task: N,
        ..CorpusOptions::default()
    };
    assert_eq!(opts.finetune_tasks, vec![TaskKind::UNSEEN]);
    let corpus = tern_synth::write_corpus(&dir.path().join("corpus"), &opts).unwrap();
    let heldout = corpus.path("heldout.jsonl");

    let before = accuracy(dir.path(), &heldout, None, "before");
    let adapter = dir.path().join("adapter");
    let mut c = tern(&[
        "finetune",
        "--quiet",
        "--threads",
        "2",
        "--max-steps",
        STEPS,
        "--lora-rank",
        "16",
        "--lora-alpha",
        "32",
        "--learning-rate",
        "3e-3",
        "--warmup-steps",
        "5",
        "--batch-size",
        "8",
        "--ctx",
        "64",
        "--assistant-loss-only",
        "--validation-split",
        "0",
    ]);
    c.arg("--model")
        .arg(model_path())
        .arg("--data")
        .arg(corpus.path("finetune.jsonl"))
        .arg("--output-adapter")
        .arg(&adapter)
        .arg("--checkpoint-save-dir")
        .arg(dir.path().join("run"));
    ok(&mut c);
    assert!(dir.path().join("run/loss.svg").is_file());
    let after = accuracy(dir.path(), &heldout, Some(&adapter), "after");
    println!(
        "{}: {:.1}% -> {:.1}%",
        TaskKind::UNSEEN,
        100.0 * before,
        100.0 * after
    );
    assert!(before <= UNSEEN_CEILING, "before: {before}");
    assert!(
        after >= before + MIN_GAIN,
        "after {STEPS} steps: {before} -> {after}"
    );
}

/// LoRA steps of the shortened demo.
const STEPS: &str = "100";
/// Smallest accepted gain in accuracy (absolute).
const MIN_GAIN: f64 = 0.25;
