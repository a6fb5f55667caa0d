//! Adapter files: PEFT and llama.cpp GGUF round trips, and bad input.

use tern_lora::io::{load_gguf, load_peft, save_gguf, save_peft};
use tern_lora::{Adapter, LoraConfig};
use tern_model::{BitNetConfig, Proj};

fn tiny() -> BitNetConfig {
    let mut c = BitNetConfig::zoo("125m").unwrap();
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = Some(2);
    c.head_dim = Some(16);
    c.vocab_size = 50;
    c
}

fn adapter(targets: Vec<Proj>) -> Adapter {
    let mut ad = Adapter::init(
        &tiny(),
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.05,
            targets,
        },
        3,
    )
    .unwrap();
    for (i, (_, (_, b))) in ad.tensors.iter_mut().enumerate() {
        b.iter_mut()
            .enumerate()
            .for_each(|(j, v)| *v = ((i * 31 + j) % 17) as f32 * 0.01 - 0.08);
    }
    ad
}

#[test]
fn peft_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let ad = adapter(vec![Proj::Q, Proj::V, Proj::Down]);
    save_peft(&ad, dir.path(), "tern/test").unwrap();
    let back = load_peft(dir.path(), &tiny()).unwrap();
    assert_eq!(back, ad);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    let ck = tern_io::safetensors::Checkpoint::open(dir.path().join("adapter_model.safetensors"))
        .unwrap();
    let e = ck
        .get("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")
        .unwrap();
    assert_eq!(e.shape, vec![64, 4]);
    let e = ck
        .get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!(e.shape, vec![4, 64]);
}

#[test]
fn gguf_round_trip_is_exact_and_uses_llama_cpp_layout() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.gguf");
    let mut ad = adapter(Proj::ALL.to_vec());
    save_gguf(&ad, &p, "bitnet", &Default::default()).unwrap();
    let f = tern_io::gguf::GgufFile::open(&p).unwrap();
    assert_eq!(f.get_str("general.type").unwrap(), "adapter");
    assert_eq!(f.get_str("adapter.type").unwrap(), "lora");
    let a = f.tensor("blk.1.ffn_down.weight.lora_a").unwrap();
    assert_eq!(a.ne, vec![96, 4]);
    let b = f.tensor("blk.1.ffn_down.weight.lora_b").unwrap();
    assert_eq!(b.ne, vec![4, 64]);
    let back = load_gguf(&p, &tiny()).unwrap();
    // GGUF adapters carry no dropout.
    ad.cfg.dropout = 0.0;
    assert_eq!(back, ad);
}

#[test]
fn bad_adapters_name_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let ad = adapter(vec![Proj::Q]);
    save_peft(&ad, dir.path(), "x").unwrap();
    // A model whose shapes disagree.
    let mut other = tiny();
    other.hidden_size = 32;
    other.head_dim = Some(8);
    let e = load_peft(dir.path(), &other).unwrap_err().to_string();
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("q_proj.lora_A"),
        "{e}"
    );
    // Missing rank.
    let cj = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&cj)
        .unwrap()
        .replace("\"r\": 4", "\"rr\": 4");
    std::fs::write(&cj, text).unwrap();
    let e = load_peft(dir.path(), &tiny()).unwrap_err().to_string();
    assert!(
        e.contains("adapter_config.json") && e.contains("`r`"),
        "{e}"
    );
    // rsLoRA scales differently: refused rather than misread.
    let text = std::fs::read_to_string(&cj)
        .unwrap()
        .replace("\"rr\": 4", "\"r\": 4")
        .replace("\"use_rslora\": false", "\"use_rslora\": true");
    std::fs::write(&cj, text).unwrap();
    let e = load_peft(dir.path(), &tiny()).unwrap_err().to_string();
    assert!(e.contains("use_rslora"), "{e}");
    // A model GGUF is not an adapter.
    let p = dir.path().join("m.gguf");
    let mut w = tern_io::gguf::GgufWriter::create(&p).unwrap();
    w.add_kv("general.architecture", "bitnet").unwrap();
    w.begin_data().unwrap().finish().unwrap();
    let e = load_gguf(&p, &tiny()).unwrap_err().to_string();
    assert!(e.contains("m.gguf") && e.contains("adapter"), "{e}");
}

#[test]
fn gguf_adapter_reads_in_gguf_py() {
    let Some(python) = tern_tests::oracle_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.gguf");
    let ad = adapter(vec![Proj::K, Proj::Up]);
    save_gguf(&ad, &p, "bitnet", &Default::default()).unwrap();
    let script = "import sys, json\nfrom gguf import GGUFReader\nr = GGUFReader(sys.argv[1])\n\
                  print(json.dumps({t.name: [list(map(int, t.shape)), float(t.data.sum())] for t in r.tensors}))";
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let k = &v["blk.0.attn_k.weight.lora_a"];
    assert_eq!(k[0], serde_json::json!([64, 4]));
    let (a, _) = &ad.tensors[&(0, Proj::K)];
    let sum: f64 = a.iter().map(|&x| x as f64).sum();
    assert!((k[1].as_f64().unwrap() - sum).abs() < 1e-4);
    assert_eq!(v.as_object().unwrap().len(), 8);
}

#[test]
fn post_scales_are_divided_out_for_llama_cpp_and_restored_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.gguf");
    let ad = adapter(Proj::ALL.to_vec());
    let mut post = tern_lora::io::PostScales::new();
    post.insert((1, Proj::Gate), 0.04);
    post.insert((0, Proj::Up), 0.25);
    save_gguf(&ad, &p, "bitnet", &post).unwrap();
    // In the file: B of the compensated projections divided by the factor.
    let f = tern_io::gguf::GgufFile::open(&p).unwrap();
    let raw = |name: &str| -> Vec<f32> {
        f.tensor_data(f.tensor(name).unwrap())
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let gate_b = &ad.tensors[&(1, Proj::Gate)].1;
    for (x, y) in raw("blk.1.ffn_gate.weight.lora_b").iter().zip(gate_b) {
        assert_eq!(*x, y / 0.04);
    }
    let q_b = &ad.tensors[&(0, Proj::Q)].1;
    assert_eq!(&raw("blk.0.attn_q.weight.lora_b"), q_b);
    // Loading restores the adapter (up to one rounding of the division).
    let back = load_gguf(&p, &tiny()).unwrap();
    for (key, (a, b)) in &ad.tensors {
        assert_eq!(&back.tensors[key].0, a);
        for (x, y) in back.tensors[key].1.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-6 * y.abs().max(1e-3),
                "{key:?}: {x} vs {y}"
            );
        }
    }
    assert!(save_gguf(&ad, &p, "bitnet", &[((0, Proj::Up), 0.0)].into()).is_err());
}
