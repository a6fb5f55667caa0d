//! tern's tokenizer against the Python `tokenizers` library.
//!
//! `fixtures/gen_tokenizer_fixtures.py` builds two tiny tokenizers (a
//! Llama-3-style byte-level BPE and a SentencePiece-style Unigram) and records
//! the library's ids and decodes for a list of strings. These tests check:
//! - tern's `encode` / `decode` give exactly the oracle's ids and strings;
//! - `StreamDecoder`, fed one token at a time, reproduces the full decode,
//!   including characters whose UTF-8 bytes are split across tokens;
//! - a GGUF file holding `tokenizer.huggingface.json` loads through
//!   `from_gguf`, and so does one holding only the `gpt2` ggml keys, with
//!   identical ids;
//! - malformed inputs and missing keys give errors that name their source;
//! - regenerating the fixtures reproduces the committed files (when the torch
//!   venv with `tokenizers` is present).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde_json::Value as J;
use tern_io::gguf::{GgufFile, GgufWriter, Value};
use tern_model::tokenizer::{Tokenizer, TokenizerError};
use tern_tests::{fixture, run_python};

const NAMES: [&str; 2] = ["bytelevel_bpe", "spm_unigram"];

struct Case {
    text: String,
    with_special: Vec<u32>,
    without_special: Vec<u32>,
    decoded: String,
    decoded_skip: String,
}

struct Expected {
    vocab_size: usize,
    special_ids: Vec<(String, u32)>,
    cases: Vec<Case>,
}

fn json_path(name: &str) -> PathBuf {
    fixture(&format!("tokenizer/{name}/tokenizer.json"))
}

fn ids(v: &J) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32 id"))
        .collect()
}

fn expected(name: &str) -> Expected {
    let path = fixture(&format!("tokenizer/{name}/{name}.expected.json"));
    let text = std::fs::read_to_string(&path).expect("read expected json");
    let v: J = serde_json::from_str(&text).expect("parse expected json");
    let s = |c: &J, k: &str| c[k].as_str().expect(k).to_owned();
    let cases = v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            text: s(c, "text"),
            with_special: ids(&c["ids_with_special"]),
            without_special: ids(&c["ids_without_special"]),
            decoded: s(c, "decoded"),
            decoded_skip: s(c, "decoded_skip_special"),
        })
        .collect::<Vec<_>>();
    assert!(cases.len() > 10, "{name}: too few cases");
    let special_ids = v["special_ids"]
        .as_object()
        .expect("special_ids")
        .iter()
        .map(|(k, id)| (k.clone(), id.as_u64().expect("id") as u32))
        .collect();
    Expected {
        vocab_size: v["vocab_size_with_added"].as_u64().expect("vocab size") as usize,
        special_ids,
        cases,
    }
}

fn load(name: &str) -> Tokenizer {
    Tokenizer::from_file(json_path(name)).expect("load fixture tokenizer")
}

/// Every case of `exp` must match `tok` exactly.
fn check_against_oracle(tok: &Tokenizer, exp: &Expected, what: &str) {
    for c in &exp.cases {
        let t = &c.text;
        assert_eq!(
            tok.encode(t, true).unwrap(),
            c.with_special,
            "{what}: encode({t:?}, true)"
        );
        assert_eq!(
            tok.encode(t, false).unwrap(),
            c.without_special,
            "{what}: encode({t:?}, false)"
        );
        assert_eq!(
            tok.decode(&c.with_special, false).unwrap(),
            c.decoded,
            "{what}: decode of {t:?}"
        );
        assert_eq!(
            tok.decode(&c.with_special, true).unwrap(),
            c.decoded_skip,
            "{what}: decode (skip special) of {t:?}"
        );
    }
    assert_eq!(tok.vocab_size(), exp.vocab_size, "{what}: vocab size");
    for (token, id) in &exp.special_ids {
        assert_eq!(tok.token_to_id(token), Some(*id), "{what}: id of {token}");
    }
}

#[test]
fn ids_and_decodes_match_the_python_library() {
    for name in NAMES {
        let exp = expected(name);
        let tok = load(name);
        check_against_oracle(&tok, &exp, name);
    }
}

#[test]
fn bos_and_eos_are_identified() {
    let id = |exp: &Expected, t: &str| {
        exp.special_ids
            .iter()
            .find(|(k, _)| k == t)
            .map(|(_, id)| *id)
    };
    // Byte-level: BOS from the template, EOS by name.
    let exp = expected("bytelevel_bpe");
    let tok = load("bytelevel_bpe");
    assert_eq!(tok.bos_id(), id(&exp, "<|begin_of_text|>"));
    assert_eq!(tok.eos_id(), id(&exp, "<|end_of_text|>"));
    assert!(tok.bos_id().is_some() && tok.eos_id().is_some());
    // Unigram: both from the "<s> $A </s>" template.
    let exp = expected("spm_unigram");
    let tok = load("spm_unigram");
    assert_eq!(tok.bos_id(), id(&exp, "<s>"));
    assert_eq!(tok.eos_id(), id(&exp, "</s>"));
    assert!(tok.bos_id().is_some() && tok.eos_id().is_some());
}

/// Feed `ids` one by one; returns the chunks (the last one from `finish`).
fn stream(tok: &Tokenizer, ids: &[u32], skip: bool) -> Vec<String> {
    let mut d = tok.stream_decoder(skip);
    let mut chunks: Vec<String> = ids.iter().map(|&id| d.push(id).unwrap()).collect();
    chunks.push(d.finish().unwrap());
    chunks
}

#[test]
fn stream_decoder_reproduces_full_decode() {
    for name in NAMES {
        let exp = expected(name);
        let tok = load(name);
        let mut all_with = Vec::new();
        let mut all_without = Vec::new();
        for c in &exp.cases {
            all_with.extend_from_slice(&c.with_special);
            all_without.extend_from_slice(&c.without_special);
            for ids in [&c.with_special, &c.without_special] {
                for skip in [false, true] {
                    let full = tok.decode(ids, skip).unwrap();
                    let chunks = stream(&tok, ids, skip);
                    assert_eq!(
                        chunks.concat(),
                        full,
                        "{name}: stream of {:?} (skip {skip})",
                        c.text
                    );
                    if !full.contains('\u{FFFD}') {
                        assert!(
                            chunks.iter().all(|s| !s.contains('\u{FFFD}')),
                            "{name}: a chunk of {:?} has U+FFFD: {chunks:?}",
                            c.text
                        );
                    }
                }
            }
        }
        // Long streams: special tokens and text boundaries mid-stream.
        for ids in [&all_with, &all_without] {
            for skip in [false, true] {
                let full = tok.decode(ids, skip).unwrap();
                assert_eq!(
                    stream(&tok, ids, skip).concat(),
                    full,
                    "{name}: long stream (skip {skip})"
                );
            }
        }
    }
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let tok = load("bytelevel_bpe");
    // One emoji (4 UTF-8 bytes) is several byte tokens in this small vocabulary.
    let ids = tok.encode("\u{1F642}", false).unwrap();
    assert!(
        ids.len() > 1,
        "the emoji should span several tokens: {ids:?}"
    );
    let mut d = tok.stream_decoder(false);
    let (last, head) = ids.split_last().unwrap();
    for &id in head {
        assert_eq!(d.push(id).unwrap(), "", "incomplete character must be held");
    }
    assert_eq!(d.push(*last).unwrap(), "\u{1F642}");
    assert_eq!(d.finish().unwrap(), "");

    // A stream cut inside a character: finish flushes what decode would show.
    let ids = tok.encode("ab\u{4E2D}", false).unwrap();
    let cut = &ids[..ids.len() - 1];
    let chunks = stream(&tok, cut, false);
    assert_eq!(chunks.concat(), tok.decode(cut, false).unwrap());
    assert!(chunks.last().unwrap().ends_with('\u{FFFD}'), "{chunks:?}");

    // Printing as it goes: plain ASCII comes out token by token.
    let ids = tok.encode("tern runs", false).unwrap();
    let mut d = tok.stream_decoder(false);
    let first = d.push(ids[0]).unwrap();
    assert!(!first.is_empty());
    assert_eq!(first, tok.decode(&ids[..1], false).unwrap());
}

#[test]
fn json_round_trip_keeps_ids() {
    for name in NAMES {
        let exp = expected(name);
        let tok = load(name);
        let json = tok.to_json_string().unwrap();
        let back = Tokenizer::from_json_bytes("round trip", json.as_bytes()).unwrap();
        check_against_oracle(&back, &exp, &format!("{name} after to_json_string"));
        assert_eq!(back.bos_id(), tok.bos_id());
        assert_eq!(back.eos_id(), tok.eos_id());
    }
}

/// Write a GGUF with the given KV pairs and no tensors.
fn write_gguf(path: &Path, kvs: Vec<(&str, Value)>) -> GgufFile {
    let mut w = GgufWriter::create(path).unwrap();
    w.add_kv("general.architecture", "bitnet").unwrap();
    for (k, v) in kvs {
        w.add_kv(k, v).unwrap();
    }
    w.begin_data().unwrap().finish().unwrap();
    GgufFile::open(path).unwrap()
}

#[test]
fn gguf_with_huggingface_json_loads() {
    let dir = tempfile::tempdir().unwrap();
    for name in NAMES {
        let exp = expected(name);
        let json = std::fs::read_to_string(json_path(name)).unwrap();
        let path = dir.path().join(format!("{name}.gguf"));
        let g = write_gguf(&path, vec![("tokenizer.huggingface.json", json.into())]);
        let tok = Tokenizer::from_gguf(&g).unwrap();
        check_against_oracle(&tok, &exp, &format!("{name} from GGUF"));
        assert_eq!(tok.source(), path.display().to_string());
        assert_eq!(tok.bos_id(), load(name).bos_id());
    }
}

#[test]
fn gguf_bos_eos_keys_override_the_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = std::fs::read_to_string(json_path("bytelevel_bpe")).unwrap();
    let tok = load("bytelevel_bpe");
    let eot = tok.token_to_id("<|eot_id|>").unwrap();
    assert_ne!(tok.eos_id(), Some(eot));
    let g = write_gguf(
        &dir.path().join("o.gguf"),
        vec![
            ("tokenizer.huggingface.json", json.into()),
            ("tokenizer.ggml.eos_token_id", eot.into()),
        ],
    );
    let from_gguf = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(from_gguf.eos_id(), Some(eot));
    assert_eq!(from_gguf.bos_id(), tok.bos_id());
}

/// The llama.cpp-style `gpt2` keys for the byte-level fixture, as a converter
/// writes them: every token by id, CONTROL (3) for special added tokens,
/// USER_DEFINED (4) for other added tokens, NORMAL (1) for the rest.
fn gpt2_keys(pre: &str) -> Vec<(&'static str, Value)> {
    let v: J = serde_json::from_str(&std::fs::read_to_string(json_path("bytelevel_bpe")).unwrap())
        .unwrap();
    let mut by_id: Vec<(u64, String, i32)> = v["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, id)| (id.as_u64().unwrap(), t.clone(), 1))
        .collect();
    for a in v["added_tokens"].as_array().unwrap() {
        let id = a["id"].as_u64().unwrap();
        let ty = if a["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
        let content = a["content"].as_str().unwrap().to_owned();
        match by_id.iter_mut().find(|(i, _, _)| *i == id) {
            Some(e) => e.2 = ty,
            None => by_id.push((id, content, ty)),
        }
    }
    by_id.sort();
    for (i, (id, _, _)) in by_id.iter().enumerate() {
        assert_eq!(*id, i as u64, "fixture ids are dense");
    }
    let merges: Vec<String> = v["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            J::String(s) => s.clone(),
            J::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            other => panic!("merge {other}"),
        })
        .collect();
    assert!(!merges.is_empty());
    let tokens: Vec<String> = by_id.iter().map(|(_, t, _)| t.clone()).collect();
    let types: Vec<i32> = by_id.iter().map(|(_, _, ty)| *ty).collect();
    let id_of = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    vec![
        ("tokenizer.ggml.model", "gpt2".into()),
        ("tokenizer.ggml.pre", pre.into()),
        ("tokenizer.ggml.tokens", tokens.clone().into()),
        ("tokenizer.ggml.token_type", types.into()),
        ("tokenizer.ggml.merges", merges.into()),
        (
            "tokenizer.ggml.bos_token_id",
            id_of("<|begin_of_text|>").into(),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            id_of("<|end_of_text|>").into(),
        ),
        ("tokenizer.ggml.add_bos_token", true.into()),
    ]
}

#[test]
fn gguf_gpt2_keys_rebuild_the_byte_level_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let exp = expected("bytelevel_bpe");
    let from_json = load("bytelevel_bpe");
    let g = write_gguf(&dir.path().join("gpt2.gguf"), gpt2_keys("llama-bpe"));
    let tok = Tokenizer::from_gguf(&g).unwrap();
    check_against_oracle(&tok, &exp, "gpt2 keys (llama-bpe)");
    assert_eq!(tok.bos_id(), from_json.bos_id());
    assert_eq!(tok.eos_id(), from_json.eos_id());
    for c in &exp.cases {
        for skip in [false, true] {
            assert_eq!(
                stream(&tok, &c.with_special, skip).concat(),
                from_json.decode(&c.with_special, skip).unwrap(),
                "gpt2 keys: stream of {:?}",
                c.text
            );
        }
    }
    // With both sources present the JSON wins and gives the same ids.
    let mut kvs = gpt2_keys("llama-bpe");
    kvs.push((
        "tokenizer.huggingface.json",
        std::fs::read_to_string(json_path("bytelevel_bpe"))
            .unwrap()
            .into(),
    ));
    let g = write_gguf(&dir.path().join("both.gguf"), kvs);
    let both = Tokenizer::from_gguf(&g).unwrap();
    for c in &exp.cases {
        assert_eq!(
            both.encode(&c.text, true).unwrap(),
            tok.encode(&c.text, true).unwrap()
        );
    }
}

#[test]
fn gguf_gpt2_pre_selects_the_split_rules() {
    // The same vocabulary with the GPT-2 pre-tokenizer, as a tokenizer.json.
    let mut v: J =
        serde_json::from_str(&std::fs::read_to_string(json_path("bytelevel_bpe")).unwrap())
            .unwrap();
    v["pre_tokenizer"] = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    v["model"]["ignore_merges"] = J::Bool(false);
    let gpt2_json = Tokenizer::from_json_bytes("gpt-2 variant", v.to_string().as_bytes()).unwrap();
    let llama = load("bytelevel_bpe");

    let dir = tempfile::tempdir().unwrap();
    let g = write_gguf(&dir.path().join("gpt2pre.gguf"), gpt2_keys("gpt-2"));
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let mut differs = false;
    for c in &expected("bytelevel_bpe").cases {
        let ids = tok.encode(&c.text, true).unwrap();
        assert_eq!(
            ids,
            gpt2_json.encode(&c.text, true).unwrap(),
            "{:?}",
            c.text
        );
        differs |= ids != llama.encode(&c.text, true).unwrap();
    }
    assert!(differs, "the pre-tokenizer choice should change some ids");
}

fn err_text(e: &TokenizerError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(" / {inner}"));
        src = inner.source();
    }
    s
}

#[test]
fn malformed_tokenizer_json_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(json_path("spm_unigram")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not_json.json", b"{this is not json".to_vec()),
        ("truncated.json", good[..good.len() / 2].to_vec()),
        ("empty.json", Vec::new()),
        (
            "wrong_model.json",
            String::from_utf8(good.clone())
                .unwrap()
                .replacen("\"type\": \"Unigram\"", "\"type\": \"NoSuchModel\"", 1)
                .into_bytes(),
        ),
    ];
    for (file, bytes) in cases {
        assert_ne!(bytes, good);
        let path = dir.path().join(file);
        std::fs::write(&path, &bytes).unwrap();
        let e = Tokenizer::from_file(&path).unwrap_err();
        assert!(matches!(e, TokenizerError::Parse { .. }), "{file}: {e:?}");
        assert!(err_text(&e).contains(file), "{file}: {e}");
        assert_eq!(e.source_name(), path.display().to_string());
    }
    let missing = dir.path().join("does_not_exist.json");
    let e = Tokenizer::from_file(&missing).unwrap_err();
    assert!(matches!(e, TokenizerError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("does_not_exist.json"), "{e}");

    let e = Tokenizer::from_json_bytes("inline label", b"[1, 2").unwrap_err();
    assert!(e.to_string().contains("inline label"), "{e}");
}

#[test]
fn gguf_without_usable_tokenizer_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let check = |file: &str, kvs: Vec<(&str, Value)>, needles: &[&str]| {
        let path = dir.path().join(file);
        let g = write_gguf(&path, kvs);
        let e = Tokenizer::from_gguf(&g).unwrap_err();
        let text = err_text(&e);
        assert!(text.contains(file), "{file}: {text}");
        for n in needles {
            assert!(text.contains(n), "{file}: {text:?} lacks {n:?}");
        }
        e
    };
    // SentencePiece vocabulary without the JSON: refused, with the way out.
    let e = check(
        "spm_only.gguf",
        vec![
            ("tokenizer.ggml.model", "llama".into()),
            ("tokenizer.ggml.tokens", vec!["<unk>", "<s>", "</s>"].into()),
        ],
        &["--tokenizer tokenizer.json", "llama"],
    );
    assert!(matches!(e, TokenizerError::UnsupportedGguf { .. }));
    // No tokenizer keys at all.
    let e = check("bare.gguf", vec![], &["--tokenizer tokenizer.json"]);
    assert!(matches!(e, TokenizerError::UnsupportedGguf { .. }));
    // The JSON key with the wrong type.
    check(
        "json_type.gguf",
        vec![("tokenizer.huggingface.json", 7u32.into())],
        &["tokenizer.huggingface.json", "u32"],
    );
    // The JSON key holding broken JSON.
    let e = check(
        "json_bad.gguf",
        vec![("tokenizer.huggingface.json", "{\"model\": ".into())],
        &["tokenizer.huggingface.json"],
    );
    assert!(matches!(e, TokenizerError::Parse { .. }));
    // gpt2 keys with the merges missing.
    let no_merges: Vec<_> = gpt2_keys("llama-bpe")
        .into_iter()
        .filter(|(k, _)| *k != "tokenizer.ggml.merges")
        .collect();
    check("no_merges.gguf", no_merges, &["tokenizer.ggml.merges"]);
    // gpt2 keys with a pre-tokenizer tern does not know.
    let e = check(
        "pre.gguf",
        gpt2_keys("some-other-pre"),
        &["some-other-pre", "--tokenizer tokenizer.json"],
    );
    assert!(matches!(e, TokenizerError::UnsupportedGguf { .. }));
    // A BOS id outside the vocabulary.
    let bad_bos: Vec<_> = gpt2_keys("llama-bpe")
        .into_iter()
        .map(|(k, v)| {
            if k == "tokenizer.ggml.bos_token_id" {
                (k, Value::U32(1_000_000))
            } else {
                (k, v)
            }
        })
        .collect();
    check(
        "bad_bos.gguf",
        bad_bos,
        &["tokenizer.ggml.bos_token_id", "1000000"],
    );
    // A malformed merge entry.
    let bad_merge: Vec<_> = gpt2_keys("llama-bpe")
        .into_iter()
        .map(|(k, v)| {
            if k == "tokenizer.ggml.merges" {
                (k, vec!["nospace"].into())
            } else {
                (k, v)
            }
        })
        .collect();
    check(
        "bad_merge.gguf",
        bad_merge,
        &["tokenizer.ggml.merges", "nospace"],
    );
}

#[test]
fn regenerating_fixtures_reproduces_committed_files() {
    let Some(py) = tern_tests::torch_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = fixture("gen_tokenizer_fixtures.py");
    run_python(
        &py,
        &[
            script.as_os_str(),
            OsStr::new("--out"),
            dir.path().as_os_str(),
        ],
    );
    for name in NAMES {
        for file in ["tokenizer.json".to_owned(), format!("{name}.expected.json")] {
            let rel = format!("{name}/{file}");
            let fresh = std::fs::read(dir.path().join(&rel)).unwrap();
            let committed = std::fs::read(fixture(&format!("tokenizer/{rel}"))).unwrap();
            assert!(fresh == committed, "{rel} differs from a fresh run");
        }
    }
}
