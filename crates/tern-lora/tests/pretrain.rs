//! Quantization-aware training from scratch (`tern_lora::pretrain`).
//!
//! 1. STE gradients against finite differences. Under the straight-through
//!    estimator the gradient of a latent weight is, by definition,
//!    `dL/dW_q`: the derivative of the loss with respect to the dequantized
//!    weight `W_q = codes * scale` the forward used, the quantizers acting as
//!    the identity in the backward. So the check freezes every projection at
//!    its current `W_q`, treats it as a dense f32 weight of a plain float
//!    model (float activations: the trainer's `ActQuant::None` mode, in which
//!    the forward is smooth), and differentiates that model's loss by central
//!    finite differences in f64, with an independent f64 forward written
//!    here. Embedding, norms and head are smooth parameters and get plain
//!    finite differences through the same reference.
//! 2. A few hundred W1.58A8 steps on a repetitive token stream must cut the
//!    loss substantially.
//! 3. The trained model, exported as ternary GGUF and loaded back, must
//!    reproduce the trainer's own logits bit for bit.

use tern_backend::Cpu;
use tern_lora::pretrain::{LatentWeights, PretrainSchedule, Pretrainer, TwoStage};
use tern_lora::schedule::{Schedule, ScheduleKind};
use tern_model::export::{export, ExportOptions};
use tern_model::model::ActQuant;
use tern_model::{BitNetConfig, GgufWeights, HiddenAct, Model, Proj, WeightSource};
use tern_tensor::GgmlType;

fn config(act: &str, tied: bool, nkv: usize) -> BitNetConfig {
    BitNetConfig::from_json_str(
        "pretrain-test",
        &format!(
            r#"{{"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": {nkv}, "vocab_size": 19,
                "hidden_act": "{act}", "tie_word_embeddings": {tied},
                "rope_theta": 10000.0, "max_position_embeddings": 64}}"#
        ),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------
// f64 reference forward with dense projection weights and float activations

/// Dense model in f64: every tensor of [`LatentWeights`], with the
/// projections replaced by `W_q`.
#[derive(Clone)]
struct Dense {
    embed: Vec<f64>,
    norm: Vec<f64>,
    head: Option<Vec<f64>>,
    /// `[layer][4 norms]`
    norms: Vec<[Vec<f64>; 4]>,
    /// `[layer][7 projections]`, `[out, in]`
    proj: Vec<[Vec<f64>; 7]>,
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The dense model the trainer's float-activation forward computes: `W_q`
/// from each projection's absmean ternarization, everything else as is.
fn dense_of(w: &LatentWeights) -> Dense {
    Dense {
        embed: f64s(&w.embed),
        norm: f64s(&w.norm),
        head: w.lm_head.as_deref().map(f64s),
        norms: w
            .layers
            .iter()
            .map(|l| std::array::from_fn(|k| f64s(&l.norms[k])))
            .collect(),
        proj: (0..w.layers.len())
            .map(|l| {
                std::array::from_fn(|p| {
                    let t = w.ternary(l, Proj::ALL[p]).unwrap();
                    let mut out = Vec::new();
                    let mut codes = vec![0i8; t.cols()];
                    for r in 0..t.rows() {
                        t.row_codes(r, &mut codes);
                        out.extend(codes.iter().map(|&c| c as f64 * t.scale() as f64));
                    }
                    out
                })
            })
            .collect(),
    }
}

fn rmsnorm(x: &[f64], w: &[f64], dim: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks(dim).zip(y.chunks_mut(dim)) {
        let ms = xr.iter().map(|v| v * v).sum::<f64>() / dim as f64;
        let r = 1.0 / (ms + eps).sqrt();
        for i in 0..dim {
            yr[i] = xr[i] * r * w[i];
        }
    }
    y
}

/// `x [rows, in] · Wᵀ` with `W [out, in]`.
fn linear(x: &[f64], w: &[f64], inp: usize, out: usize) -> Vec<f64> {
    let rows = x.len() / inp;
    let mut y = vec![0.0; rows * out];
    for r in 0..rows {
        for o in 0..out {
            y[r * out + o] = (0..inp).map(|i| x[r * inp + i] * w[o * inp + i]).sum();
        }
    }
    y
}

/// NeoX rotation of `x [rows, heads, hd]` at positions `pos`.
fn rope(x: &mut [f64], pos: &[usize], heads: usize, hd: usize, theta: f64) {
    let half = hd / 2;
    for (r, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            let base = (r * heads + h) * hd;
            for i in 0..half {
                let ang = p as f64 * theta.powf(-2.0 * i as f64 / hd as f64);
                let (s, c) = ang.sin_cos();
                let (a, b) = (x[base + i], x[base + i + half]);
                x[base + i] = a * c - b * s;
                x[base + i + half] = b * c + a * s;
            }
        }
    }
}

/// Sum over unmasked rows of the cross-entropy of the dense model.
fn ref_loss(
    cfg: &BitNetConfig,
    d: &Dense,
    toks: &[u32],
    tgt: &[u32],
    batch: usize,
    seq: usize,
) -> f64 {
    let (h, f, vocab) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let eps = cfg.rms_norm_eps as f64;
    let rows = batch * seq;
    let pos: Vec<usize> = (0..rows).map(|r| r % seq).collect();
    let mut x: Vec<f64> = toks
        .iter()
        .flat_map(|&t| d.embed[t as usize * h..(t as usize + 1) * h].to_vec())
        .collect();
    for l in 0..cfg.num_hidden_layers {
        let (nw, pw) = (&d.norms[l], &d.proj[l]);
        let n1 = rmsnorm(&x, &nw[0], h, eps);
        let mut q = linear(&n1, &pw[0], h, qd);
        let mut k = linear(&n1, &pw[1], h, kvd);
        let v = linear(&n1, &pw[2], h, kvd);
        rope(&mut q, &pos, nh, hd, cfg.rope_theta as f64);
        rope(&mut k, &pos, nkv, hd, cfg.rope_theta as f64);
        let mut att = vec![0.0; rows * qd];
        let scale = 1.0 / (hd as f64).sqrt();
        for b in 0..batch {
            for t in 0..seq {
                let r = b * seq + t;
                for head in 0..nh {
                    let kvh = head / (nh / nkv);
                    let qv = &q[r * qd + head * hd..r * qd + (head + 1) * hd];
                    let s: Vec<f64> = (0..=t)
                        .map(|j| {
                            let kr = (b * seq + j) * kvd + kvh * hd;
                            (0..hd).map(|i| qv[i] * k[kr + i]).sum::<f64>() * scale
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for (j, sj) in s.iter().enumerate() {
                        let p = (sj - m).exp() / z;
                        let vr = (b * seq + j) * kvd + kvh * hd;
                        for i in 0..hd {
                            att[r * qd + head * hd + i] += p * v[vr + i];
                        }
                    }
                }
            }
        }
        let att_n = rmsnorm(&att, &nw[1], qd, eps);
        let o = linear(&att_n, &pw[3], qd, h);
        for (xi, oi) in x.iter_mut().zip(&o) {
            *xi += oi;
        }
        let n2 = rmsnorm(&x, &nw[2], h, eps);
        let g = linear(&n2, &pw[4], h, f);
        let u = linear(&n2, &pw[5], h, f);
        let a: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| match cfg.hidden_act {
                HiddenAct::Relu2 => g.max(0.0).powi(2) * u,
                HiddenAct::Silu => g / (1.0 + (-g).exp()) * u,
            })
            .collect();
        let a_n = rmsnorm(&a, &nw[3], f, eps);
        let dn = linear(&a_n, &pw[6], f, h);
        for (xi, di) in x.iter_mut().zip(&dn) {
            *xi += di;
        }
    }
    let xn = rmsnorm(&x, &d.norm, h, eps);
    let logits = linear(&xn, d.head.as_ref().unwrap_or(&d.embed), h, vocab);
    let mut loss = 0.0;
    for (r, &t) in tgt.iter().enumerate() {
        if t == u32::MAX {
            continue;
        }
        let row = &logits[r * vocab..(r + 1) * vocab];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        loss += lse - row[t as usize];
    }
    loss
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
    fn unit(&mut self) -> f64 {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 * 2.0 - 1.0
    }
}

/// Worst `max|g - fd| / max|fd|` of one tensor; panics above `tol`.
fn compare(what: &str, got: &[f32], fd: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), fd.len(), "{what}: length");
    let scale = fd.iter().map(|v| v.abs()).fold(0.0, f64::max);
    assert!(
        scale > 1e-6,
        "{what}: gradient is ~0 ({scale:e}); the check would be vacuous"
    );
    let err = got
        .iter()
        .zip(fd)
        .map(|(&g, &f)| (g as f64 - f).abs())
        .fold(0.0, f64::max);
    let ratio = err / scale;
    assert!(
        ratio <= tol,
        "{what}: analytic vs finite-difference gradient differ by {err:e} (max |fd| {scale:e}, ratio {ratio:e} > {tol:e})"
    );
    ratio
}

/// Central differences of `ref_loss` over every element of one tensor of
/// `d`, selected by `pick`.
fn fd_tensor(
    cfg: &BitNetConfig,
    d: &Dense,
    pick: &dyn Fn(&mut Dense) -> &mut Vec<f64>,
    toks: &[u32],
    tgt: &[u32],
    batch: usize,
    seq: usize,
) -> Vec<f64> {
    let mut d = d.clone();
    let n = pick(&mut d).len();
    let eps = 1e-4;
    (0..n)
        .map(|i| {
            let x0 = pick(&mut d)[i];
            pick(&mut d)[i] = x0 + eps;
            let fp = ref_loss(cfg, &d, toks, tgt, batch, seq);
            pick(&mut d)[i] = x0 - eps;
            let fm = ref_loss(cfg, &d, toks, tgt, batch, seq);
            pick(&mut d)[i] = x0;
            (fp - fm) / (2.0 * eps)
        })
        .collect()
}

fn fd_check(act: &str, tied: bool, nkv: usize) {
    let cfg = config(act, tied, nkv);
    let mut w = LatentWeights::init(&cfg, 7, 0.5);
    // Norms away from 1 so a norm bug shows.
    let mut rng = Lcg(3);
    for layer in &mut w.layers {
        for n in &mut layer.norms {
            n.iter_mut()
                .for_each(|v| *v = 1.0 + 0.3 * rng.unit() as f32);
        }
    }
    w.norm
        .iter_mut()
        .for_each(|v| *v = 1.0 + 0.3 * rng.unit() as f32);
    let (batch, seq) = (2, 5);
    let toks: Vec<u32> = (0..batch * seq).map(|_| (rng.next() % 19) as u32).collect();
    let mut tgt: Vec<u32> = (0..batch * seq).map(|_| (rng.next() % 19) as u32).collect();
    tgt[3] = u32::MAX;

    let mut t = Pretrainer::new(Cpu::with_threads(2), &w, ActQuant::None).unwrap();
    let stats = t
        .forward_backward(&toks, &tgt, batch, seq, Some(1.0))
        .unwrap();
    let g = t.gradients().unwrap();
    let d = dense_of(&w);
    let want = ref_loss(&cfg, &d, &toks, &tgt, batch, seq);
    assert!(
        (stats.loss_sum - want).abs() <= 1e-5 * want.abs(),
        "{act}: trainer loss {} vs f64 reference {want}",
        stats.loss_sum
    );

    let tol = 1e-4;
    let mut worst: Vec<(String, f64)> = Vec::new();
    let mut check = |what: String, got: &[f32], pick: &dyn Fn(&mut Dense) -> &mut Vec<f64>| {
        let fd = fd_tensor(&cfg, &d, pick, &toks, &tgt, batch, seq);
        let r = compare(
            &format!("{act} tied={tied} nkv={nkv}: {what}"),
            got,
            &fd,
            tol,
        );
        worst.push((what, r));
    };
    check("embed_tokens".into(), &g.embed, &|d| &mut d.embed);
    check("norm".into(), &g.norm, &|d| &mut d.norm);
    if let Some(head) = &g.lm_head {
        check("lm_head".into(), head, &|d| d.head.as_mut().unwrap());
    }
    for l in 0..cfg.num_hidden_layers {
        for k in 0..4 {
            check(
                format!("layers.{l}.norm{k}"),
                &g.layers[l].norms[k],
                &move |d| &mut d.norms[l][k],
            );
        }
        for (p, proj) in Proj::ALL.iter().enumerate() {
            check(
                format!("layers.{l}.{}", proj.hf_name()),
                &g.layers[l].proj[p],
                &move |d| &mut d.proj[l][p],
            );
        }
    }
    let (name, r) = worst
        .iter()
        .cloned()
        .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
    println!("{act} tied={tied} nkv={nkv}: worst |g - fd| / max|fd| = {r:.2e} ({name})");
}

#[test]
fn ste_gradients_relu2_gqa_untied() {
    fd_check("relu2", false, 2);
}

#[test]
fn ste_gradients_silu_mha_tied() {
    fd_check("silu", true, 4);
}

#[test]
fn ste_gradients_silu_gqa_untied() {
    fd_check("silu", false, 1);
}

/// With int8 activations the weight gradient multiplies the fake-quantized
/// input, so it differs from the float-activation gradient by the
/// quantization noise: clearly different, yet close.
#[test]
fn int8_weight_gradients_use_quantized_inputs() {
    let cfg = config("relu2", false, 2);
    let w = LatentWeights::init(&cfg, 5, 0.5);
    let toks: Vec<u32> = (0..12).map(|i| (i * 7 % 19) as u32).collect();
    let tgt: Vec<u32> = (0..12).map(|i| ((i * 7 + 3) % 19) as u32).collect();
    let grads = |aq| {
        let mut t = Pretrainer::new(Cpu::with_threads(2), &w, aq).unwrap();
        t.forward_backward(&toks, &tgt, 2, 6, Some(1.0)).unwrap();
        t.gradients().unwrap()
    };
    let (gi, gf) = (grads(ActQuant::PerTokenInt8), grads(ActQuant::None));
    for (p, proj) in Proj::ALL.iter().enumerate() {
        let (a, b) = (&gi.layers[1].proj[p], &gf.layers[1].proj[p]);
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max);
        assert!(
            diff > 0.0,
            "{}: int8 gradient equals the float one",
            proj.hf_name()
        );
        assert!(
            diff < 0.2 * scale,
            "{}: int8 gradient moved by {diff} (max |g| {scale})",
            proj.hf_name()
        );
    }
}

// ---------------------------------------------------------------------------
// learning

/// A repetitive stream: runs of a short cycle, each sequence at a random
/// phase, so every next token is determined by the previous one.
fn cycle_batch(rng: &mut Lcg, batch: usize, seq: usize) -> (Vec<u32>, Vec<u32>) {
    let cycle = [3u32, 9, 1, 14, 7, 7, 2, 11];
    let (mut toks, mut tgt) = (Vec::new(), Vec::new());
    for _ in 0..batch {
        let start = rng.next() as usize % cycle.len();
        for i in 0..seq {
            toks.push(cycle[(start + i) % cycle.len()]);
            tgt.push(cycle[(start + i + 1) % cycle.len()]);
        }
    }
    (toks, tgt)
}

fn train(t: &mut Pretrainer<Cpu>, sched: &PretrainSchedule, steps: u64) -> (f64, f64) {
    let mut rng = Lcg(42);
    let (batch, seq) = (4, 16);
    let (mut first, mut last) = (0.0, 0.0);
    for s in 0..steps {
        let (toks, tgt) = cycle_batch(&mut rng, batch, seq);
        let st = t
            .forward_backward(&toks, &tgt, batch, seq, Some(1.0 / (batch * seq) as f32))
            .unwrap();
        t.clip_grad_norm(1.0).unwrap();
        let hp = sched.at(s);
        t.optimizer_step(hp.lr, 0.9, 0.95, 1e-8, hp.weight_decay);
        if s == 0 {
            first = st.mean();
        }
        last = st.mean();
    }
    (first, last)
}

#[test]
fn qat_learns_a_repetitive_stream() {
    let cfg = BitNetConfig::from_json_str(
        "pretrain-learn",
        r#"{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 16,
            "hidden_act": "relu2", "tie_word_embeddings": true,
            "max_position_embeddings": 64}"#,
    )
    .unwrap();
    let w = LatentWeights::init(&cfg, 1, 0.02);
    let mut t = Pretrainer::new(Cpu::with_threads(2), &w, ActQuant::PerTokenInt8).unwrap();
    let steps = 300;
    let sched = PretrainSchedule::Standard {
        schedule: Schedule {
            kind: ScheduleKind::Cosine,
            base_lr: 4e-3,
            warmup: 20,
            total: steps,
        },
        weight_decay: 0.01,
    };
    let start = std::time::Instant::now();
    let (first, last) = train(&mut t, &sched, steps);
    println!(
        "QAT on a cycle of 8: loss {first:.3} -> {last:.3} in {steps} steps ({:.1?})",
        start.elapsed()
    );
    assert!(
        (first - (16f64).ln()).abs() < 0.3,
        "initial loss {first} is not ~ln 16"
    );
    assert!(last < 0.25 * first, "loss only went from {first} to {last}");
    assert_eq!(t.steps(), steps as u32);
}

#[test]
fn two_stage_schedule_drops_lr_and_weight_decay() {
    let s = TwoStage::new(1e-2, 10, 100, 0.3, 0.1);
    assert_eq!(s.at(0).lr, 0.0);
    assert!((s.at(10).lr - 1e-2).abs() < 1e-9);
    let before = s.at(49);
    let after = s.at(50);
    assert_eq!(before.weight_decay, 0.1);
    assert_eq!(after.weight_decay, 0.0);
    assert!(
        after.lr < 0.35 * before.lr,
        "no drop at mid-training: {before:?} -> {after:?}"
    );
    assert!(s.at(99).lr < after.lr && s.at(100).lr == 0.0);
}

// ---------------------------------------------------------------------------
// export

#[test]
fn exported_gguf_reproduces_the_trainers_logits() {
    for (act, tied) in [("relu2", false), ("silu", true)] {
        // TQ2_0 / TQ1_0 blocks are 256 values: every `in` dim a multiple.
        let cfg = BitNetConfig::from_json_str(
            "pretrain-export",
            &format!(
                r#"{{"hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 19,
                    "hidden_act": "{act}", "tie_word_embeddings": {tied},
                    "max_position_embeddings": 64}}"#
            ),
        )
        .unwrap();
        let w = LatentWeights::init(&cfg, 9, 0.02);
        let mut t = Pretrainer::new(Cpu::with_threads(2), &w, ActQuant::PerTokenInt8).unwrap();
        let sched = PretrainSchedule::TwoStage(TwoStage::new(5e-3, 2, 6, 0.3, 0.1));
        train(&mut t, &sched, 6);
        let toks: Vec<u32> = (0..11).map(|i| (i * 5 % 19) as u32).collect();
        let want = t.logits(&toks, 1, toks.len()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        let weights = t.weights().unwrap();
        assert_ne!(weights, w, "training did not change the weights");
        for ty in [GgmlType::TQ2_0, GgmlType::TQ1_0] {
            export(
                &weights,
                &path,
                &ExportOptions::new(ty, GgmlType::F32),
                &mut (),
            )
            .unwrap();
            let src = GgufWeights::open(&path).unwrap();
            let mut m = Model::load(Cpu::with_threads(2), &src).unwrap();
            let got = m.forward(&toks, true).unwrap();
            assert_eq!(got.len(), want.len());
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                got == want,
                "{act} {ty}: exported logits differ from the trainer's by {diff}"
            );
        }
    }
}
