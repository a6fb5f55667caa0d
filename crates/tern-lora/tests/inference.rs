//! The inference path with an attached adapter (`Model::add_lora`, as
//! `tern generate --lora` uses it) agrees with the trainer's forward.

use std::path::PathBuf;
use tern_backend::Cpu;
use tern_lora::{attach, Adapter, LoraConfig, Trainer};
use tern_model::model::ActQuant;
use tern_model::{HfWeights, Model, Proj};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/bitnet")
        .join(name)
}

fn mean_ce(logits: &[f32], vocab: usize, targets: &[u32]) -> f64 {
    let mut sum = 0.0;
    let mut n = 0;
    for (row, &t) in logits.chunks(vocab).zip(targets) {
        if t == u32::MAX {
            continue;
        }
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        sum += lse - row[t as usize] as f64;
        n += 1;
    }
    sum / n as f64
}

#[test]
fn attached_adapter_gives_the_trainers_loss() {
    for name in ["relu2_gqa", "silu_mha_tied"] {
        let src = HfWeights::open(&fixture(name)).unwrap();
        let mut model = Model::load(Cpu::with_threads(2), &src).unwrap();
        let cfg = model.cfg.clone();
        let mut ad = Adapter::init(
            &cfg,
            LoraConfig {
                rank: 2,
                alpha: 4.0,
                dropout: 0.0,
                targets: vec![Proj::Q, Proj::O, Proj::Up, Proj::Down],
            },
            4,
        )
        .unwrap();
        for (i, (_, (_, b))) in ad.tensors.iter_mut().enumerate() {
            b.iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v = (((i + 3) * (j + 7)) % 13) as f32 * 0.02 - 0.12);
        }
        let toks: Vec<u32> = (0..12)
            .map(|i| (i * 7 + 3) % cfg.vocab_size as u32)
            .collect();
        let targets: Vec<u32> = (0..12)
            .map(|i| if i + 1 < 12 { toks[i + 1] } else { u32::MAX })
            .collect();
        let base = model.forward(&toks, true).unwrap();
        let trainer_loss = {
            let mut t = Trainer::new(&model, &ad, ActQuant::PerTokenInt8).unwrap();
            t.forward_backward(&toks, &targets, 1, 12, None)
                .unwrap()
                .mean()
        };
        model.reset();
        attach(&mut model, &ad).unwrap();
        let with = model.forward(&toks, true).unwrap();
        let loss = mean_ce(&with, cfg.vocab_size, &targets);
        assert!(
            (loss - trainer_loss).abs() < 1e-5,
            "{name}: inference loss {loss} vs trainer {trainer_loss}"
        );
        let moved = base
            .iter()
            .zip(&with)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            moved > 1e-3,
            "{name}: the adapter changed nothing ({moved})"
        );
        model.clear_lora();
        assert_eq!(model.forward(&toks, true).unwrap(), base);
    }
}
