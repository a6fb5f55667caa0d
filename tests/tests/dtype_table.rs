//! tern's GGML type table against gguf-py's `GGML_QUANT_SIZES` (the oracle).

use tern_tensor::GgmlType;

#[test]
fn type_table_matches_gguf_py() {
    let Some(python) = tern_tests::oracle_python() else {
        return;
    };
    let script = "import json\nfrom gguf.constants import GGML_QUANT_SIZES as S\n\
                  print(json.dumps([[t.value, t.name, b, n] for t, (b, n) in S.items()]))";
    let out = tern_tests::run_python(&python, &["-c".as_ref(), script.as_ref()]);
    let rows: Vec<(u32, String, usize, usize)> = serde_json::from_str(&out).unwrap();
    assert!(rows.len() > 30, "gguf-py listed only {} types", rows.len());
    let mut checked = 0;
    for (id, name, block, bytes) in rows {
        let ty = GgmlType::from_id(id)
            .unwrap_or_else(|| panic!("gguf-py type {name} (id {id}) unknown to tern"));
        assert_eq!(ty.name(), name, "name of id {id}");
        assert_eq!(ty.block_size(), block, "block size of {name}");
        // gguf-py sizes Q8_1 with two f32 (40 bytes); ggml's block_q8_1 holds two
        // f16 (36 bytes). Q8_1 is a compute-only type that files never contain.
        if ty != GgmlType::Q8_1 {
            assert_eq!(ty.block_bytes(), bytes, "block bytes of {name}");
        }
        checked += 1;
    }
    // Everything tern knows beyond gguf-py is the bitnet.cpp fork's I2_S.
    let extra: Vec<_> = GgmlType::all().filter(|t| *t == GgmlType::I2_S).collect();
    assert_eq!(checked + extra.len(), GgmlType::all().count());
}
