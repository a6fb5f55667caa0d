//! LoRA gradients through a whole tiny model against central finite
//! differences of the loss.
//!
//! The check runs in the float-activation mode, where the forward is a smooth
//! function of the adapter, so the analytic gradient must equal the derivative.
//! (With int8 activations the forward is piecewise constant in places and the
//! straight-through gradient is, by definition, not its derivative.)

use std::path::PathBuf;
use tern_backend::Cpu;
use tern_lora::{Adapter, LoraConfig, Trainer};
use tern_model::model::ActQuant;
use tern_model::{HfWeights, Model, Proj};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/bitnet")
        .join(name)
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 1_000_000) as f32 / 1_000_000.0 * 2.0 - 1.0
    }
}

fn loss(model: &Model<Cpu>, ad: &Adapter, toks: &[u32], tgt: &[u32], b: usize, s: usize) -> f64 {
    let mut t = Trainer::new(model, ad, ActQuant::None).unwrap();
    // A training pass (zero gradient scale) so that dropout, if any, is on,
    // with the masks of pass 0 every time.
    t.set_dropout_state(99, 0);
    t.forward_backward(toks, tgt, b, s, Some(0.0))
        .unwrap()
        .mean()
}

fn check(name: &str) {
    check_with(name, 0.0);
}

fn check_with(name: &str, dropout: f32) {
    let src = HfWeights::open(&fixture(name)).unwrap();
    let model = Model::load(Cpu::with_threads(2), &src).unwrap();
    let cfg = &model.cfg;
    let lcfg = LoraConfig {
        rank: 3,
        alpha: 6.0,
        dropout,
        targets: Proj::ALL.to_vec(),
    };
    let mut ad = Adapter::init(cfg, lcfg, 11).unwrap();
    // B non-zero so that every A receives a gradient too.
    let mut rng = Lcg(5);
    for (_, (_, b)) in ad.tensors.iter_mut() {
        b.iter_mut().for_each(|v| *v = 0.05 * rng.unit());
    }
    let (batch, seq) = (2, 9);
    let toks: Vec<u32> = (0..batch * seq)
        .map(|_| (rng.next() % cfg.vocab_size as u64) as u32)
        .collect();
    let mut tgt: Vec<u32> = (0..batch * seq)
        .map(|i| {
            if (i + 1) % seq == 0 {
                u32::MAX
            } else {
                toks[i + 1]
            }
        })
        .collect();
    tgt[3] = u32::MAX;
    let n = tgt.iter().filter(|&&t| t != u32::MAX).count();

    let mut tr = Trainer::new(&model, &ad, ActQuant::None).unwrap();
    tr.set_dropout_state(99, 0);
    tr.forward_backward(&toks, &tgt, batch, seq, Some(1.0 / n as f32))
        .unwrap();
    let grads = tr.gradients().unwrap();

    let eps = 2e-3f32;
    let mut checked = 0;
    let mut worst = 0f64;
    for layer in 0..cfg.num_hidden_layers {
        for p in Proj::ALL {
            let key = (layer, p);
            for which in 0..2 {
                let len = if which == 0 {
                    ad.tensors[&key].0.len()
                } else {
                    ad.tensors[&key].1.len()
                };
                for _ in 0..2 {
                    let i = (rng.next() as usize) % len;
                    let g = if which == 0 {
                        grads.tensors[&key].0[i]
                    } else {
                        grads.tensors[&key].1[i]
                    } as f64;
                    let mut plus = ad.clone();
                    let mut minus = ad.clone();
                    let get = |a: &mut Adapter| -> *mut f32 {
                        let e = a.tensors.get_mut(&key).unwrap();
                        if which == 0 {
                            &mut e.0[i]
                        } else {
                            &mut e.1[i]
                        }
                    };
                    unsafe {
                        *get(&mut plus) += eps;
                        *get(&mut minus) -= eps;
                    }
                    let fd = (loss(&model, &plus, &toks, &tgt, batch, seq)
                        - loss(&model, &minus, &toks, &tgt, batch, seq))
                        / (2.0 * eps as f64);
                    let err = (fd - g).abs();
                    let tol = 2e-4 + 5e-3 * g.abs().max(fd.abs());
                    worst = worst.max(err / tol);
                    assert!(
                        err <= tol,
                        "{name} layer {layer} {p:?} {} [{i}]: analytic {g:.6e} vs finite difference {fd:.6e}",
                        if which == 0 { "A" } else { "B" }
                    );
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{name} (dropout {dropout}): {checked} adapter entries within tolerance (worst {worst:.2} of budget)");
}

#[test]
fn lora_gradients_match_finite_differences_relu2() {
    check("relu2_gqa");
}

#[test]
fn lora_gradients_match_finite_differences_silu() {
    check("silu_mha_tied");
}

#[test]
fn lora_gradients_match_finite_differences_with_dropout() {
    check_with("relu2_gqa", 0.3);
}
