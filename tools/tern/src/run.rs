//! `tern generate` and `tern logits`.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tern_backend::Backend;
use tern_model::model::ActQuant;
use tern_model::sample::{Sampler, SamplerConfig};
use tern_model::source::ModelSource;
use tern_model::tokenizer::StreamDecoder;
use tern_model::Model;

use crate::backend::{BackendArgs, HeadArgs, Job};

/// The names of the built-in configs (`models/*.json`, embedded in
/// tern-model), comma-separated.
pub fn zoo_names() -> String {
    tern_model::config::ZOO
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Help text of `--model`, with the built-in configs `random:` takes.
pub fn model_help() -> String {
    format!(
        "A .gguf file, a Hugging Face checkpoint folder, or random:NAME[@SEED]: seeded random \
         weights of a built-in config ({}; the bitnet- prefix may be left out, e.g. random:125m)",
        zoo_names()
    )
}

/// Options shared by the commands that run a model.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    #[arg(long, short = 'm', help = model_help())]
    pub model: String,
    /// tokenizer.json to use instead of the one the model carries.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub head: HeadArgs,
    /// Context length for the KV cache (default: what the run needs, at most the model's
    /// maximum).
    #[arg(long, short = 'c', visible_alias = "ctx-size")]
    pub ctx: Option<usize>,
    /// How projections treat activations: `int8` is BitNet's W1.58A8
    /// (per-token int8, the faithful default); `none` multiplies float
    /// activations by the dequantized ternary weights, a diagnostic mode for
    /// comparing logits with runtimes that do not quantize activations
    /// (llama.cpp with F32 weights). The model was not trained that way.
    #[arg(long, value_enum, default_value_t = ActQuantArg::Int8)]
    pub act_quant: ActQuantArg,
    /// A LoRA adapter to apply: a PEFT folder (adapter_model.safetensors +
    /// adapter_config.json) or a llama.cpp adapter .gguf. Repeat to stack.
    #[arg(long)]
    pub lora: Vec<PathBuf>,
}

/// `--act-quant` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActQuantArg {
    /// Per-token absmax int8 (BitNet W1.58A8).
    Int8,
    /// Float activations (diagnostic).
    None,
}

impl From<ActQuantArg> for ActQuant {
    fn from(a: ActQuantArg) -> Self {
        match a {
            ActQuantArg::Int8 => ActQuant::PerTokenInt8,
            ActQuantArg::None => ActQuant::None,
        }
    }
}

impl ModelArgs {
    fn load<B: Backend>(&self, backend: B) -> Result<(ModelSource, Model<B>)> {
        let src = ModelSource::open(&self.model)
            .with_context(|| format!("loading model {}", self.model))?;
        let t = Instant::now();
        let mut model = self.head.load(backend, src.weights(), &self.model)?;
        model.set_activation_quant(self.act_quant.into());
        if let ModelSource::Gguf(g) = &src {
            let re = g.reternarized();
            if !re.is_empty() {
                eprintln!(
                    "note: {} projection(s) (first: {}) hold full-precision values (a merged or \
                     unquantized model); tern ternarized them on load (absmean), which is lossy",
                    re.len(),
                    re[0]
                );
            }
        }
        for path in &self.lora {
            let ad = load_adapter(path, &model.cfg)?;
            tern_lora::attach(&mut model, &ad)?;
            eprintln!(
                "applied LoRA {} (rank {}, alpha {}, {} projections)",
                path.display(),
                ad.cfg.rank,
                ad.cfg.alpha,
                ad.tensors.len()
            );
        }
        eprintln!(
            "loaded {} ({} layers, hidden {}, {} head) in {:.2} s on {}",
            self.model,
            model.cfg.num_hidden_layers,
            model.cfg.hidden_size,
            model.head_precision().name(),
            t.elapsed().as_secs_f64(),
            model.backend.name()
        );
        if self.act_quant == ActQuantArg::None {
            eprintln!(
                "note: --act-quant none: float activations (diagnostic mode, not BitNet's W1.58A8)"
            );
        }
        Ok((src, model))
    }
}

/// Read a PEFT adapter folder or a llama.cpp adapter GGUF.
pub fn load_adapter(path: &Path, cfg: &tern_model::BitNetConfig) -> Result<tern_lora::Adapter> {
    if path.is_dir() {
        Ok(tern_lora::io::load_peft(path, cfg)?)
    } else {
        Ok(tern_lora::io::load_gguf(path, cfg)?)
    }
}

/// Parse `1,2,3`.
pub fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("--tokens: {t:?} is not a token id"))
        })
        .collect()
}

/// The prompt text of `-p TEXT` or `-f FILE` (the file's text without one
/// final newline, as llama.cpp reads it).
fn prompt_text(prompt: &Option<String>, file: &Option<PathBuf>) -> Result<Option<String>> {
    Ok(match (prompt, file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(path)) => {
            let mut text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the prompt file {}", path.display()))?;
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            Some(text)
        }
        (None, None) => None,
    })
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long, short = 'p', conflicts_with_all = ["tokens", "file"])]
    pub prompt: Option<String>,
    /// Read the prompt text from this file (one final newline dropped).
    #[arg(long, short = 'f', conflicts_with = "tokens")]
    pub file: Option<PathBuf>,
    /// The prompt as token ids (`1,2,3`); output is printed as ids too.
    #[arg(long)]
    pub tokens: Option<String>,
    /// Tokens to generate (fewer if the context fills up).
    #[arg(long, short = 'n', visible_alias = "predict", default_value_t = 64)]
    pub n_predict: usize,
    /// Seed of the sampler's random choices (the same seed gives the same text).
    #[arg(long, short = 's', default_value_t = 0)]
    pub seed: u64,
    /// Temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample from the K most likely tokens only (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling: the smallest set of likely tokens whose probabilities reach P (1:
    /// all).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Make the tokens of the last --repeat-last-n less likely: their positive logits are
    /// divided, negative ones multiplied, by this factor (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens --repeat-penalty looks at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
}

pub fn generate(a: &GenerateArgs) -> Result<()> {
    struct J<'a>(&'a GenerateArgs);
    impl Job for J<'_> {
        type Out = ();
        fn run<B: Backend + 'static>(self, backend: B) -> Result<()> {
            generate_on(self.0, backend)
        }
    }
    a.model.backend.run(J(a))
}

fn generate_on<B: Backend>(a: &GenerateArgs, backend: B) -> Result<()> {
    let (src, mut model) = a.model.load(backend)?;
    let max_ctx = model
        .cfg
        .max_position_embeddings
        .min(a.model.ctx.unwrap_or(usize::MAX));
    let text = prompt_text(&a.prompt, &a.file)?;
    let (tokenizer, mut prompt) = match (&text, &a.tokens) {
        (_, Some(t)) => (None, parse_tokens(t)?),
        (Some(p), None) => {
            let tok = src.tokenizer(a.model.tokenizer.as_deref())?;
            let ids = tok.encode(p, true)?;
            (Some(tok), ids)
        }
        (None, None) => bail!("give a prompt with -p TEXT, -f FILE or --tokens 1,2,3"),
    };
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    if prompt.len() >= max_ctx {
        let keep = max_ctx.saturating_sub(1).max(1);
        eprintln!(
            "warning: prompt of {} tokens does not fit the context of {max_ctx}; keeping its last {keep}",
            prompt.len()
        );
        prompt.drain(..prompt.len() - keep);
    }
    let n_predict = a.n_predict.min(max_ctx - prompt.len());
    // The KV cache holds what this run needs, not the model's whole window.
    model.set_context(a.model.ctx.unwrap_or(prompt.len() + n_predict))?;
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repeat_penalty,
        repetition_window: a.repeat_last_n,
        seed: a.seed,
    });
    let eos = model.cfg.eos_token_id;
    let mut out = std::io::stdout().lock();
    let mut stream = tokenizer.as_ref().map(|t| StreamDecoder::new(t, true));
    let mut history = prompt.clone();

    let t0 = Instant::now();
    let logits = model.forward(&prompt, false)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut next = sampler.sample(&logits, &history);
    // Greedy without a penalty needs no logits on the host: the choice is
    // made on the device, a chunk of tokens per round trip.
    let on_device = a.temperature <= 0.0 && (a.repeat_penalty == 1.0 || a.repeat_penalty <= 0.0);
    let stop: Vec<u32> = eos.filter(|_| !a.ignore_eos).into_iter().collect();
    let mut ahead = std::collections::VecDeque::new();
    let t1 = Instant::now();
    let mut generated = 0usize;
    loop {
        generated += 1;
        history.push(next);
        match &mut stream {
            Some(s) => write!(out, "{}", s.push(next)?)?,
            None => write!(out, "{next} ")?,
        }
        out.flush()?;
        if generated >= n_predict || (!a.ignore_eos && Some(next) == eos) {
            break;
        }
        next = match ahead.pop_front() {
            Some(t) => t,
            None if on_device => {
                const CHUNK: usize = 16;
                let want = (n_predict - generated).min(CHUNK);
                ahead.extend(model.decode_greedy(next, want, &stop)?);
                ahead.pop_front().expect("at least one token")
            }
            None => {
                let logits = model.forward(&[next], false)?;
                sampler.sample(&logits, &history)
            }
        };
    }
    if let Some(s) = &mut stream {
        write!(out, "{}", s.finish()?)?;
    }
    writeln!(out)?;
    let decode_s = t1.elapsed().as_secs_f64();
    // The first generated token comes from the prefill logits, so decode
    // timing covers generated - 1 forward passes.
    let decoded = generated.saturating_sub(1);
    eprintln!(
        "prefill: {} tokens in {:.3} s ({:.1} tok/s); decode: {} tokens in {:.3} s ({:.1} tok/s)",
        prompt.len(),
        prefill_s,
        prompt.len() as f64 / prefill_s.max(1e-9),
        decoded,
        decode_s,
        decoded as f64 / decode_s.max(1e-9)
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Token ids (`1,2,3`).
    #[arg(long, conflicts_with_all = ["prompt", "file"])]
    pub tokens: Option<String>,
    /// Text to tokenize (with the model's special tokens, e.g. BOS).
    #[arg(long, short = 'p', conflicts_with = "file")]
    pub prompt: Option<String>,
    /// Read the text to tokenize from this file (one final newline dropped).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Output .npy file: f32 logits of shape [T, vocab].
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Also write the token ids that were run, as a JSON array.
    #[arg(long)]
    pub ids_out: Option<PathBuf>,
}

pub fn logits(a: &LogitsArgs) -> Result<()> {
    struct J<'a>(&'a LogitsArgs);
    impl Job for J<'_> {
        type Out = ();
        fn run<B: Backend + 'static>(self, backend: B) -> Result<()> {
            logits_on(self.0, backend)
        }
    }
    a.model.backend.run(J(a))
}

fn logits_on<B: Backend>(a: &LogitsArgs, backend: B) -> Result<()> {
    let (src, mut model) = a.model.load(backend)?;
    let tokens = match (&a.tokens, prompt_text(&a.prompt, &a.file)?) {
        (Some(t), _) => parse_tokens(t)?,
        (None, Some(p)) => src
            .tokenizer(a.model.tokenizer.as_deref())?
            .encode(&p, true)?,
        (None, None) => bail!("give --tokens 1,2,3, -p TEXT or -f FILE"),
    };
    let vocab = model.cfg.vocab_size;
    model.set_context(a.model.ctx.unwrap_or(tokens.len()))?;
    let logits = model.forward(&tokens, true)?;
    write_npy(&a.out, &[tokens.len(), vocab], &logits)?;
    if let Some(path) = &a.ids_out {
        let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
        std::fs::write(path, format!("[{}]\n", list.join(", ")))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "wrote {} ([{}, {}] f32)",
        a.out.display(),
        tokens.len(),
        vocab
    );
    Ok(())
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    tern_io::npy::write_f32(path, shape, data)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::prompt_text;

    #[test]
    fn a_prompt_file_loses_one_final_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.txt");
        for (text, want) in [
            ("a b\n", "a b"),
            ("a b\r\n", "a b"),
            ("a b\n\n", "a b\n"),
            ("a\nb", "a\nb"),
            ("", ""),
        ] {
            std::fs::write(&path, text).unwrap();
            let got = prompt_text(&None, &Some(path.clone())).unwrap();
            assert_eq!(got.as_deref(), Some(want), "{text:?}");
        }
        // -p is taken as given; no prompt at all is None.
        assert_eq!(
            prompt_text(&Some("x".into()), &None).unwrap().as_deref(),
            Some("x")
        );
        assert_eq!(prompt_text(&None, &None).unwrap(), None);
        let e = prompt_text(&None, &Some(dir.path().join("missing.txt"))).unwrap_err();
        assert!(format!("{e:#}").contains("missing.txt"), "{e:#}");
    }
}
