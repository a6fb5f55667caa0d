//! Load a model and continue a prompt greedily.
//!
//! ```sh
//! cargo run --release -p tern-model --example generate -- random:bitnet-125m
//! cargo run --release -p tern-model --example generate -- model.gguf "The river"
//! ```
//! The model is a GGUF, a Hugging Face folder or `random:NAME[@SEED]`. With a
//! tokenizer (GGUF metadata or `tokenizer.json` beside the folder) the prompt
//! is text; random weights have none, so the prompt is token ids 1 2 3.

use tern_backend::Cpu;
use tern_model::sample::argmax;
use tern_model::source::ModelSource;
use tern_model::Model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let spec = args.next().unwrap_or_else(|| "random:bitnet-125m".into());
    let prompt = args.next().unwrap_or_else(|| "The".into());
    let src = ModelSource::open(&spec)?;
    let tok = src.tokenizer(None).ok();
    let mut model = Model::load(Cpu::new(), src.weights())?;
    let mut tokens = match &tok {
        Some(t) => t.encode(&prompt, true)?,
        None => vec![1, 2, 3],
    };
    let n_prompt = tokens.len();
    let mut logits = model.forward(&tokens, false)?;
    for _ in 0..16 {
        if tokens.len() >= model.cfg.max_position_embeddings {
            break;
        }
        let next = argmax(&logits);
        tokens.push(next);
        logits = model.forward(&[next], false)?;
    }
    match &tok {
        Some(t) => println!("{}", t.decode(&tokens, true)?),
        None => println!("{:?} -> {:?}", &tokens[..n_prompt], &tokens[n_prompt..]),
    }
    Ok(())
}
