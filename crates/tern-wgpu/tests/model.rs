//! Whole models on wgpu against the CPU backend, the embedding and head in
//! f32 and in f16 on both: logits of tiny models (prefill and KV-cache
//! decode) within 1e-3, the fused decode path equal to the plain one bit for
//! bit, greedy decoding on the device equal to the host loop, and 20 LoRA
//! training steps whose losses follow the CPU's within 1e-3 relative. Device failures come
//! back as errors. Without an adapter each test says why it was skipped (fails under CI=true).

use tern_backend::{Backend, BackendError, Cpu};
use tern_lora::{Adapter, LoraConfig, Trainer};
use tern_model::model::ActQuant;
use tern_model::random::RandomWeights;
use tern_model::sample::argmax;
use tern_model::{BitNetConfig, HeadPrecision, Model};
use tern_wgpu::{Wgpu, WgpuOptions};

fn gpu() -> Option<Wgpu> {
    tern_wgpu::test_device(WgpuOptions::default())
}

/// relu² + GQA + untied head, and SiLU + MHA + tied embeddings.
fn configs() -> Vec<BitNetConfig> {
    [
        r#"{"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 90,
            "hidden_act": "relu2", "tie_word_embeddings": false,
            "max_position_embeddings": 64}"#,
        r#"{"hidden_size": 96, "intermediate_size": 130, "num_hidden_layers": 2,
            "num_attention_heads": 3, "num_key_value_heads": 3, "vocab_size": 77,
            "hidden_act": "silu", "tie_word_embeddings": true,
            "max_position_embeddings": 64}"#,
    ]
    .iter()
    .map(|j| BitNetConfig::from_json_str("tiny", j).expect("config"))
    .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const HEADS: [HeadPrecision; 2] = [HeadPrecision::F32, HeadPrecision::F16];

#[test]
fn the_default_head_is_f16_on_wgpu() {
    let Some(b) = gpu() else { return };
    let cfg = configs().remove(0);
    let m = Model::load(b, &RandomWeights::new(cfg, 5)).expect("wgpu model");
    assert_eq!(m.head_precision(), HeadPrecision::F16);
}

#[test]
fn tiny_model_logits_match_the_cpu() {
    let Some(_) = gpu() else { return };
    for (ci, cfg) in configs().into_iter().enumerate() {
        for head in HEADS {
            let ci = format!("{ci} ({} head)", head.name());
            let w = RandomWeights::new(cfg.clone(), 5);
            let mut cpu = Model::load_with_head(Cpu::with_threads(2), &w, head).expect("cpu model");
            let mut gpu =
                Model::load_with_head(gpu().expect("adapter"), &w, head).expect("wgpu model");
            let prompt: Vec<u32> = (0..11)
                .map(|i| (i * 7 + 3) % cfg.vocab_size as u32)
                .collect();
            cpu.set_context(20).expect("context");
            gpu.set_context(20).expect("context");
            let (a, b) = (
                cpu.forward(&prompt, true).unwrap(),
                gpu.forward(&prompt, true).unwrap(),
            );
            let d = max_diff(&a, &b);
            assert!(d <= 1e-3, "config {}: prefill logits differ by {d}", ci);
            for t in [5u32, 17, 2] {
                let (a, b) = (
                    cpu.forward(&[t], false).unwrap(),
                    gpu.forward(&[t], false).unwrap(),
                );
                let d = max_diff(&a, &b);
                assert!(d <= 1e-3, "config {}: decode logits differ by {d}", ci);
            }
            // the float-activation diagnostic mode as well
            cpu.set_activation_quant(ActQuant::None);
            gpu.set_activation_quant(ActQuant::None);
            cpu.reset();
            gpu.reset();
            let (a, b) = (
                cpu.forward(&prompt, true).unwrap(),
                gpu.forward(&prompt, true).unwrap(),
            );
            let d = max_diff(&a, &b);
            assert!(d <= 1e-3, "config {}: float-mode logits differ by {d}", ci);
        }
    }
}

/// The fused block steps against the plain op sequence on the same device:
/// the same logits bit for bit, over a short prompt (taken by the fused
/// kernels, at most 8 rows) and decode steps.
#[test]
fn fused_and_unfused_inference_give_the_same_logits() {
    let Some(_) = gpu() else { return };
    for (ci, cfg) in configs().into_iter().enumerate() {
        let w = RandomWeights::new(cfg.clone(), 9);
        let mut runs = Vec::new();
        for fused in [true, false] {
            let mut m = Model::load(gpu().expect("adapter"), &w).expect("wgpu model");
            m.set_fused(fused);
            m.set_context(16).expect("context");
            let mut logits = m.forward(&[3, 1, 4, 1, 5], true).unwrap();
            for t in [9u32, 2, 6] {
                logits.extend(m.forward(&[t], false).unwrap());
            }
            runs.push(logits);
        }
        let same = runs[0]
            .iter()
            .zip(&runs[1])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        let d = max_diff(&runs[0], &runs[1]);
        assert!(
            same,
            "config {ci}: fused and unfused logits differ (max {d})"
        );
    }
}

/// Greedy decoding on the device (`Model::decode_greedy`) picks the tokens
/// the host loop (download the logits, `sample::argmax`) picks, stops at a
/// stop token with the cache rolled back to it, and continues from there as
/// the host loop does; on the CPU and on wgpu.
#[test]
fn greedy_decoding_on_the_device_follows_the_host_loop() {
    let Some(_) = gpu() else { return };
    let cfg = configs().remove(1);
    let w = RandomWeights::new(cfg, 11);
    check_greedy(Model::load(Cpu::with_threads(2), &w).expect("cpu model"));
    check_greedy(Model::load(gpu().expect("adapter"), &w).expect("wgpu model"));
}

fn check_greedy<B: Backend>(mut m: Model<B>) {
    let prompt = [3u32, 1, 4, 1, 5];
    let n = 40;
    m.set_context(64).expect("context");
    let mut host = vec![argmax(&m.forward(&prompt, false).unwrap())];
    for i in 0..n {
        host.push(argmax(&m.forward(&[host[i]], false).unwrap()));
    }
    m.reset();
    m.forward(&prompt, false).unwrap();
    let got = m.decode_greedy(host[0], n, &[]).unwrap();
    assert_eq!(got, host[1..], "{}: greedy tokens", m.backend.name());
    // stop at the token of step 20 (its first occurrence)
    let stop = host[20];
    let at = host[1..].iter().position(|&t| t == stop).expect("present") + 1;
    m.reset();
    m.forward(&prompt, false).unwrap();
    let got = m.decode_greedy(host[0], n, &[stop]).unwrap();
    assert_eq!(got, host[1..=at], "{}: stopped tokens", m.backend.name());
    assert_eq!(m.cached_tokens(), prompt.len() + at);
    let next = argmax(&m.forward(&[host[at]], false).unwrap());
    assert_eq!(next, host[at + 1], "{}: after the stop", m.backend.name());
}

#[test]
fn lora_training_follows_the_cpu_loss_curve() {
    let Some(_) = gpu() else { return };
    for (ci, cfg) in configs().into_iter().enumerate() {
        for head in HEADS {
            let ci = format!("{ci} ({} head)", head.name());
            let w = RandomWeights::new(cfg.clone(), 9);
            let cpu = Model::load_with_head(Cpu::with_threads(2), &w, head).expect("cpu model");
            let gpu = Model::load_with_head(gpu().expect("adapter"), &w, head).expect("wgpu model");
            let ad = Adapter::init(
                &cfg,
                LoraConfig {
                    rank: 4,
                    alpha: 8.0,
                    dropout: 0.1,
                    targets: LoraConfig::parse_targets("all").expect("targets"),
                },
                3,
            )
            .expect("adapter");
            let (batch, seq) = (2, 16);
            let toks: Vec<u32> = (0..batch * seq + 1)
                .map(|i| ((i * 13 + 5) % cfg.vocab_size) as u32)
                .collect();
            let (x, mut y) = (toks[..batch * seq].to_vec(), toks[1..].to_vec());
            y[3] = u32::MAX; // a masked position
            let a = train(&cpu, &ad, &x, &y, batch, seq);
            let b = train(&gpu, &ad, &x, &y, batch, seq);
            assert!(
                a[19] < a[0] - 0.05,
                "config {}: the CPU run must learn: {a:?}",
                ci
            );
            for (i, (l1, l2)) in a.iter().zip(&b).enumerate() {
                let rel = (l1 - l2).abs() / l1.abs();
                assert!(
                    rel <= 1e-3,
                    "config {}: step {i}: cpu loss {l1}, wgpu loss {l2} (relative {rel:e})",
                    ci
                );
            }
        }
    }
}

fn train<B: Backend>(
    m: &Model<B>,
    ad: &Adapter,
    x: &[u32],
    y: &[u32],
    batch: usize,
    seq: usize,
) -> Vec<f64> {
    let mut tr = Trainer::new(m, ad, ActQuant::PerTokenInt8).expect("trainer");
    tr.set_dropout_state(17, 0);
    let n = y.iter().filter(|&&t| t != u32::MAX).count() as f32;
    (0..20)
        .map(|_| {
            let st = tr
                .forward_backward(x, y, batch, seq, Some(1.0 / n))
                .expect("step");
            tr.clip_grad_norm(1.0).expect("clip");
            tr.optimizer_step(1e-2, 0.9, 0.999, 1e-8, 0.01);
            st.mean()
        })
        .collect()
}

#[test]
fn oversized_buffers_are_errors() {
    let Some(b) = gpu() else { return };
    let limit = b.report().max_buffer;
    match b.zeros((limit / 4 + 16) as usize) {
        Err(BackendError::Limit { what, .. }) => assert!(what.contains("buffer"), "{what}"),
        Err(e) => panic!("expected a limit error, got {e}"),
        Ok(_) => panic!("a buffer past max_buffer_size was allocated"),
    }
}

#[test]
fn a_lost_device_is_an_error_not_a_hang() {
    let Some(b) = gpu() else { return };
    let x = b.upload(&[1.0, 2.0, 3.0]).expect("upload");
    let mut y = b.zeros(3).expect("zeros");
    b.simulate_device_loss();
    b.axpy(2.0, &x, &mut y);
    match b.download(&y) {
        Err(e @ BackendError::DeviceLost { .. }) => {
            assert!(e.to_string().contains("device lost"), "{e}")
        }
        Err(e) => panic!("expected device lost, got {e}"),
        Ok(v) => panic!("download after device loss returned {v:?}"),
    }
    // every later call reports it too, without panicking
    assert!(b.upload(&[1.0]).is_err() || b.download(&y).is_err());
}

#[test]
fn an_op_out_of_scratch_memory_reports_it_on_download() {
    let Some(b) = gpu() else { return };
    let (out, cols, rows) = (70, 300, 33);
    let codes: Vec<i8> = (0..out * cols).map(|i| (i % 3) as i8 - 1).collect();
    let w = b
        .upload_ternary(&tern_backend::TernaryCodes {
            rows: out,
            cols,
            codes,
            scale: 0.5,
        })
        .expect("upload");
    let x = b.upload(&vec![0.25; rows * cols]).expect("upload");
    let mut y = b.zeros(rows * out).expect("zeros");
    b.simulate_scratch_oom();
    // the tiled product needs scratch for the quantized activations
    b.ternary_matmul(&w, &x, &mut y, rows);
    match b.download(&y) {
        Err(e @ BackendError::OutOfMemory { .. }) => {
            assert!(e.to_string().contains("scratch"), "{e}")
        }
        Err(e) => panic!("expected out of memory, got {e}"),
        Ok(_) => panic!("the op ran without its scratch buffer"),
    }
}

#[test]
fn an_adapter_name_that_matches_nothing_is_an_error_naming_the_adapters() {
    let opts = WgpuOptions {
        adapter: Some("no adapter is called this".into()),
        ..Default::default()
    };
    match Wgpu::with_options(&opts) {
        Err(tern_wgpu::WgpuError::NoMatch { wanted, available }) => {
            assert_eq!(wanted, "no adapter is called this");
            assert!(!available.is_empty());
            let e = Wgpu::with_options(&opts).err().expect("error").to_string();
            assert!(e.contains(&available[0]), "{e}");
        }
        // a machine without any adapter
        Err(e @ tern_wgpu::WgpuError::NoAdapter) => {
            assert!(e.to_string().contains("lavapipe"), "{e}")
        }
        Err(e) => panic!("expected no match, got {e}"),
        Ok(_) => panic!("an adapter matched a made-up name"),
    }
}
