//! The fine-tuning data pipeline on small files written here and on the
//! shared BiomedQA set (`tern_tests::shared_data`: `$TERN_DATA_DIR`, then
//! `../shared/data` beside the repository).

use std::path::{Path, PathBuf};

use serde_json::json;
use tern_lora::data::{
    discover_chat_template, ChatTemplate, DataError, DataFormat, DataOptions, Dataset,
    ValidationSplit, IGNORE,
};
use tern_model::tokenizer::Tokenizer;

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer/bytelevel_bpe/tokenizer.json")
}

/// The byte-level BPE fixture (BOS `<|begin_of_text|>`, EOS
/// `<|end_of_text|>`, special `<|eot_id|>`).
fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(fixture_path()).unwrap()
}

/// The fixture plus `<|im_start|>` / `<|im_end|>` as special tokens, like a
/// ChatML model's tokenizer.
fn chatml_tokenizer() -> Tokenizer {
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture_path()).unwrap()).unwrap();
    let added = json["added_tokens"].as_array_mut().unwrap();
    let next = added
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .max()
        .unwrap()
        + 1;
    for (i, content) in ["<|im_start|>", "<|im_end|>"].iter().enumerate() {
        added.push(json!({
            "id": next + i as u64, "content": content, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true,
        }));
    }
    Tokenizer::from_json_bytes("chatml fixture", &serde_json::to_vec(&json).unwrap()).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn jsonl(records: &[serde_json::Value]) -> String {
    records
        .iter()
        .map(|r| r.to_string() + "\n")
        .collect::<String>()
}

fn opts(ctx: usize) -> DataOptions {
    DataOptions {
        ctx,
        shuffle: false,
        ..DataOptions::default()
    }
}

/// Contiguous runs of targets that count, decoded.
fn trained_runs(tok: &Tokenizer, targets: &[u32]) -> Vec<String> {
    let mut runs = Vec::new();
    let mut cur = Vec::new();
    for &t in targets.iter().chain([IGNORE].iter()) {
        if t == IGNORE {
            if !cur.is_empty() {
                runs.push(tok.decode(&cur, false).unwrap());
                cur.clear();
            }
        } else {
            cur.push(t);
        }
    }
    runs
}

const DOCS: [&str; 3] = [
    "Ternary weights take three values: minus one, zero and one.",
    "A LoRA adapter adds a low-rank update to a frozen projection.",
    "Packing joins documents so that no position of a window is wasted.",
];

#[test]
fn text_windows_reassemble_the_token_stream() {
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let recs: Vec<_> = DOCS.iter().map(|d| json!({"text": d, "id": 1})).collect();
    let path = write(dir.path(), "docs.jsonl", &jsonl(&recs));
    let ctx = 16;
    let ds = Dataset::load(&path, &tok, &opts(ctx)).unwrap();
    assert_eq!(ds.format(), DataFormat::Text);

    // The stream, built independently: BOS ids EOS per document.
    let (bos, eos) = (tok.bos_id().unwrap(), tok.eos_id().unwrap());
    let mut stream = Vec::new();
    for d in DOCS {
        stream.push(bos);
        stream.extend(tok.encode(d, false).unwrap());
        stream.push(eos);
    }
    let n = stream.len();
    assert!(
        n > 3 * ctx,
        "the test wants several windows, got {n} tokens"
    );
    assert_eq!(ds.stats().tokens, n);
    assert_eq!(ds.stats().records, 3);

    let ex = ds.train();
    assert_eq!(ex.len(), (n - 1).div_ceil(ctx));
    let inputs: Vec<u32> = ex.iter().flat_map(|e| e.inputs.clone()).collect();
    let targets: Vec<u32> = ex.iter().flat_map(|e| e.targets.clone()).collect();
    assert_eq!(inputs, stream[..n - 1]);
    assert_eq!(targets, stream[1..]);
    for (k, e) in ex.iter().enumerate() {
        assert_eq!(e.inputs.len(), e.targets.len());
        assert_eq!(e.inputs[1..], e.targets[..e.targets.len() - 1]);
        if k + 1 < ex.len() {
            assert_eq!(e.inputs.len(), ctx);
        }
    }
    assert_eq!(ds.train_tokens(), n - 1);

    // The last window is partial: padded with ignored targets in a batch.
    let last = ex.len() - 1;
    let tail = ex[last].inputs.len();
    assert!(
        tail < ctx,
        "pick ctx so the last window is partial ({tail})"
    );
    let b = ds.batch(&[0, last]);
    assert_eq!((b.batch, b.seq), (2, ctx));
    assert_eq!(b.tokens[..ctx], ex[0].inputs[..]);
    assert_eq!(b.targets[ctx..ctx + tail], ex[last].targets[..]);
    assert!(b.targets[ctx + tail..].iter().all(|&t| t == IGNORE));
    assert_eq!(b.n_targets(), ctx + tail);
    assert_eq!(b.tokens.len(), b.targets.len());

    // The windows start in the right records.
    assert_eq!(ex[0].line, 1);
    assert_eq!(ex[last].line, 3);
}

#[test]
fn plain_text_file_is_one_document() {
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let text = DOCS.join("\n\n");
    let path = write(dir.path(), "notes.txt", &text);
    let mut o = opts(8);
    o.add_bos = false;
    let ds = Dataset::load(&path, &tok, &o).unwrap();
    let mut stream = tok.encode(&text, false).unwrap();
    stream.push(tok.eos_id().unwrap());
    let inputs: Vec<u32> = ds.train().iter().flat_map(|e| e.inputs.clone()).collect();
    assert_eq!(inputs, stream[..stream.len() - 1]);
    assert_eq!(ds.stats().records, 1);
}

fn conversation() -> serde_json::Value {
    json!({"messages": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Repeat after me: hello there"},
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "It is 4."},
    ]})
}

const ASSISTANT: [&str; 2] = ["hello there", "It is 4."];

#[test]
fn chatml_assistant_spans_are_content_and_end_tag() {
    let tok = chatml_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "chat.jsonl", &jsonl(&[conversation()]));
    let mut o = opts(512);
    o.assistant_loss_only = true;
    let ds = Dataset::load(&path, &tok, &o).unwrap();
    assert_eq!(ds.format(), DataFormat::Chat);
    let e = &ds.train()[0];
    let want: Vec<String> = ASSISTANT.iter().map(|c| format!("{c}<|im_end|>")).collect();
    assert_eq!(trained_runs(&tok, &e.targets), want);

    // The full conversation as ChatML, BOS in front (the fixture has one).
    let mut rendered = String::new();
    for m in conversation()["messages"].as_array().unwrap() {
        rendered += &format!(
            "<|im_start|>{}\n{}<|im_end|>\n",
            m["role"].as_str().unwrap(),
            m["content"].as_str().unwrap()
        );
    }
    let mut ids = vec![tok.bos_id().unwrap()];
    ids.extend(tok.encode(&rendered, false).unwrap());
    assert_eq!(e.inputs, ids[..ids.len() - 1]);
    for (t, &id) in e.targets.iter().zip(&ids[1..]) {
        assert!(*t == IGNORE || *t == id);
    }

    // Without the flag every position is a target.
    let ds = Dataset::load(&path, &tok, &opts(512)).unwrap();
    let e = &ds.train()[0];
    assert_eq!(e.targets, ids[1..]);
    assert_eq!(ds.train_tokens(), ids.len() - 1);
}

#[test]
fn chatml_spans_without_special_tags_in_the_vocabulary() {
    // `<|im_end|>` is plain bytes in this tokenizer; the trained run is the
    // content, the tag, and at most the separator the tag's last token
    // merged with.
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "chat.jsonl", &jsonl(&[conversation()]));
    let mut o = opts(512);
    o.assistant_loss_only = true;
    let ds = Dataset::load(&path, &tok, &o).unwrap();
    let runs = trained_runs(&tok, &ds.train()[0].targets);
    assert_eq!(runs.len(), 2, "{runs:?}");
    for (run, content) in runs.iter().zip(ASSISTANT) {
        let head = format!("{content}<|im_end|>");
        assert!(run.starts_with(&head), "{run:?} vs {head:?}");
        assert!(run[head.len()..].trim().is_empty(), "{run:?}");
    }
}

const LLAMA3_TEMPLATE: &str = "{{- bos_token }}\
{% for message in messages %}\
{% if message['role'] == 'tool' %}{{ raise_exception('tool messages are not supported') }}{% endif %}\
{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

fn llama3_config(dir: &Path) -> PathBuf {
    let cfg = json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": {"content": "<|eot_id|>", "special": true},
        "chat_template": LLAMA3_TEMPLATE,
    });
    write(dir, "tokenizer_config.json", &cfg.to_string())
}

#[test]
fn template_from_tokenizer_config_renders_and_spans_hold() {
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama3_config(dir.path());
    assert_eq!(discover_chat_template(dir.path()), Some(cfg.clone()));
    let path = write(dir.path(), "chat.json", &jsonl(&[conversation()]));
    let mut o = opts(512);
    o.assistant_loss_only = true;
    o.chat_template = Some(cfg.display().to_string());
    let ds = Dataset::load(&path, &tok, &o).unwrap();
    let e = &ds.train()[0];

    // The template wrote BOS itself; none is added in front of it.
    let bos = tok.bos_id().unwrap();
    assert_eq!(e.inputs[0], bos);
    assert_eq!(e.inputs.iter().filter(|&&t| t == bos).count(), 1);
    let text = tok.decode(&e.inputs, false).unwrap();
    assert!(
        text.starts_with("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"),
        "{text:?}"
    );

    let want: Vec<String> = ASSISTANT.iter().map(|c| format!("{c}<|eot_id|>")).collect();
    assert_eq!(trained_runs(&tok, &e.targets), want);

    // The same template as a .jinja file (no config: the tokenizer's BOS).
    let jinja = write(dir.path(), "chat_template.jinja", LLAMA3_TEMPLATE);
    assert_eq!(discover_chat_template(dir.path()), Some(jinja.clone()));
    let t = ChatTemplate::from_spec(jinja.to_str().unwrap()).unwrap();
    assert_eq!(t.source(), LLAMA3_TEMPLATE);
    o.chat_template = Some(jinja.display().to_string());
    let ds2 = Dataset::load(&path, &tok, &o).unwrap();
    assert_eq!(ds2.train(), ds.train());
}

#[test]
fn long_conversations_are_truncated_and_counted() {
    let tok = chatml_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let short = json!({"messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]});
    let path = write(
        dir.path(),
        "chat.jsonl",
        &jsonl(&[short.clone(), conversation(), short]),
    );
    let full = Dataset::load(&path, &tok, &opts(1000)).unwrap();
    assert_eq!(full.stats().truncated, 0);
    let long_len = full.train()[1].inputs.len() + 1;
    let short_len = full.train()[0].inputs.len() + 1;
    let ctx = (short_len + long_len) / 2;
    assert!(short_len <= ctx + 1 && long_len > ctx + 1);

    let ds = Dataset::load(&path, &tok, &opts(ctx)).unwrap();
    assert_eq!(ds.stats().truncated, 1);
    assert_eq!(ds.stats().truncated_tokens, long_len - (ctx + 1));
    assert_eq!(ds.train_len(), 3, "truncated, not dropped");
    assert_eq!(ds.train()[1].inputs.len(), ctx);
    assert_eq!(ds.train()[1].inputs, full.train()[1].inputs[..ctx]);
    assert_eq!(ds.train()[0], full.train()[0]);
    assert!(ds.stats().to_string().contains("1 conversations truncated"));
    // One conversation per row, padded to the longest row.
    let b = ds.batch(&[0, 1]);
    assert_eq!((b.batch, b.seq), (2, ctx));
    assert!(b.targets[short_len - 1..ctx].iter().all(|&t| t == IGNORE));
}

/// Text data with `n` short documents.
fn many_docs(dir: &Path, n: usize) -> PathBuf {
    let recs: Vec<_> = (0..n)
        .map(|i| json!({"text": format!("Document number {i} says {}.", i * 7)}))
        .collect();
    write(dir, "many.jsonl", &jsonl(&recs))
}

#[test]
fn split_and_shuffle_are_deterministic_by_seed() {
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = many_docs(dir.path(), 40);
    let base = Dataset::load(&path, &tok, &opts(8)).unwrap();
    let n = base.train_len();
    assert!(n >= 40, "{n}");

    let load = |seed: u64, shuffle: bool| {
        let o = DataOptions {
            ctx: 8,
            seed,
            shuffle,
            validation: ValidationSplit::Fraction(0.25),
            ..DataOptions::default()
        };
        Dataset::load(&path, &tok, &o).unwrap()
    };
    let a = load(1, true);
    let a2 = load(1, true);
    let b = load(2, true);
    let n_val = (0.25 * n as f64).round() as usize;
    assert_eq!(a.validation_len(), n_val);
    assert_eq!(a.train_len() + a.validation_len(), n);
    assert_eq!(a.validation(), a2.validation());
    assert_ne!(a.validation(), b.validation());
    assert_eq!(
        a.train_tokens() + a.validation_tokens(),
        base.train_tokens()
    );
    // Train and validation partition the windows and keep file order.
    let mut all: Vec<_> = a.train().iter().chain(a.validation()).cloned().collect();
    all.sort_by(|x, y| {
        let pos = |e| base.train().iter().position(|b| b == e).unwrap();
        pos(x).cmp(&pos(y))
    });
    assert_eq!(all, base.train());
    let lines: Vec<usize> = a.validation().iter().map(|e| e.line).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]));

    // Epoch orders: permutations, seeded, different per epoch and seed.
    let e0 = a.epoch_order(0);
    let mut sorted = e0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..a.train_len()).collect::<Vec<_>>());
    assert_eq!(e0, a2.epoch_order(0));
    assert_ne!(e0, a.epoch_order(1));
    assert_ne!(e0, b.epoch_order(0));
    assert_ne!(e0, sorted);

    // --no-shuffle: file order every epoch; the split still follows the seed.
    let c = load(1, false);
    assert_eq!(c.epoch_order(0), sorted);
    assert_eq!(c.epoch_order(5), sorted);
    assert_eq!(c.validation(), a.validation());

    // A count instead of a fraction; validation batches cover the set once.
    let o = DataOptions {
        ctx: 8,
        validation: ValidationSplit::Count(5),
        ..DataOptions::default()
    };
    let d = Dataset::load(&path, &tok, &o).unwrap();
    assert_eq!(d.validation_len(), 5);
    let batches: Vec<_> = d.validation_batches(2).collect();
    assert_eq!(
        batches.iter().map(|b| b.batch).collect::<Vec<_>>(),
        [2, 2, 1]
    );
    assert_eq!(
        batches.iter().map(|b| b.n_targets()).sum::<usize>(),
        d.validation_tokens()
    );
}

#[test]
fn chat_no_shuffle_is_file_order() {
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let recs: Vec<_> = (0..6)
        .map(|i| {
            json!({"messages": [
                {"role": "user", "content": format!("question {i}")},
                {"role": "assistant", "content": format!("answer {i}")},
            ]})
        })
        .collect();
    // Blank lines are skipped; line numbers still count them.
    let text = jsonl(&recs).replacen('\n', "\n\n", 1);
    let path = write(dir.path(), "chat.jsonl", &text);
    let ds = Dataset::load(&path, &tok, &opts(64)).unwrap();
    let order = ds.epoch_order(3);
    assert_eq!(order, (0..6).collect::<Vec<_>>());
    let lines: Vec<usize> = order.iter().map(|&i| ds.train()[i].line).collect();
    assert_eq!(lines, [1, 3, 4, 5, 6, 7]);
    for (i, e) in ds.train().iter().enumerate() {
        let text = tok.decode(&e.inputs, false).unwrap();
        assert!(text.contains(&format!("question {i}")), "{text:?}");
    }
}

/// The error of loading `content` as `name`, checked to name the file and
/// (when given) the line, in its value and in its message.
fn load_err(
    name: &str,
    content: &str,
    o: &DataOptions,
    line: Option<usize>,
) -> (DataError, String) {
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), name, content);
    let err = Dataset::load(&path, &tok, o).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.file(), Some(path.as_path()), "{msg}");
    assert_eq!(err.line(), line, "{msg}");
    let at = match line {
        Some(l) => format!("{}:{l}: ", path.display()),
        None => format!("{}: ", path.display()),
    };
    assert!(msg.starts_with(&at), "{msg:?} should start with {at:?}");
    // Loading never writes: the file is as it was.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    (err, msg)
}

#[test]
fn bad_data_names_file_and_line() {
    let o = opts(64);
    let ok = json!({"messages": [{"role": "user", "content": "hi"}]}).to_string();

    let (e, msg) = load_err(
        "bad.jsonl",
        &format!("{ok}\n{ok}\n{{\"messages\": [}}\n"),
        &o,
        Some(3),
    );
    assert!(matches!(e, DataError::Json { .. }), "{msg}");
    assert!(msg.contains("malformed JSON"), "{msg}");

    let (_, msg) = load_err(
        "missing.jsonl",
        &format!("{ok}\n{{\"prompt\": \"x\"}}\n"),
        &o,
        Some(2),
    );
    assert!(
        msg.contains("missing `messages`") && msg.contains("prompt"),
        "{msg}"
    );

    let narrator = json!({"messages": [{"role": "narrator", "content": "Once"}]});
    let (_, msg) = load_err("roles.jsonl", &format!("{ok}\n\n{narrator}\n"), &o, Some(3));
    assert!(msg.contains("unknown role 'narrator'"), "{msg}");

    let no_content = json!({"messages": [{"role": "user"}]});
    let (_, msg) = load_err("c.jsonl", &format!("{no_content}\n"), &o, Some(1));
    assert!(msg.contains("no `content`"), "{msg}");

    let not_list = json!({"messages": "hello"});
    let (_, msg) = load_err("l.jsonl", &format!("{ok}\n{not_list}\n"), &o, Some(2));
    assert!(msg.contains("must be an array"), "{msg}");

    let (_, msg) = load_err(
        "e.jsonl",
        &format!("{ok}\n{{\"messages\": []}}\n"),
        &o,
        Some(2),
    );
    assert!(msg.contains("empty"), "{msg}");

    let (_, msg) = load_err(
        "mixed.jsonl",
        &format!("{ok}\n{}\n", json!({"text": "plain"})),
        &o,
        Some(2),
    );
    assert!(msg.contains("line 1"), "{msg}");

    let (_, msg) = load_err("t.jsonl", "{\"text\": 5}\n", &o, Some(1));
    assert!(msg.contains("`text` must be a string"), "{msg}");

    let (_, msg) = load_err("arr.json", "\n[{\"text\": \"a\"}]\n", &o, Some(2));
    assert!(msg.contains("JSON Lines"), "{msg}");

    for (name, content) in [("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("e.txt", "")] {
        let (e, msg) = load_err(name, content, &o, None);
        assert!(matches!(e, DataError::File { .. }), "{msg}");
        assert!(msg.contains("empty file"), "{msg}");
    }

    let (_, msg) = load_err("data.csv", "a,b\n", &o, None);
    assert!(msg.contains("unknown data format"), "{msg}");

    // A template that raises on the record at line 2.
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama3_config(dir.path());
    let tool = json!({"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "tool", "content": "sunny"},
    ]});
    let o_tpl = DataOptions {
        chat_template: Some(cfg.display().to_string()),
        ..opts(64)
    };
    let (e, msg) = load_err("tool.jsonl", &format!("{ok}\n{tool}\n"), &o_tpl, Some(2));
    assert!(matches!(e, DataError::Render { .. }), "{msg}");
    assert!(msg.contains("tool messages are not supported"), "{msg}");
    assert!(msg.contains("tokenizer_config.json"), "{msg}");

    // A template that does not compile names the template.
    let tok = tokenizer();
    let path = write(dir.path(), "fine.jsonl", &format!("{ok}\n"));
    let bad = DataOptions {
        chat_template: Some("{% for m in messages %}{{ m.content }}".into()),
        ..opts(64)
    };
    let err = Dataset::load(&path, &tok, &bad).unwrap_err();
    assert!(matches!(err, DataError::Template { .. }), "{err}");
    let bad = DataOptions {
        chat_template: Some("no-such-dir/tokenizer_config.json".into()),
        ..opts(64)
    };
    let err = Dataset::load(&path, &tok, &bad).unwrap_err();
    assert!(err.to_string().contains("no-such-dir"), "{err}");

    // --assistant-loss-only on text data.
    let (_, msg) = load_err(
        "plain.jsonl",
        "{\"text\": \"words\"}\n",
        &DataOptions {
            assistant_loss_only: true,
            ..opts(64)
        },
        None,
    );
    assert!(msg.contains("--assistant-loss-only"), "{msg}");

    // A split that leaves nothing to train on.
    let (_, msg) = load_err(
        "one.jsonl",
        &format!("{ok}\n"),
        &DataOptions {
            validation: ValidationSplit::Count(1),
            ..opts(64)
        },
        None,
    );
    assert!(msg.contains("no training examples"), "{msg}");
}

/// Load a JSONL file of `{"text": ...}` records (other fields ignored) and
/// check the pipeline against counts made here: every record one document,
/// `BOS ids EOS` each, windows of `ctx`, and a 10% validation split that
/// loses no token. Returns the stats.
fn check_text_records(path: &Path, tok: &Tokenizer, ctx: usize) -> tern_lora::data::DataStats {
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            r["text"].as_str().unwrap().to_owned()
        })
        .collect();
    let framing = usize::from(tok.bos_id().is_some()) + usize::from(tok.eos_id().is_some());
    let tokens: usize = docs
        .iter()
        .map(|d| tok.encode(d, false).unwrap().len() + framing)
        .sum();

    let ds = Dataset::load(path, tok, &opts(ctx)).unwrap();
    let s = ds.stats().clone();
    assert_eq!(ds.format(), DataFormat::Text);
    assert_eq!(s.records, docs.len());
    assert_eq!(s.empty_records, 0);
    assert_eq!(s.tokens, tokens);
    assert_eq!(ds.train_tokens(), tokens - 1);
    assert_eq!(ds.train_len(), (tokens - 1).div_ceil(ctx));

    let split = DataOptions {
        ctx,
        validation: ValidationSplit::Fraction(0.1),
        seed: 3,
        ..DataOptions::default()
    };
    let ds = Dataset::load(path, tok, &split).unwrap();
    assert!(ds.validation_tokens() > 0, "{}", ds.stats());
    assert_eq!(ds.train_tokens() + ds.validation_tokens(), tokens - 1);
    s
}

/// Records shaped like BiomedQA's (`text` = question, answer and rationale;
/// `label`, `question`, `rationale_src`, `source` besides), written here, so
/// the path the real set takes is checked on every machine.
#[test]
fn biomedqa_shaped_records_load_as_text() {
    let answers = ["Yes", "No", "Uncertain"];
    let records: Vec<_> = (0..12)
        .map(|i| {
            let q = format!("Does ternary model number {i} keep its accuracy after packing?");
            let why = format!("The packed codes of model {i} decode to the same three values.");
            let label = answers[i % 3];
            json!({
                "text": format!("Q: {q}\nA: {label}. Rationale: {why}"),
                "label": label, "question": q, "rationale_src": why, "source": "synthetic",
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "train.jsonl", &jsonl(&records));
    let s = check_text_records(&path, &tokenizer(), 32);
    assert_eq!(s.records, 12);
}

/// The real BiomedQA training split (from `$TERN_DATA_DIR` or
/// `../shared/data`, read in place; a failure under `CI=true` when absent).
#[test]
fn biomedqa_train_split_loads_as_text() {
    let Some(path) = tern_tests::shared_data("biomedqa/train.jsonl") else {
        return;
    };
    let s = check_text_records(&path, &tokenizer(), 256);
    println!("biomedqa train.jsonl, fixture tokenizer, ctx 256: {s}");
    // Every record is a question, an answer and a rationale: tens to a few
    // thousand tokens each.
    assert!(
        s.tokens > 20 * s.records && s.tokens < 5000 * s.records,
        "{s}"
    );
}

#[test]
fn chatml_renders_tool_turns_and_prefix_unstable_templates_are_refused() {
    let tok = chatml_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let conv = json!({"messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [{"name": "weather"}]},
        {"role": "tool", "content": "rain, 7 C"},
        {"role": "assistant", "content": "Rainy, 7 degrees."},
    ]});
    let path = write(dir.path(), "tools.jsonl", &jsonl(&[conv]));
    let mut o = opts(512);
    o.assistant_loss_only = true;
    let ds = Dataset::load(&path, &tok, &o).unwrap();
    let e = &ds.train()[0];
    let text = tok.decode(&e.inputs, false).unwrap();
    assert!(
        text.contains("<|im_start|>tool\nrain, 7 C<|im_end|>"),
        "{text:?}"
    );
    // The tool-call turn has no content: only its end tag is trained.
    assert_eq!(
        trained_runs(&tok, &e.targets),
        ["<|im_end|>", "Rainy, 7 degrees.<|im_end|>"]
    );

    // A template whose output for a prefix is not a prefix of the whole
    // cannot give spans: an error at the record's line.
    o.chat_template = Some(
        "{{ messages | length }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
            .into(),
    );
    let err = Dataset::load(&path, &tok, &o).unwrap_err();
    assert_eq!(err.line(), Some(1), "{err}");
    assert!(err.to_string().contains("not a prefix"), "{err}");
    // Without --assistant-loss-only the same template is fine.
    o.assistant_loss_only = false;
    let ds = Dataset::load(&path, &tok, &o).unwrap();
    assert!(tok
        .decode(&ds.train()[0].inputs, false)
        .unwrap()
        .contains("4user: Weather in Oslo?"));
}
