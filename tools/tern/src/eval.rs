//! `tern eval`: exact-match accuracy of a model (and optional LoRA adapters)
//! on held-out `{"task", "prompt", "answer"}` examples, by greedy decoding
//! (`tern_synth::exact_match_as`).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Instant;
use tern_backend::Backend;
use tern_model::source::ModelSource;
use tern_synth::{exact_match_as, read_examples, Example, Format, TaskKind};

use crate::backend::{BackendArgs, HeadArgs, Job};

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[arg(long, short = 'm', help = crate::run::model_help())]
    pub model: String,
    /// Held-out examples: JSON lines `{"task", "prompt", "answer"}` (a
    /// tern-synth heldout.jsonl).
    #[arg(long)]
    pub data: PathBuf,
    /// tokenizer.json to use instead of the one the model carries.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// LoRA adapter (PEFT folder or adapter .gguf) to apply; repeat to stack.
    #[arg(long)]
    pub lora: Vec<PathBuf>,
    /// Score only these tasks (comma-separated names, e.g. `first,max`).
    #[arg(long, value_delimiter = ',')]
    pub task: Vec<String>,
    /// Score at most this many examples per task (the first ones in the file).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Prompt layout: chat (ChatML turns, stop at <|im_end|>) or text
    /// (`prompt answer`, stop at the end-of-sequence token).
    #[arg(long, default_value = "chat")]
    pub format: String,
    /// Most tokens generated per example, the stop token included.
    #[arg(long, default_value_t = 16)]
    pub max_new: usize,
    /// Also write the score (per task, with sample generations) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub head: HeadArgs,
}

pub fn run(a: &EvalArgs) -> Result<()> {
    let format = match a.format.as_str() {
        "chat" => Format::Chat,
        "text" => Format::Text,
        other => bail!("--format {other}: expected chat or text"),
    };
    let tasks = a
        .task
        .iter()
        .map(|t| t.parse::<TaskKind>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut examples = read_examples(&a.data)?;
    if !tasks.is_empty() {
        examples.retain(|e| tasks.contains(&e.task));
    }
    if let Some(limit) = a.limit {
        let mut taken = std::collections::BTreeMap::<TaskKind, usize>::new();
        examples.retain(|e| {
            let n = taken.entry(e.task).or_default();
            *n += 1;
            *n <= limit
        });
    }
    if examples.is_empty() {
        bail!("{}: no examples to score", a.data.display());
    }

    struct J<'a>(&'a EvalArgs, Vec<Example>, Format);
    impl Job for J<'_> {
        type Out = ();
        fn run<B: Backend + 'static>(self, backend: B) -> Result<()> {
            score_on(self.0, &self.1, self.2, backend)
        }
    }
    a.backend.run(J(a, examples, format))
}

fn score_on<B: Backend>(
    a: &EvalArgs,
    examples: &[Example],
    format: Format,
    backend: B,
) -> Result<()> {
    let src = ModelSource::open(&a.model).with_context(|| format!("loading model {}", a.model))?;
    let tok = src.tokenizer(a.tokenizer.as_deref())?;
    let mut model = a.head.load(backend, src.weights(), &a.model)?;
    for path in &a.lora {
        let ad = crate::run::load_adapter(path, &model.cfg)?;
        tern_lora::attach(&mut model, &ad)?;
        eprintln!("applied LoRA {}", path.display());
    }
    let t = Instant::now();
    let score = exact_match_as(&mut model, &tok, examples, format, a.max_new)?;
    eprintln!(
        "scored {} examples in {:.1} s",
        score.total,
        t.elapsed().as_secs_f64()
    );
    println!("{score}");
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&score)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
