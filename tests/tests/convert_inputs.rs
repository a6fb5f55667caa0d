//! `tern convert` inputs: bad checkpoints give errors that name the file and
//! the tensor or field and leave nothing at OUT; the Hugging Face hub cache
//! is found offline; the tokenizer is written in llama.cpp's GGUF form.

use std::path::{Path, PathBuf};
use tern_convert::{convert, ConvertOptions, Input};
use tern_io::gguf::{GgufFile, GgufWriter};
use tern_io::safetensors::{write_safetensors, Checkpoint, Dtype};
use tern_model::tokenizer::Tokenizer;
use tern_tensor::GgmlType;
use tern_tests::fixture;

const TINY: &str = "convert/tiny_relu2";

/// Copy the tiny fixture into `dst`.
fn copy_tiny(dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture(TINY).join(f), dst.join(f)).unwrap();
    }
}

type Entry = (String, Dtype, Vec<usize>, Vec<u8>);
type Tensors = Vec<Entry>;

fn tensors_of(dir: &Path) -> Tensors {
    let ck = Checkpoint::open(dir).unwrap();
    ck.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dtype,
                t.shape.clone(),
                ck.entry_data(t).to_vec(),
            )
        })
        .collect()
}

/// Convert `dir` to `out` (TQ2_0) and return the error text; checks that a
/// previous file at `out` is left exactly as it was.
fn fails(dir: &Path, out: &Path) -> String {
    std::fs::write(out, b"previous contents").unwrap();
    let mut o = ConvertOptions::new(Input::Dir(dir.to_path_buf()), out);
    o.proj_type = Some(GgmlType::TQ2_0);
    let e = convert(&o).expect_err("conversion should fail").to_string();
    assert_eq!(
        std::fs::read(out).unwrap(),
        b"previous contents",
        "a failed conversion touched OUT ({e})"
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "out.gguf" && n != "model")
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    e
}

#[test]
fn bad_inputs_name_the_file_and_tensor_and_leave_out_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let out = tmp.path().join("out.gguf");
    let reset = || {
        let _ = std::fs::remove_dir_all(&dir);
        copy_tiny(&dir);
    };
    let cfg_text = std::fs::read_to_string(fixture(TINY).join("config.json")).unwrap();

    // A config field missing.
    reset();
    std::fs::write(
        dir.join("config.json"),
        cfg_text.replace("\"hidden_size\": 256,", ""),
    )
    .unwrap();
    let e = fails(&dir, &out);
    assert!(
        e.contains("config.json") && e.contains("hidden_size"),
        "{e}"
    );

    // An unknown architecture.
    reset();
    std::fs::write(
        dir.join("config.json"),
        cfg_text.replace("BitNetForCausalLM", "LlamaForCausalLM"),
    )
    .unwrap();
    let e = fails(&dir, &out);
    assert!(
        e.contains("config.json") && e.contains("architectures") && e.contains("LlamaForCausalLM"),
        "{e}"
    );

    // A shard named in the index but absent.
    reset();
    let all = tensors_of(&dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (a, b): (Tensors, Tensors) = all.into_iter().partition(|t| t.0.contains("embed"));
    write_safetensors(dir.join("model-00001-of-00002.safetensors"), &a, None).unwrap();
    let mut map = serde_json::Map::new();
    for t in &a {
        map.insert(t.0.clone(), "model-00001-of-00002.safetensors".into());
    }
    for t in &b {
        map.insert(t.0.clone(), "model-00002-of-00002.safetensors".into());
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let e = fails(&dir, &out);
    assert!(
        e.contains("model.safetensors.index.json") && e.contains("model-00002-of-00002"),
        "{e}"
    );
    // With the shard present the same sharded checkpoint converts.
    write_safetensors(dir.join("model-00002-of-00002.safetensors"), &b, None).unwrap();
    let ok = tmp.path().join("sharded.gguf");
    let rep = convert(&ConvertOptions::new(Input::Dir(dir.clone()), &ok)).unwrap();
    assert_eq!(rep.tensors, 20);
    std::fs::remove_file(&ok).unwrap();

    // A dtype tern cannot read (I32 where a BF16 projection should be).
    let target = "model.layers.0.mlp.up_proj.weight";
    let with = |f: &dyn Fn(&mut Entry)| {
        reset();
        let mut all = tensors_of(&dir);
        for t in all.iter_mut().filter(|t| t.0 == target) {
            f(t);
        }
        write_safetensors(dir.join("model.safetensors"), &all, None).unwrap();
    };
    with(&|t| {
        t.1 = Dtype::I32;
        t.3.resize(t.3.len() * 2, 0);
    });
    let e = fails(&dir, &out);
    assert!(
        e.contains(target) && e.contains("model.safetensors") && e.contains("I32"),
        "{e}"
    );

    // NaN in a weight.
    with(&|t| {
        // bf16 NaN at element 5.
        t.3[10] = 0xc0;
        t.3[11] = 0x7f;
    });
    let e = fails(&dir, &out);
    assert!(
        e.contains(target) && e.contains("model.safetensors") && e.contains("NaN"),
        "{e}"
    );

    // A packed weight whose scale convention is unknown.
    reset();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let packed = fixture("bitnet/relu2_gqa_packed_auto");
    std::fs::copy(
        packed.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let pcfg = std::fs::read_to_string(packed.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        pcfg.replace("autobitlinear", "nonsense"),
    )
    .unwrap();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = fails(&dir, &out);
    assert!(
        e.contains("config.json") && e.contains("linear_class"),
        "{e}"
    );
}

/// A fake hub cache holding the tiny fixture as `tern/tiny` at `main`.
fn fake_cache(root: &Path) -> (PathBuf, String) {
    let commit = "0123456789abcdef0123456789abcdef01234567".to_owned();
    let repo = root.join("models--tern--tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), &commit).unwrap();
    copy_tiny(&repo.join("snapshots").join(&commit));
    (root.to_path_buf(), commit)
}

#[test]
fn hub_models_resolve_from_the_local_cache_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, commit) = fake_cache(&tmp.path().join("hub"));
    let hub = |repo: &str, rev: &str| Input::Hub {
        repo: repo.into(),
        revision: rev.into(),
        cache: Some(cache.clone()),
    };
    for rev in ["main", commit.as_str()] {
        let out = tmp.path().join(format!("{}.gguf", &rev[..4]));
        let rep = convert(&ConvertOptions::new(hub("tern/tiny", rev), &out)).unwrap();
        assert!(rep.model_dir.ends_with(format!("snapshots/{commit}")));
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.get_str("general.name").unwrap(), "tern/tiny");
    }
    // Not cached: the error says what to download and where the cache is.
    let out = tmp.path().join("absent.gguf");
    let e = convert(&ConvertOptions::new(hub("tern/other", "main"), &out))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tern/other")
            && e.contains("huggingface-cli download tern/other")
            && e.contains(&cache.display().to_string()),
        "{e}"
    );
    assert!(!out.exists());
    // A snapshot missing its weights names them.
    std::fs::remove_file(
        cache
            .join("models--tern--tiny/snapshots")
            .join(&commit)
            .join("model.safetensors"),
    )
    .unwrap();
    let e = convert(&ConvertOptions::new(hub("tern/tiny", "main"), &out))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("lacks"),
        "{e}"
    );
    let e = convert(&ConvertOptions::new(hub("../x", "main"), &out))
        .unwrap_err()
        .to_string();
    assert!(e.contains("OWNER/NAME"), "{e}");
}

/// Rewrite `src` without the `tokenizer.huggingface.json` key.
fn without_hf_json(src: &Path, dst: &Path) {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::create(dst).unwrap();
    for (k, v) in f.metadata().iter() {
        if k != "tokenizer.huggingface.json" {
            w.add_kv(k, v.clone()).unwrap();
        }
    }
    for t in f.tensors() {
        w.add_tensor_info(t.name.clone(), t.ty, &t.ne).unwrap();
    }
    let mut sink = w.begin_data().unwrap();
    for t in f.tensors() {
        sink.write_tensor(&t.name, f.tensor_data(t)).unwrap();
    }
    sink.finish().unwrap();
}

#[test]
fn byte_level_bpe_is_written_as_gpt2_keys_that_rebuild_the_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t.gguf");
    convert(&ConvertOptions::new(Input::Dir(fixture(TINY)), &out)).unwrap();
    let bare = tmp.path().join("bare.gguf");
    without_hf_json(&out, &bare);
    let g = GgufFile::open(&bare).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    let types = g.get_array("tokenizer.ggml.token_type").unwrap();
    // Added specials are control (3), <|sep|> user-defined (4), the rest normal.
    assert_eq!(types.get(0).and_then(|v| v.to_u64()), Some(1));
    assert_eq!(types.get(336).and_then(|v| v.to_u64()), Some(3));
    assert_eq!(types.get(339).and_then(|v| v.to_u64()), Some(4));
    let rebuilt = Tokenizer::from_gguf(&g).unwrap();
    let original = Tokenizer::from_file(fixture(TINY).join("tokenizer.json")).unwrap();
    for text in [
        "Hello world",
        "The quick brown fox's 123 jumps!\n  indented",
        "<|begin_of_text|>naïve café",
    ] {
        assert_eq!(
            rebuilt.encode(text, true).unwrap(),
            original.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!((rebuilt.bos_id(), rebuilt.eos_id()), (Some(336), Some(337)));
}

#[test]
fn sentencepiece_style_tokenizers_are_written_as_llama_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    copy_tiny(&dir);
    std::fs::copy(
        fixture("tokenizer/spm_unigram/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let out = tmp.path().join("spm.gguf");
    let rep = convert(&ConvertOptions::new(Input::Dir(dir.clone()), &out)).unwrap();
    assert_eq!(rep.tokenizer_model, "llama");
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "llama");
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "default");
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 340, "padded to the config's vocab_size");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = json["model"]["vocab"].as_array().unwrap();
    let scores = g.get_array("tokenizer.ggml.scores").unwrap();
    let types = g.get_array("tokenizer.ggml.token_type").unwrap();
    for (i, e) in vocab.iter().enumerate().skip(3) {
        assert_eq!(tokens.get(i), e[0].as_str(), "token {i}");
        let s = scores.get(i).and_then(|v| v.to_f64()).unwrap();
        assert_eq!(s as f32, e[1].as_f64().unwrap() as f32, "score {i}");
    }
    assert_eq!(
        types.get(0).and_then(|v| v.to_u64()),
        Some(3),
        "<unk>... is special"
    );
    assert_eq!(tokens.get(339), Some("[PAD339]"));
    assert_eq!(types.get(339).and_then(|v| v.to_u64()), Some(5));

    // No tokenizer at all: converts, says so, writes no tokenizer keys.
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let rep = convert(&ConvertOptions::new(Input::Dir(dir), &out)).unwrap();
    assert!(rep.warnings.iter().any(|w| w.contains("no tokenizer")));
    assert!(GgufFile::open(&out)
        .unwrap()
        .get("tokenizer.ggml.model")
        .is_none());
}
