//! LoRA training against PEFT + transformers (W1.58A8 BitNet), fixtures from
//! tests/fixtures/gen_peft_parity.py: from the same initial adapter and
//! tokens, 5 AdamW steps give the same per-step losses and final adapter
//! (1e-4 relative), with and without gradient accumulation + clipping.

use std::path::{Path, PathBuf};
use tern_backend::Cpu;
use tern_lora::io::load_peft;
use tern_lora::{Adapter, Trainer};
use tern_model::model::ActQuant;
use tern_model::{HfWeights, Model};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn npy_u32(p: &Path) -> Vec<i64> {
    tern_io::npy::read(p)
        .unwrap()
        .data
        .iter()
        .map(|&v| v as i64)
        .collect()
}

/// Max over tensors of max|ours - ref| / max|ref|.
fn rel_diff(ours: &Adapter, reference: &Adapter) -> f64 {
    assert_eq!(ours.tensors.len(), reference.tensors.len());
    let mut worst = 0f64;
    for (key, (ra, rb)) in &reference.tensors {
        let (oa, ob) = &ours.tensors[key];
        for (o, r) in [(oa, ra), (ob, rb)] {
            let scale = r.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
            let d = o
                .iter()
                .zip(r)
                .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
            worst = worst.max(d / scale);
        }
    }
    worst
}

fn run(case: &str) {
    let dir = root().join("peft").join(case);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("losses.json")).unwrap()).unwrap();
    let src = HfWeights::open(&root().join("bitnet").join(case)).unwrap();
    let model = Model::load(Cpu::with_threads(2), &src).unwrap();
    let init = load_peft(&dir.join("init_adapter"), &model.cfg).unwrap();
    let (batch, seq) = (2usize, 16usize);
    let tokens: Vec<u32> = npy_u32(&dir.join("tokens.npy"))
        .iter()
        .map(|&v| v as u32)
        .collect();
    let labels = npy_u32(&dir.join("labels.npy"));
    // HF shifts: position t predicts labels[t + 1]; -100 and the last position are ignored.
    let targets: Vec<u32> = (0..batch * seq)
        .map(|i| {
            let t = i % seq;
            if t + 1 == seq || labels[i + 1] < 0 {
                u32::MAX
            } else {
                labels[i + 1] as u32
            }
        })
        .collect();
    let n = targets.iter().filter(|&&t| t != u32::MAX).count();
    assert_eq!(n as u64, meta["data"]["num_targets"].as_u64().unwrap());
    let opt = &meta["optimizer"];
    let lr = opt["lr"].as_f64().unwrap() as f32;
    let wd = opt["weight_decay"].as_f64().unwrap() as f32;
    let eps = opt["eps"].as_f64().unwrap() as f32;

    for (variant, final_dir) in [
        ("plain", "final_adapter"),
        ("accum2_clip", "final_adapter_accum2_clip"),
    ] {
        let v = &meta["variants"][variant];
        let want_loss: Vec<f64> = v["loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let want_norm: Vec<f64> = v["grad_norm"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let mut tr = Trainer::new(&model, &init, ActQuant::PerTokenInt8).unwrap();
        let scale = 1.0 / n as f32;
        for step in 0..want_loss.len() {
            let stats = if variant == "plain" {
                tr.forward_backward(&tokens, &targets, batch, seq, Some(scale))
                    .unwrap()
            } else {
                let mut total = tern_lora::StepStats {
                    loss_sum: 0.0,
                    n_tokens: 0,
                };
                for row in 0..batch {
                    let r = row * seq..(row + 1) * seq;
                    let s = tr
                        .forward_backward(&tokens[r.clone()], &targets[r], 1, seq, Some(scale))
                        .unwrap();
                    total.loss_sum += s.loss_sum;
                    total.n_tokens += s.n_tokens;
                }
                total
            };
            let loss = stats.mean();
            let rel = (loss - want_loss[step]).abs() / want_loss[step].abs();
            assert!(
                rel <= 1e-4,
                "{case} {variant} step {}: loss {loss} vs PEFT {}",
                step + 1,
                want_loss[step]
            );
            let norm = if variant == "plain" {
                tr.grad_norm().unwrap()
            } else {
                tr.clip_grad_norm(v["max_norm"].as_f64().unwrap() as f32)
                    .unwrap()
            } as f64;
            let rel_n = (norm - want_norm[step]).abs() / want_norm[step];
            assert!(
                rel_n <= 1e-4,
                "{case} {variant} step {}: grad norm {norm} vs {}",
                step + 1,
                want_norm[step]
            );
            tr.optimizer_step(lr, 0.9, 0.999, eps, wd);
        }
        let ours = tr.adapter().unwrap();
        let reference = load_peft(&dir.join(final_dir), &model.cfg).unwrap();
        let d = rel_diff(&ours, &reference);
        let moved = rel_diff(&init, &reference);
        eprintln!(
            "{case} {variant}: final adapter rel diff {d:.2e} (training moved it {moved:.2})"
        );
        assert!(d <= 1e-4, "{case} {variant}: final adapter differs by {d}");
        assert!(
            moved > 0.1,
            "{case} {variant}: training barely moved the adapter"
        );
    }
}

#[test]
fn five_adamw_steps_match_peft_relu2_gqa() {
    run("relu2_gqa");
}

#[test]
fn five_adamw_steps_match_peft_silu_mha_tied() {
    run("silu_mha_tied");
}
