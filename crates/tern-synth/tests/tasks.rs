//! Generated examples: determinism, disjoint splits, tokenization, length,
//! and answers recomputed here by code independent of the generators.

use std::collections::HashSet;

use tern_synth::lexicon::{Lexicon, DET_PLURAL, DET_SINGULAR};
use tern_synth::vocab::{IM_END, IM_START, UNK};
use tern_synth::{
    examples, read_examples, tokenizer, Corpus, CorpusOptions, Example, Format, Split, TaskKind,
    MAX_SEQUENCE_TOKENS,
};

fn small_options() -> CorpusOptions {
    CorpusOptions {
        seed: 11,
        pretrain_per_task: 300,
        finetune_per_task: 300,
        heldout_per_task: 60,
        ..CorpusOptions::default()
    }
}

#[test]
fn same_seed_same_examples_other_seed_other_examples() {
    for t in TaskKind::ALL {
        for split in [Split::Train, Split::HeldOut] {
            let a = examples(t, split, 50, 3).unwrap();
            let b = examples(t, split, 50, 3).unwrap();
            let c = examples(t, split, 50, 4).unwrap();
            assert_eq!(a, b, "{t} {split:?}");
            assert_ne!(a, c, "{t} {split:?}: the seed changes nothing");
            // A longer run starts with the shorter one.
            let longer = examples(t, split, 80, 3).unwrap();
            assert_eq!(&longer[..50], &a[..], "{t} {split:?}");
        }
    }
    let x = Corpus::generate(&small_options()).unwrap();
    let y = Corpus::generate(&small_options()).unwrap();
    assert_eq!(x.pretrain, y.pretrain);
    assert_eq!(x.finetune, y.finetune);
    assert_eq!(x.heldout, y.heldout);
}

#[test]
fn written_files_are_byte_identical_for_a_seed() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let opts = small_options();
    tern_synth::write_corpus(a.path(), &opts).unwrap();
    tern_synth::write_corpus(b.path(), &opts).unwrap();
    for f in [
        "tokenizer.json",
        "pretrain.jsonl",
        "finetune.jsonl",
        "heldout.jsonl",
        "corpus.json",
    ] {
        let x = std::fs::read(a.path().join(f)).unwrap();
        let y = std::fs::read(b.path().join(f)).unwrap();
        assert!(!x.is_empty(), "{f} is empty");
        assert!(x == y, "{f} differs between two runs");
    }
}

#[test]
fn examples_are_distinct_and_in_their_split() {
    for t in TaskKind::ALL {
        for split in [Split::Train, Split::HeldOut] {
            let ex = examples(t, split, 400, 0).unwrap();
            let prompts: HashSet<&str> = ex.iter().map(|e| e.prompt.as_str()).collect();
            assert_eq!(prompts.len(), ex.len(), "{t}: duplicate prompts");
            assert!(ex
                .iter()
                .all(|e| Split::of(&e.prompt) == split && e.task == t));
        }
    }
}

#[test]
fn held_out_prompts_never_appear_in_training() {
    for t in TaskKind::ALL {
        let held: HashSet<String> = examples(t, Split::HeldOut, 300, 5)
            .unwrap()
            .into_iter()
            .map(|e| e.prompt)
            .collect();
        // Training sets from several seeds, none may contain a held-out prompt.
        for seed in [0, 5, 99] {
            for e in examples(t, Split::Train, 3000, seed).unwrap() {
                assert!(!held.contains(&e.prompt), "{t}: '{}' in both", e.prompt);
            }
        }
    }
}

/// The prompt of a pretraining document as written in the file.
fn doc_prompt(text: &str) -> String {
    let head = format!("{IM_START}user\n");
    if let Some(rest) = text.strip_prefix(&head) {
        let end = rest.find(IM_END).expect("chat document has <|im_end|>");
        return rest[..end].to_string();
    }
    let eq = text.find(" =").expect("text document has ' ='");
    text[..eq + 2].to_string()
}

#[test]
fn written_training_files_hold_no_held_out_example() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_options();
    let summary = tern_synth::write_corpus(dir.path(), &opts).unwrap();
    let heldout = read_examples(&summary.path("heldout.jsonl")).unwrap();
    assert_eq!(heldout.len(), opts.tasks().len() * opts.heldout_per_task);
    assert_eq!(heldout, Corpus::generate(&opts).unwrap().heldout);
    let held: HashSet<&str> = heldout.iter().map(|e| e.prompt.as_str()).collect();
    let read = |f: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let pretrain = read("pretrain.jsonl");
    assert_eq!(
        pretrain.len(),
        opts.pretrain_tasks.len() * opts.pretrain_per_task
    );
    let mut tasks_seen = HashSet::new();
    for rec in &pretrain {
        let p = doc_prompt(rec["text"].as_str().unwrap());
        assert!(
            !held.contains(p.as_str()),
            "held-out prompt '{p}' in pretraining"
        );
        let marker = p.split(' ').next().unwrap().to_string();
        assert_ne!(
            marker,
            TaskKind::UNSEEN.name(),
            "the unseen task is in pretraining"
        );
        tasks_seen.insert(marker);
    }
    assert_eq!(tasks_seen.len(), opts.pretrain_tasks.len());
    let finetune = read("finetune.jsonl");
    assert_eq!(finetune.len(), opts.finetune_per_task);
    for rec in &finetune {
        let m = rec["messages"].as_array().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0]["role"], "user");
        assert_eq!(m[1]["role"], "assistant");
        let p = m[0]["content"].as_str().unwrap();
        assert!(p.starts_with("first "), "{p}");
        assert!(!held.contains(p), "held-out prompt '{p}' in fine-tuning");
    }
    // The chat share is exact.
    let chat = pretrain
        .iter()
        .filter(|r| r["text"].as_str().unwrap().starts_with(IM_START))
        .count();
    assert_eq!(chat, summary.pretrain_chat_documents);
    assert_eq!(chat, pretrain.len() / 2);
}

#[test]
fn options_are_checked() {
    let overlap = CorpusOptions {
        finetune_tasks: vec![TaskKind::Add],
        ..small_options()
    };
    let e = Corpus::generate(&overlap).unwrap_err().to_string();
    assert!(e.contains("'add'"), "{e}");
    let frac = CorpusOptions {
        chat_fraction: 1.5,
        ..small_options()
    };
    assert!(Corpus::generate(&frac).is_err());
    assert!("nope".parse::<TaskKind>().is_err());
    for t in TaskKind::ALL {
        assert_eq!(t.name().parse::<TaskKind>().unwrap(), t);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, format!("\"{}\"", t.name()));
    }
}

fn all_examples(n: usize) -> Vec<Example> {
    let mut out = Vec::new();
    for t in TaskKind::ALL {
        for split in [Split::Train, Split::HeldOut] {
            out.extend(examples(t, split, n, 1).unwrap());
        }
    }
    out
}

#[test]
fn every_text_round_trips_through_the_tokenizer() {
    let tok = tokenizer().unwrap();
    let unk = tok.token_to_id(UNK).unwrap();
    let ids_of = |s: &str| tok.encode(s, false).unwrap();
    let (im_start, im_end) = (
        tok.token_to_id(IM_START).unwrap(),
        tok.token_to_id(IM_END).unwrap(),
    );
    let (user, assistant) = (
        tok.token_to_id("user").unwrap(),
        tok.token_to_id("assistant").unwrap(),
    );
    let mut longest = 0;
    for e in all_examples(300) {
        for s in [
            e.prompt.clone(),
            e.answer.clone(),
            Format::Text.full_text(&e),
        ] {
            let ids = ids_of(&s);
            assert!(!ids.contains(&unk), "unknown token in '{s}'");
            assert_eq!(tok.decode(&ids, false).unwrap(), s);
        }
        // The chat layout is exactly the markers around the same tokens.
        let (p, a) = (ids_of(&e.prompt), ids_of(&e.answer));
        let mut want = vec![im_start, user];
        want.extend(&p);
        want.extend([im_end, im_start, assistant]);
        want.extend(&a);
        want.push(im_end);
        assert_eq!(ids_of(&Format::Chat.full_text(&e)), want);
        // BOS + chat conversation and BOS + text + EOS both fit.
        longest = longest.max(want.len() + 1).max(p.len() + a.len() + 2);
    }
    assert!(
        longest <= MAX_SEQUENCE_TOKENS,
        "longest sequence {longest} tokens"
    );
}

/// Parse a space-separated number.
fn num(tokens: &[&str]) -> i64 {
    assert!(!tokens.is_empty());
    assert!(tokens
        .iter()
        .all(|t| t.len() == 1 && t.as_bytes()[0].is_ascii_digit()));
    tokens.concat().parse().unwrap()
}

/// Check one Ternish sentence's agreement; returns (subject plural,
/// subject noun singular, verb stem, rest after the verb).
fn parse_sentence<'a>(lex: &Lexicon, w: &[&'a str]) -> (bool, String, String, Vec<&'a str>) {
    let noun = |s: &str| -> Option<(String, bool)> {
        lex.nouns.iter().find_map(|n| {
            if n.singular == s {
                Some((n.singular.clone(), false))
            } else if n.plural == s {
                Some((n.singular.clone(), true))
            } else {
                None
            }
        })
    };
    let is_adj = |s: &str| lex.adjectives.iter().any(|a| a == s);
    let det_plural = |s: &str| match s {
        _ if s == DET_SINGULAR => false,
        _ if s == DET_PLURAL => true,
        _ => panic!("'{s}' is not a determiner"),
    };
    assert_eq!(w.last(), Some(&"."));
    let mut i = 0;
    let subj_pl = det_plural(w[i]);
    let (subj, n_pl) = noun(w[i + 1]).expect("subject noun");
    assert_eq!(subj_pl, n_pl, "determiner and subject disagree in {w:?}");
    i += 2;
    if is_adj(w[i]) {
        i += 1;
    }
    let verb = w[i];
    let v = lex
        .verbs
        .iter()
        .find(|v| v.singular == verb || v.plural == verb)
        .expect("verb");
    assert_eq!(
        verb == v.plural,
        subj_pl,
        "verb disagrees with subject in {w:?}"
    );
    let stem = verb[..verb.len() - 1].to_string();
    let rest = w[i + 1..].to_vec();
    let obj_pl = det_plural(rest[0]);
    let (_, o_pl) = noun(rest[1]).expect("object noun");
    assert_eq!(obj_pl, o_pl, "object determiner disagrees in {w:?}");
    match rest.len() {
        3 => {}
        4 => assert!(is_adj(rest[2])),
        _ => panic!("bad object phrase in {w:?}"),
    }
    (subj_pl, subj, stem, rest)
}

#[test]
fn answers_match_an_independent_computation() {
    let lex = Lexicon::get();
    let mut count_answers = HashSet::new();
    let mut flip_directions = HashSet::new();
    for e in all_examples(200) {
        let toks: Vec<&str> = e.prompt.split(' ').collect();
        assert_eq!(toks[0], e.task.name());
        assert_eq!(*toks.last().unwrap(), "=");
        let body = &toks[1..toks.len() - 1];
        let ans: Vec<&str> = e.answer.split(' ').collect();
        let digits = |xs: &[&str]| -> Vec<u32> {
            xs.iter()
                .map(|x| x.parse::<u32>().ok().filter(|&d| d < 10).expect("digit"))
                .collect()
        };
        match e.task {
            TaskKind::Add | TaskKind::Sub => {
                let op = if e.task == TaskKind::Add { "+" } else { "-" };
                let k = body.iter().position(|&t| t == op).expect("operator");
                let (a, b) = (num(&body[..k]), num(&body[k + 1..]));
                for x in [a, b] {
                    assert!((10..1000).contains(&x), "{}", e.prompt);
                }
                let want = if op == "+" { a + b } else { a - b };
                assert!(want >= 0, "{}", e.prompt);
                assert_eq!(num(&ans), want, "{}", e.prompt);
                // No leading zeros.
                assert!(ans.len() == 1 || ans[0] != "0", "{}", e.answer);
            }
            TaskKind::Copy | TaskKind::Reverse | TaskKind::First | TaskKind::Last => {
                assert!((2..=8).contains(&body.len()), "{}", e.prompt);
                let want: Vec<&str> = match e.task {
                    TaskKind::Copy => body.to_vec(),
                    TaskKind::Reverse => body.iter().rev().copied().collect(),
                    TaskKind::First => vec![body[0]],
                    _ => vec![body[body.len() - 1]],
                };
                assert_eq!(ans, want, "{}", e.prompt);
            }
            TaskKind::Sort => {
                let mut d = digits(body);
                d.sort();
                assert_eq!(digits(&ans), d, "{}", e.prompt);
            }
            TaskKind::Max => {
                let d = digits(body);
                assert_eq!(digits(&ans), vec![*d.iter().max().unwrap()], "{}", e.prompt);
            }
            TaskKind::Count => {
                assert_eq!(body[1], "in");
                let target = body[0];
                let n = body[2..].iter().filter(|&&x| x == target).count();
                digits(&body[2..]);
                assert_eq!(ans, vec![n.to_string().as_str()], "{}", e.prompt);
                count_answers.insert(n);
            }
            TaskKind::Flip => {
                let (p_pl, p_noun, p_stem, p_rest) = parse_sentence(lex, body);
                let (a_pl, a_noun, a_stem, a_rest) = parse_sentence(lex, &ans);
                assert_ne!(p_pl, a_pl, "{} -> {}", e.prompt, e.answer);
                assert_eq!((p_noun, p_stem, p_rest), (a_noun, a_stem, a_rest));
                // The adjective after the subject is kept.
                assert_eq!(body.len(), ans.len());
                flip_directions.insert(p_pl);
            }
            TaskKind::Translate => {
                let want: Vec<&str> = body.iter().map(|w| lex.to_zemic(w).unwrap()).collect();
                assert_eq!(ans, want);
            }
            TaskKind::BackTranslate => {
                let want: Vec<&str> = body.iter().map(|w| lex.from_zemic(w).unwrap()).collect();
                assert_eq!(ans, want);
            }
        }
    }
    // The generators cover their ranges, not one corner of them.
    assert!(count_answers.len() >= 5, "{count_answers:?}");
    assert_eq!(flip_directions.len(), 2);
}
