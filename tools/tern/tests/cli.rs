//! The command line itself: README against the built-in configs, prompt
//! files, `tern gen-checkpoint` with `tern convert`'s target checks,
//! `tern adapters init`, and `tern bench`'s JSON line.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run `tern ARGS` in the workspace root: (success, stdout, stderr).
fn tern<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    tern_tests::run_bin(env!("CARGO_BIN_EXE_tern"), args)
}

/// The built-in config names README lists: the backticked words between
/// "built-in config" and the next parenthesis in the paragraph that explains
/// `random:NAME[@SEED]`.
fn readme_zoo_names() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let para = readme
        .split("\n\n")
        .find(|p| p.contains("`random:NAME[@SEED]`"))
        .expect("README explains random:NAME[@SEED]");
    let after = &para[para
        .find("built-in config")
        .expect("names the built-in configs")..];
    let list = &after[..after.find('(').expect("the list ends at a parenthesis")];
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_lists_exactly_the_built_in_configs() {
    let zoo: Vec<String> = tern_model::config::ZOO
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(readme_zoo_names(), zoo);
    // And `--help` shows the same list.
    let (ok, help, err) = tern(&["generate", "--help"]);
    assert!(ok, "{err}");
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains(&zoo.join(", ")), "{help}");
}

#[test]
fn a_prompt_file_gives_the_same_tokens_as_the_prompt_text() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompt.txt");
    std::fs::write(&file, "first 3 0 2 =\n").unwrap();
    let ids = |flag: &str, value: &Path, name: &str| {
        let out = dir.path().join(format!("{name}.json"));
        let (ok, _, err) = tern(&[
            Path::new("logits"),
            Path::new("-m"),
            Path::new("models/demo/tern-demo.gguf"),
            Path::new(flag),
            value,
            Path::new("-o"),
            &dir.path().join(format!("{name}.npy")),
            Path::new("--ids-out"),
            &out,
        ]);
        assert!(ok, "{err}");
        std::fs::read_to_string(out).unwrap()
    };
    let from_file = ids("-f", &file, "file");
    let from_text = ids("-p", Path::new("first 3 0 2 ="), "text");
    assert_eq!(from_file, from_text);
    assert!(from_file.starts_with("[1, "), "{from_file}");
}

/// A tiny config of the 1bitLLM kind (SiLU, untied head), rows of 256 so
/// that TQ2_0 stores every projection.
fn tiny_config(dir: &Path, tied: bool) -> PathBuf {
    let path = dir.join(format!("config-{tied}.json"));
    let cfg = serde_json::json!({
        "model_type": "bitnet",
        "hidden_size": 256,
        "intermediate_size": 256,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 64,
        "hidden_act": "silu",
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": tied,
        "max_position_embeddings": 32,
        "bos_token_id": 1,
        "eos_token_id": 2
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

#[test]
fn converting_an_untied_model_for_llama_cpp_warns_why_it_will_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut warned = Vec::new();
    for tied in [false, true] {
        let ckpt = dir.path().join(format!("ckpt-{tied}"));
        let (ok, _, err) = tern(&[
            "gen-checkpoint".as_ref(),
            "--config".as_ref(),
            tiny_config(dir.path(), tied).as_os_str(),
            "--out".as_ref(),
            ckpt.as_os_str(),
        ]);
        assert!(ok, "{err}");
        for target in ["llamacpp", "bitnetcpp"] {
            let out = dir.path().join(format!("{tied}-{target}.gguf"));
            let (ok, _, err) = tern(&[
                "convert".as_ref(),
                ckpt.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
                "--target".as_ref(),
                target.as_ref(),
                "--quiet".as_ref(),
            ]);
            assert!(ok, "{err}");
            // The reason for the warning: the file holds a head tensor that
            // llama.cpp's `bitnet` graph has no place for.
            let f = tern_io::gguf::GgufFile::open(&out).unwrap();
            assert_eq!(f.tensor("output.weight").is_some(), !tied);
            if err.contains("wrong number of tensors") {
                warned.push((tied, target));
            }
        }
    }
    assert_eq!(warned, [(false, "llamacpp")]);
}

#[test]
fn adapters_init_writes_peft_init_or_a_seeded_uniform_b() {
    use tern_lora::{Adapter, LoraConfig};
    use tern_model::WeightSource;
    use tern_tensor::rng::SplitMix64;
    let dir = tempfile::tempdir().unwrap();
    let model = "models/demo/tern-demo.gguf";
    let cfg = tern_model::GgufWeights::open(&root().join(model))
        .unwrap()
        .config()
        .clone();
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: LoraConfig::parse_targets("q,down").unwrap(),
    };
    let want = Adapter::init(&cfg, lora, 11).unwrap();
    for random_b in [None, Some("0.05")] {
        let out = dir.path().join(format!("ad-{}", random_b.is_some()));
        let mut args = vec![
            "adapters",
            "init",
            "-m",
            model,
            "--lora-rank",
            "4",
            "--lora-alpha",
            "8",
            "--lora-modules",
            "q,down",
            "--seed",
            "11",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(random_b.iter().flat_map(|&x| ["--random-b", x]));
        let (ok, _, err) = tern(&args);
        assert!(ok, "{err}");
        let got = tern_lora::io::load_peft(&out, &cfg).unwrap();
        assert_eq!(got.cfg.rank, 4);
        assert_eq!(got.tensors.len(), want.tensors.len());
        let mut rng = SplitMix64::new(11);
        for ((k, (a, b)), (k0, (a0, _))) in got.tensors.iter().zip(&want.tensors) {
            assert_eq!(k, k0);
            assert_eq!(a, a0, "A of {k:?}");
            for &v in b.iter() {
                let expect = match random_b {
                    None => 0.0,
                    Some(_) => (2.0 * rng.next_f32() - 1.0) * 0.05,
                };
                assert_eq!(v, expect, "B of {k:?}");
            }
        }
    }
}

/// `tern bench` names the storage of the embedding and head in its JSON
/// line: the CPU's default (f32) and `--head f16`.
#[test]
fn bench_reports_the_head_precision() {
    for (extra, want) in [
        (None, "\"head\":\"f32\""),
        (Some("f16"), "\"head\":\"f16\""),
    ] {
        let mut args = vec![
            "bench",
            "--model",
            "random:125m",
            "--threads",
            "2",
            "--lora-steps",
            "1",
            "--ctx",
            "8",
            "--prefill",
            "4",
            "--decode",
            "1",
            "--warmup",
            "0",
            "--quiet",
        ];
        if let Some(h) = extra {
            args.extend(["--head", h]);
        }
        let (ok, out, err) = tern(&args);
        assert!(ok, "{err}");
        assert!(out.contains(want), "{extra:?}: {out}");
    }
}
