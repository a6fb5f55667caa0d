//! The written files through tern's own data pipeline (what `tern finetune`
//! and pretraining read): the evaluation prompt is exactly the training
//! prefix, and assistant-only loss trains exactly the answer and its stop.

use tern_lora::data::{DataFormat, DataOptions, Dataset, IGNORE};
use tern_model::tokenizer::Tokenizer;
use tern_synth::corpus::{FINETUNE_FILE, PRETRAIN_FILE, TOKENIZER_FILE};
use tern_synth::eval::{prompt_ids, stop_id};
use tern_synth::{write_corpus, Corpus, CorpusOptions, Format, MAX_SEQUENCE_TOKENS};

fn options() -> CorpusOptions {
    CorpusOptions {
        seed: 3,
        pretrain_per_task: 40,
        finetune_per_task: 120,
        heldout_per_task: 10,
        ..CorpusOptions::default()
    }
}

#[test]
fn finetune_file_trains_exactly_the_answers() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options();
    let summary = write_corpus(dir.path(), &opts).unwrap();
    let corpus = Corpus::generate(&opts).unwrap();
    // The tokenizer file is what tern loads with --tokenizer.
    let tok = Tokenizer::from_file(summary.path(TOKENIZER_FILE)).unwrap();
    assert_eq!(tok.vocab_size(), summary.vocab_size);
    let data = Dataset::load(
        &summary.path(FINETUNE_FILE),
        &tok,
        &DataOptions {
            ctx: MAX_SEQUENCE_TOKENS,
            assistant_loss_only: true,
            shuffle: false,
            ..DataOptions::default()
        },
    )
    .unwrap();
    assert_eq!(data.format(), DataFormat::Chat);
    assert_eq!(data.stats().truncated, 0);
    assert_eq!(data.train_len(), corpus.finetune.len());
    assert_eq!(data.stats().tokens, summary.finetune_tokens);
    let stop = stop_id(&tok, Format::Chat).unwrap();
    for (ex, seq) in corpus.finetune.iter().zip(data.train()) {
        let prompt = prompt_ids(&tok, Format::Chat, ex).unwrap();
        assert_eq!(&seq.inputs[..prompt.len()], &prompt[..], "{}", ex.prompt);
        let mut want = tok.encode(&ex.answer, false).unwrap();
        want.push(stop);
        // Targets start right after the prompt and are the answer + stop.
        let first = seq.targets.iter().position(|&t| t != IGNORE).unwrap();
        assert_eq!(first, prompt.len() - 1, "{}", ex.prompt);
        let trained: Vec<u32> = seq
            .targets
            .iter()
            .copied()
            .filter(|&t| t != IGNORE)
            .collect();
        assert_eq!(trained, want, "{}", ex.prompt);
    }
}

#[test]
fn pretrain_file_packs_prompts_as_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options();
    let summary = write_corpus(dir.path(), &opts).unwrap();
    let corpus = Corpus::generate(&opts).unwrap();
    let tok = Tokenizer::from_file(summary.path(TOKENIZER_FILE)).unwrap();
    // One long window holds the whole token stream in file order.
    let data = Dataset::load(
        &summary.path(PRETRAIN_FILE),
        &tok,
        &DataOptions {
            ctx: summary.pretrain_tokens,
            shuffle: false,
            ..DataOptions::default()
        },
    )
    .unwrap();
    assert_eq!(data.format(), DataFormat::Text);
    assert_eq!(data.stats().tokens, summary.pretrain_tokens);
    assert_eq!(data.train_len(), 1);
    let stream = &data.train()[0].inputs;
    let eos = tok.eos_id().unwrap();
    let mut at = 0;
    for (ex, format) in &corpus.pretrain {
        // Each document: BOS, the prompt exactly as evaluation feeds it,
        // the answer, the layout's stop token (chat), then EOS.
        let prompt = prompt_ids(&tok, *format, ex).unwrap();
        assert_eq!(&stream[at..at + prompt.len()], &prompt[..], "{}", ex.prompt);
        let mut rest = tok.encode(&ex.answer, false).unwrap();
        rest.push(stop_id(&tok, *format).unwrap());
        if *format == Format::Chat {
            rest.push(eos);
        }
        let end = at + prompt.len() + rest.len();
        if end > stream.len() {
            // The last EOS is only a target (the inputs stop one short).
            assert_eq!(end, stream.len() + 1);
            assert_eq!(&stream[at + prompt.len()..], &rest[..rest.len() - 1]);
            at = end;
            break;
        }
        assert_eq!(&stream[at + prompt.len()..end], &rest[..], "{}", ex.prompt);
        at = end;
    }
    assert_eq!(at, summary.pretrain_tokens);
}
