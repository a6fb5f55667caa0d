//! How far the f16 embedding and head move the logits from the f32 ones:
//! the same model loaded twice on one backend (`--head f32` and `f16`),
//! a prompt run with every row's logits (the tiled head product), then
//! greedy decoding on the f32 model's choices, both models fed the same
//! tokens one at a time (the decode matvec). Prints max |Δlogit|, the
//! largest |logit| and how many rows' argmax agree, as
//! docs/benchmarks/wgpu-h200.md records them.
//!
//! `cargo run --release -p tern-wgpu --example head_precision -- random:125m wgpu 64 32`
//! (model, `cpu` or `wgpu`, prompt tokens, decoded tokens; a fifth argument
//! `float` runs the projections on float activations, `ActQuant::None`,
//! which shows how much of the change the int8 quantizers amplify).

use tern_backend::{Backend, Cpu};
use tern_model::model::ActQuant;
use tern_model::sample::argmax;
use tern_model::source::ModelSource;
use tern_model::{HeadPrecision, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().map_or("random:125m", String::as_str);
    let backend = args.get(1).map_or("wgpu", String::as_str);
    let prompt: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let decode: usize = args.get(3).map_or(Ok(32), |s| s.parse())?;
    let float = args.get(4).is_some_and(|s| s == "float");
    let src = ModelSource::open(model)?;
    match backend {
        "cpu" => compare(src.weights(), Cpu::new, prompt, decode, float),
        "wgpu" => compare(
            src.weights(),
            || tern_wgpu::Wgpu::new().expect("a wgpu adapter"),
            prompt,
            decode,
            float,
        ),
        other => Err(format!("backend {other:?}: cpu or wgpu").into()),
    }
}

/// `(max |a - b|, max |a|, rows whose argmax agree)` over rows of `vocab`.
fn diff(a: &[f32], b: &[f32], vocab: usize) -> (f32, f32, usize) {
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let m = a.iter().map(|x| x.abs()).fold(0f32, f32::max);
    let same = a
        .chunks(vocab)
        .zip(b.chunks(vocab))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    (d, m, same)
}

fn compare<B: Backend>(
    src: &dyn tern_model::WeightSource,
    backend: impl Fn() -> B,
    prompt: usize,
    decode: usize,
    float: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut f32m = Model::load_with_head(backend(), src, HeadPrecision::F32)?;
    let mut f16m = Model::load_with_head(backend(), src, HeadPrecision::F16)?;
    if float {
        f32m.set_activation_quant(ActQuant::None);
        f16m.set_activation_quant(ActQuant::None);
    }
    let vocab = f32m.cfg.vocab_size;
    let ctx = prompt + decode + 1;
    f32m.set_context(ctx)?;
    f16m.set_context(ctx)?;
    // deterministic prompt ids away from the special ids
    let toks: Vec<u32> = (0..prompt)
        .map(|i| 3 + ((i as u64 * 2_654_435_761 + 17) % (vocab as u64 - 3)) as u32)
        .collect();
    let (a, b) = (f32m.forward(&toks, true)?, f16m.forward(&toks, true)?);
    let (d, m, same) = diff(&a, &b, vocab);
    println!(
        "{}{} prefill {prompt} rows: max |dlogit| {d:.3e} (max |logit| {m:.3}), argmax equal in {same}/{prompt}",
        f32m.backend.name(),
        if float { " (float activations)" } else { "" }
    );
    let mut next = argmax(&a[(prompt - 1) * vocab..]);
    let (mut dmax, mut mmax, mut agree) = (0f32, 0f32, 0);
    for _ in 0..decode {
        let (a, b) = (f32m.forward(&[next], false)?, f16m.forward(&[next], false)?);
        let (d, m, same) = diff(&a, &b, vocab);
        (dmax, mmax, agree) = (dmax.max(d), mmax.max(m), agree + same);
        next = argmax(&a);
    }
    println!(
        "{}{} decode {decode} tokens: max |dlogit| {dmax:.3e} (max |logit| {mmax:.3}), argmax equal in {agree}/{decode}",
        f32m.backend.name(),
        if float { " (float activations)" } else { "" }
    );
    Ok(())
}
