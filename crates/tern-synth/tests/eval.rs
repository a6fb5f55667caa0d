//! Exact-match evaluation: the grading rule on hand-made generations, and a
//! whole run with a tiny random model whose vocabulary is the corpus
//! tokenizer's.

use tern_backend::Cpu;
use tern_model::random::RandomWeights;
use tern_model::{BitNetConfig, Model};
use tern_synth::eval::{grade, prompt_ids, score, stop_id};
use tern_synth::vocab::{EOS, IM_END, PAD};
use tern_synth::{
    exact_match, exact_match_as, examples, tokenizer, Example, Format, Split, TaskKind,
};

fn example() -> Example {
    Example {
        task: TaskKind::Add,
        prompt: "add 4 7 3 + 8 9 =".into(),
        answer: "5 6 2".into(),
    }
}

#[test]
fn grading_needs_the_exact_tokens_and_the_stop() {
    let tok = tokenizer().unwrap();
    let ex = example();
    let ids = |s: &str| tok.encode(s, false).unwrap();
    let stop = stop_id(&tok, Format::Chat).unwrap();
    assert_eq!(Some(stop), tok.token_to_id(IM_END));
    assert_eq!(stop_id(&tok, Format::Text).unwrap(), tok.eos_id().unwrap());
    let with_stop = |s: &str| {
        let mut v = ids(s);
        v.push(stop);
        v
    };
    let g = grade(&tok, &ex, &with_stop("5 6 2"), stop).unwrap();
    assert!(g.correct && g.stopped);
    assert_eq!(g.generated, "5 6 2");
    // Right digits but no stop token: not an answer.
    let g = grade(&tok, &ex, &ids("5 6 2"), stop).unwrap();
    assert!(!g.correct && !g.stopped);
    // Wrong, longer, shorter, or padded with a special token.
    for s in ["5 6 3", "5 6 2 2", "5 6", ""] {
        assert!(
            !grade(&tok, &ex, &with_stop(s), stop).unwrap().correct,
            "{s}"
        );
    }
    let mut padded = ids("5 6");
    padded.push(tok.token_to_id(PAD).unwrap());
    padded.extend(ids("2"));
    padded.push(stop);
    let g = grade(&tok, &ex, &padded, stop).unwrap();
    assert!(!g.correct, "{}", g.generated);
    // The other layout's stop token does not end a chat answer.
    let mut eos_end = ids("5 6 2");
    eos_end.push(tok.token_to_id(EOS).unwrap());
    assert!(!grade(&tok, &ex, &eos_end, stop).unwrap().correct);
}

#[test]
fn an_oracle_scores_everything_and_misses_count() {
    let tok = tokenizer().unwrap();
    let mut exs = examples(TaskKind::Sort, Split::HeldOut, 6, 2).unwrap();
    exs.extend(examples(TaskKind::Flip, Split::HeldOut, 4, 2).unwrap());
    let stop = stop_id(&tok, Format::Chat).unwrap();
    let oracle: Vec<Vec<u32>> = exs
        .iter()
        .map(|e| {
            let mut v = tok.encode(&e.answer, false).unwrap();
            v.push(stop);
            v
        })
        .collect();
    let s = score(&tok, &exs, &oracle, stop).unwrap();
    assert_eq!((s.correct, s.total, s.accuracy), (10, 10, 1.0));
    assert_eq!(s.per_task[&TaskKind::Sort].correct, 6);
    assert_eq!(s.per_task[&TaskKind::Flip].correct, 4);
    // Break every other generation: drop the stop, or one answer token.
    let mut half = oracle.clone();
    for (i, g) in half.iter_mut().enumerate() {
        if i % 2 == 1 {
            g.remove(if i % 4 == 1 { g.len() - 1 } else { 0 });
        }
    }
    let s = score(&tok, &exs, &half, stop).unwrap();
    assert_eq!((s.correct, s.total), (5, 10));
    assert_eq!(s.accuracy, 0.5);
    assert_eq!(
        s.per_task[&TaskKind::Sort],
        tern_synth::TaskScore {
            correct: 3,
            total: 6
        }
    );
    // Three samples per task (two tasks), in example order.
    assert_eq!(s.samples.len(), 6);
    assert_eq!(s.samples[3].task, TaskKind::Flip);
    assert_eq!(s.samples[3].prompt, exs[6].prompt);
    assert!(s.samples[0].correct && !s.samples[1].correct);
    assert!(score(&tok, &exs, &half[1..], stop).is_err());
}

#[test]
fn prompts_are_laid_out_as_in_training() {
    let tok = tokenizer().unwrap();
    let ex = example();
    let bos = tok.bos_id().unwrap();
    let text = prompt_ids(&tok, Format::Text, &ex).unwrap();
    let mut want = vec![bos];
    want.extend(tok.encode(&ex.prompt, false).unwrap());
    assert_eq!(text, want);
    let chat = prompt_ids(&tok, Format::Chat, &ex).unwrap();
    let chat_text = tok.decode(&chat, false).unwrap();
    assert_eq!(
        chat_text,
        "<s> <|im_start|> user add 4 7 3 + 8 9 = <|im_end|> <|im_start|> assistant"
    );
}

fn tiny_model(vocab: usize) -> Model<Cpu> {
    let cfg = BitNetConfig::from_json_str(
        "tiny synth",
        &format!(
            r#"{{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": {vocab},
                "hidden_act": "relu2", "tie_word_embeddings": true,
                "max_position_embeddings": 64}}"#
        ),
    )
    .unwrap();
    Model::load(Cpu::with_threads(2), &RandomWeights::new(cfg, 5)).unwrap()
}

#[test]
fn a_random_model_runs_end_to_end() {
    let tok = tokenizer().unwrap();
    let mut model = tiny_model(tok.vocab_size());
    let mut exs = Vec::new();
    for t in [TaskKind::Add, TaskKind::Reverse, TaskKind::Flip] {
        exs.extend(examples(t, Split::HeldOut, 4, 0).unwrap());
    }
    for format in [Format::Chat, Format::Text] {
        for max_new in [1, 3, 6] {
            let s = exact_match_as(&mut model, &tok, &exs, format, max_new).unwrap();
            assert_eq!(s.total, exs.len());
            assert!((0.0..=1.0).contains(&s.accuracy));
            assert!(s.correct <= s.total);
            assert_eq!(s.per_task.len(), 3);
            assert_eq!(s.per_task.values().map(|t| t.total).sum::<usize>(), s.total);
            // Two per task for three tasks.
            assert_eq!(s.samples.len(), 6);
            assert_eq!(s.samples[2].task, TaskKind::Reverse);
            for g in &s.samples {
                let n = tok.encode(&g.generated, false).unwrap().len() + usize::from(g.stopped);
                assert!(n <= max_new, "{n} tokens generated with max_new {max_new}");
                if !g.stopped {
                    assert_eq!(n, max_new);
                    assert!(!g.correct);
                }
            }
            // One token cannot hold an answer and its stop token.
            if max_new == 1 {
                assert_eq!(s.correct, 0);
            }
        }
    }
    // Greedy decoding is deterministic, and the chat default is exact_match.
    let a = exact_match(&mut model, &tok, &exs, 6).unwrap();
    let b = exact_match_as(&mut model, &tok, &exs, Format::Chat, 6).unwrap();
    assert_eq!(a, b);
    assert!(exact_match(&mut model, &tok, &exs, 0).is_err());
    let shown = a.to_string();
    assert!(shown.starts_with("exact match "), "{shown}");
}
