//! `cargo xtask demo [--retrain] [--quick]`: the built-in demo, as
//! orchestration of release builds of `tern-synth` and `tern`.
//!
//! 1. `tern-synth target/demo/corpus`: the synthetic corpus (default options,
//!    seed 0: every task but `first` in pretraining, `first` for fine-tuning).
//! 2. With `--retrain`: `tern pretrain` on that corpus, writing
//!    `models/demo/tern-demo.gguf` (the committed model).
//! 3. `tern eval` of the model on held-out examples: the unseen task and two
//!    pretrained ones.
//! 4. `tern finetune`: LoRA on the unseen task's conversations.
//! 5. `tern eval` again with the adapter, and once more without it (the
//!    base model is untouched by fine-tuning); a before/after table, why the
//!    pretrained tasks fall while the adapter is on, and samples.
//!
//! Everything it writes goes under `target/demo/` (corpus, adapter, scores,
//! and the fine-tuning run's metrics and loss curve in `finetune/`), except
//! the model that `--retrain` replaces.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The committed model, relative to the workspace root.
pub const MODEL: &str = "models/demo/tern-demo.gguf";
/// Its shape.
const CONFIG: &str = "models/demo/config.json";
/// The task learned by fine-tuning (`tern_synth::TaskKind::UNSEEN`).
const UNSEEN: &str = "first";
/// Pretrained tasks shown next to it, to see what the adapter keeps.
const SEEN: &[&str] = &["max", "last"];
/// Fine-tuning conversations of the unseen task (more than the corpus
/// default; the pretraining documents and held-out examples do not depend on
/// it).
const FINETUNE_EXAMPLES: &str = "4000";
/// Threads of every step (the demo's budget is two cores).
const THREADS: &str = "2";

/// `tern pretrain` arguments of the committed model (after --config, --data,
/// --tokenizer, --out).
const PRETRAIN: &[&str] = &[
    "--steps",
    "3000",
    "--batch-size",
    "16",
    "--ctx",
    "64",
    "--learning-rate",
    "3e-3",
    "--lr-scheduler",
    "cosine",
    "--warmup-steps",
    "100",
    "--seed",
    "0",
];

/// `tern finetune` arguments shared by the full and the quick demo.
const FINETUNE: &[&str] = &[
    "--lora-rank",
    "16",
    "--lora-alpha",
    "32",
    "--learning-rate",
    "2e-3",
    "--lr-scheduler",
    "cosine",
    "--warmup-steps",
    "30",
    "--batch-size",
    "8",
    "--ctx",
    "64",
    "--assistant-loss-only",
    "--validation-split",
    "0.05",
    "--seed",
    "0",
];

/// `cargo xtask demo` flags.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// First rebuild the corpus and re-pretrain models/demo/tern-demo.gguf (about 8 minutes
    /// on 2 cores).
    #[arg(long)]
    retrain: bool,
    /// Fine-tune briefly: 300 LoRA steps instead of 3000, 100 held-out examples per task
    /// instead of 200.
    #[arg(long)]
    quick: bool,
}

pub fn demo(root: &Path, args: &DemoArgs) -> Result<()> {
    let (steps, heldout) = if args.quick { (300, 100) } else { (3000, 200) };
    let t0 = Instant::now();
    let out = root.join("target/demo");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let bin = super::build_release(root, &["tern", "tern-synth"], "the demo")?;
    let tern = || {
        let mut c = Command::new(bin.join("tern"));
        c.current_dir(root);
        c
    };
    let built = t0.elapsed().as_secs_f64();

    let corpus = out.join("corpus");
    super::run(Command::new(bin.join("tern-synth")).arg(&corpus).args([
        "--seed",
        "0",
        "--finetune-per-task",
        FINETUNE_EXAMPLES,
    ]))?;
    let heldout_file = corpus.join("heldout.jsonl");
    let model = root.join(MODEL);

    if args.retrain {
        let t = Instant::now();
        super::run(
            tern()
                .args([
                    "pretrain",
                    "--config",
                    CONFIG,
                    "--quiet",
                    "--threads",
                    THREADS,
                ])
                .arg("--data")
                .arg(corpus.join("pretrain.jsonl"))
                .arg("--tokenizer")
                .arg(corpus.join("tokenizer.json"))
                .arg("--out")
                .arg(&model)
                .args(PRETRAIN),
        )?;
        eprintln!(
            "pretrained {} in {:.0} s",
            model.display(),
            t.elapsed().as_secs_f64()
        );
    }

    let tasks: Vec<&str> = std::iter::once(UNSEEN)
        .chain(SEEN.iter().copied())
        .collect();
    let task_list = tasks.join(",");
    let eval = |lora: Option<&Path>, json: &Path| -> Result<serde_json::Value> {
        let mut c = tern();
        c.args(["eval", "--threads", THREADS, "--task", &task_list])
            .arg("--model")
            .arg(&model)
            .arg("--data")
            .arg(&heldout_file)
            .args(["--limit", &heldout.to_string()])
            .arg("--json")
            .arg(json);
        if let Some(l) = lora {
            c.arg("--lora").arg(l);
        }
        // The score goes to the JSON file; the table below shows it.
        super::run(c.stdout(std::process::Stdio::null()))?;
        let text =
            std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))
    };

    eprintln!("demo: scoring the base model on {heldout} held-out examples each of {task_list}");
    let t = Instant::now();
    let before = eval(None, &out.join("before.json"))?;
    let eval_before = t.elapsed().as_secs_f64();

    // The fine-tuning run's folder holds its metrics and loss curve (no
    // intermediate checkpoints: the run is a minute long).
    let adapter = out.join("adapter");
    let run_dir = out.join("finetune");
    let metrics = run_dir.join("metrics.jsonl");
    let loss_curve = run_dir.join("loss.svg");
    eprintln!("demo: LoRA fine-tuning on '{UNSEEN}' ({steps} steps)");
    let t = Instant::now();
    super::run(
        tern()
            .args(["finetune", "--threads", THREADS])
            .arg("--model")
            .arg(&model)
            .arg("--data")
            .arg(corpus.join("finetune.jsonl"))
            .arg("--output-adapter")
            .arg(&adapter)
            .arg("--checkpoint-save-dir")
            .arg(&run_dir)
            .arg("--loss-curve")
            .arg(&loss_curve)
            .arg("--metrics")
            .arg(&metrics)
            .args(["--max-steps", &steps.to_string()])
            .args(FINETUNE),
    )?;
    let finetune = t.elapsed().as_secs_f64();

    eprintln!("demo: scoring again with the adapter, then with it switched off");
    let t = Instant::now();
    let after = eval(Some(&adapter), &out.join("after.json"))?;
    let eval_after = t.elapsed().as_secs_f64();
    // The same base model after fine-tuning, adapter switched off.
    let off = eval(None, &out.join("after-adapter-off.json"))?;

    println!();
    println!(
        "tern demo: LoRA fine-tuning of {MODEL} on '{UNSEEN}', a task it never saw in \
         pretraining ({steps} steps)"
    );
    println!();
    println!(
        "| task | seen in pretraining | held-out n | before | after (adapter on) | \
         after, adapter off |"
    );
    println!("|---|---|---|---|---|---|");
    let mut base_unchanged = true;
    for &task in &tasks {
        let (n, b) = task_score(&before, task)?;
        let (_, a) = task_score(&after, task)?;
        let (_, o) = task_score(&off, task)?;
        base_unchanged &= o == b;
        let seen = if task == UNSEEN { "no" } else { "yes" };
        println!(
            "| {task} | {seen} | {n} | {:.1}% | {:.1}% | {:.1}% |",
            100.0 * b,
            100.0 * a,
            100.0 * o
        );
    }
    println!();
    println!("{}", explanation(base_unchanged));
    println!();
    for (label, score) in [("before", &before), ("after", &after)] {
        println!("sample generations {label} fine-tuning:");
        for &task in &tasks {
            for s in samples(score, task) {
                println!("  {s}");
            }
        }
    }
    println!();
    println!(
        "adapter: {} (`tern generate --model {MODEL} --lora {}` applies it)\n\
         loss curve: {}\nmetrics: {}\nscores: {}, {}, {}",
        adapter.display(),
        adapter.display(),
        loss_curve.display(),
        metrics.display(),
        out.join("before.json").display(),
        out.join("after.json").display(),
        out.join("after-adapter-off.json").display()
    );
    println!(
        "wall time {:.0} s: build {built:.0} s, evaluation {eval_before:.0} + {eval_after:.0} s, \
         fine-tuning {finetune:.0} s (2 threads)",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Why the pretrained tasks fall with the adapter on, printed under the table.
fn explanation(base_unchanged: bool) -> String {
    let seen = SEEN.join("` and `");
    let mut s = format!(
        "Why `{seen}` fall: the adapter was trained on `{UNSEEN}` alone, so it specializes the\n\
         model for that task; while it is switched on, the pretrained tasks get worse.\n\
         A LoRA adapter is a switchable add-on: fine-tuning writes only the adapter and leaves\n\
         {MODEL} untouched, so with the adapter switched off (no --lora)\n\
         the model scores what it scored before (last column). To keep several skills at once,\n\
         fine-tune on a mix of tasks."
    );
    if !base_unchanged {
        s.push_str(&format!(
            "\nwarning: with the adapter off the scores differ from before fine-tuning: was \
             {MODEL} changed during the run?"
        ));
    }
    s
}

/// `(examples, accuracy)` of one task in a `tern eval --json` score.
fn task_score(score: &serde_json::Value, task: &str) -> Result<(u64, f64)> {
    let t = &score["per_task"][task];
    let (Some(correct), Some(total)) = (t["correct"].as_u64(), t["total"].as_u64()) else {
        bail!("the evaluation has no score for task '{task}'");
    };
    Ok((total, correct as f64 / total.max(1) as f64))
}

/// The sample generations of one task, one line each.
fn samples(score: &serde_json::Value, task: &str) -> Vec<String> {
    let empty = Vec::new();
    let list = score["samples"].as_array().unwrap_or(&empty);
    list.iter()
        .filter(|g| g["task"] == task)
        .map(|g| {
            let mark = if g["correct"] == true { "ok " } else { "bad" };
            let cut = if g["stopped"] == true {
                ""
            } else {
                " [no stop]"
            };
            format!(
                "{mark} {} -> {}{cut}   (expected {})",
                g["prompt"].as_str().unwrap_or(""),
                g["generated"].as_str().unwrap_or(""),
                g["expected"].as_str().unwrap_or("")
            )
        })
        .collect()
}
