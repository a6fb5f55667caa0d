//! `Merged` exports `W_t * s + (alpha / r) B A`; averaging is element-wise.

use std::path::PathBuf;
use tern_lora::merge::{average, Merged};
use tern_lora::{Adapter, LoraConfig};
use tern_model::export::{export, ExportOptions};
use tern_model::{GgufWeights, HfWeights, Proj, WeightSource};
use tern_tensor::GgmlType;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/bitnet")
        .join(name)
}

fn adapter(cfg: &tern_model::BitNetConfig, seed: u64, fill: f32) -> Adapter {
    let mut ad = Adapter::init(
        cfg,
        LoraConfig {
            rank: 2,
            alpha: 6.0,
            dropout: 0.0,
            targets: vec![Proj::Q, Proj::Down],
        },
        seed,
    )
    .unwrap();
    for (_, (_, b)) in ad.tensors.iter_mut() {
        b.iter_mut()
            .enumerate()
            .for_each(|(j, v)| *v = fill * ((j % 7) as f32 - 3.0));
    }
    ad
}

#[test]
fn merged_export_holds_base_plus_scaled_product() {
    let src = HfWeights::open(&fixture("relu2_gqa")).unwrap();
    let cfg = src.config().clone();
    let ad = adapter(&cfg, 2, 0.01);
    let merged = Merged {
        base: &src,
        adapters: std::slice::from_ref(&ad),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("merged.gguf");
    let mut opts = ExportOptions::new(GgmlType::F32, GgmlType::F32);
    opts.dense_projections = true;
    export(&merged, &path, &opts, &mut ()).unwrap();

    let g = GgufWeights::open(&path).unwrap();
    assert!(g.file().tensor("blk.0.attn_q.scale").is_none());
    for (l, p) in [(0, Proj::Q), (1, Proj::Down), (1, Proj::K)] {
        let info = g
            .file()
            .tensor(&format!("blk.{l}.{}.weight", p.gguf_name()))
            .unwrap();
        assert_eq!(info.ty, GgmlType::F32);
        let got: Vec<f32> = g
            .file()
            .tensor_data(info)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // Independent reference: dequantized base plus s · B A in f64.
        let t = src.ternary(l, p).unwrap();
        let (out, inp) = p.shape(&cfg);
        let mut codes = vec![0i8; inp];
        for o in 0..out {
            t.row_codes(o, &mut codes);
            for i in 0..inp {
                let mut want = codes[i] as f64 * t.scale() as f64;
                if let Some((a, b)) = ad.tensors.get(&(l, p)) {
                    for k in 0..2 {
                        want += 3.0 * b[o * 2 + k] as f64 * a[k * inp + i] as f64;
                    }
                }
                let d = (got[o * inp + i] as f64 - want).abs();
                assert!(
                    d < 1e-6,
                    "layer {l} {p:?} [{o},{i}]: {} vs {want}",
                    got[o * inp + i]
                );
            }
        }
    }
    // Loading it back means re-ternarizing full-precision projections: reported.
    let _ = tern_model::Model::load(tern_backend::Cpu::with_threads(1), &g).unwrap();
    let notes = g.reternarized();
    assert!(
        notes.contains(&"blk.0.attn_q.weight".to_owned()),
        "{notes:?}"
    );
}

#[test]
fn averaging_is_weighted_and_shape_checked() {
    let src = HfWeights::open(&fixture("relu2_gqa")).unwrap();
    let cfg = src.config().clone();
    let (a1, a2) = (adapter(&cfg, 1, 0.01), adapter(&cfg, 9, -0.02));
    let avg = average(&[a1.clone(), a2.clone()], Some(&[3.0, 1.0])).unwrap();
    for (key, (a, b)) in &avg.tensors {
        for (j, v) in a.iter().enumerate() {
            let want = 0.75 * a1.tensors[key].0[j] as f64 + 0.25 * a2.tensors[key].0[j] as f64;
            assert!((*v as f64 - want).abs() < 1e-7);
        }
        for (j, v) in b.iter().enumerate() {
            let want = 0.75 * a1.tensors[key].1[j] as f64 + 0.25 * a2.tensors[key].1[j] as f64;
            assert!((*v as f64 - want).abs() < 1e-7);
        }
    }
    let equal = average(&[a1.clone(), a2.clone()], None).unwrap();
    assert_ne!(equal, avg);
    let mut other = a2.clone();
    other.cfg.alpha = 1.0;
    let e = average(&[a1.clone(), other], None).unwrap_err().to_string();
    assert!(e.contains("alpha"), "{e}");
    assert!(average(&[a1, a2], Some(&[1.0])).is_err());
}
