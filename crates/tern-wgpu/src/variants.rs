//! Every WGSL kernel the crate can build, offline (no device): each one is
//! parsed and validated by naga, its parameter struct checked against the
//! Rust struct its op passes (naga's layout of the WGSL `struct P` against
//! `size_of`), and its source snapshotted (`src/snapshots/`, insta) so that a
//! change to a generated kernel shows up in review. `Ctx::dispatch` checks
//! the same size on every dispatch.

use std::mem::size_of;

use wgpu::naga;

use crate::ops;
use crate::shader::{preprocess, reflect};

/// One kernel: its cache key, final source and the size of its parameter
/// struct on the host.
pub(crate) struct Variant {
    pub key: String,
    pub code: String,
    pub params: usize,
    /// Built for an adapter with SHADER_F16 (`enable f16;` first).
    pub f16: bool,
}

impl Variant {
    pub fn new(key: &str, code: String, params: usize) -> Variant {
        Variant {
            key: key.to_string(),
            code,
            params,
            f16: false,
        }
    }

    pub fn f16(mut self, f16: bool) -> Variant {
        if f16 {
            self.code = crate::shader::finish(self.code, true);
            self.key.push_str("/f16");
        }
        self.f16 = f16;
        self
    }
}

fn all() -> Vec<Variant> {
    use ops::attention::{AttnBwdParams, AttnParams, CombineParams, DeltaParams, COMBINE, DELTA};
    use ops::basic::{BasicParams, BASIC};
    use ops::elementwise::{ElemParams, ELEM_SRC};
    use ops::embedding::{EmbedParams, EMBED_SRC};
    use ops::loss::{LossParams, LossSegParams, LOSS_SEG_SRC, LOSS_SRC};
    use ops::norm::{ColsumParams, NormParams, COLSUM_SRC, NORM_SRC};
    use ops::reduce::{ReduceParams, REDUCE_SRC};
    use ops::rope::{RopeParams, ROPE};
    let fixed = |key: &str, src: &str, defs: &[&str], params: usize| {
        Variant::new(key, preprocess(src, defs, &[]), params)
    };
    let mut v = Vec::new();
    let bp = size_of::<BasicParams>();
    for def in ["AXPY", "SCALE", "FILL", "COPY"] {
        v.push(fixed(
            &format!("basic/{}", def.to_lowercase()),
            BASIC,
            &[def],
            bp,
        ));
    }
    v.extend(ops::gemm::variants());
    v.extend(ops::fused::variants());
    v.extend(ops::half::variants());
    v.extend(ops::multi::variants());
    let rp = size_of::<ReduceParams>();
    v.push(fixed("dense/reduce_sq", REDUCE_SRC, &["SQUARE"], rp));
    v.push(fixed("dense/reduce", REDUCE_SRC, &["PLAIN"], rp));
    v.push(Variant::new(
        "dense/argmax",
        ops::reduce::argmax_source(),
        size_of::<ops::reduce::ArgmaxParams>(),
    ));
    v.push(fixed("dense/reduce_DOT3", REDUCE_SRC, &["DOT3"], rp));
    let ep = size_of::<ElemParams>();
    for (key, defs) in [
        ("dense/dropout", &["DROPOUT"][..]),
        ("dense/gate_relu2", &["GATE", "GATE_RELU2"]),
        ("dense/gate_silu", &["GATE", "GATE_SILU"]),
        ("dense/gate_bwd_relu2", &["GATE_BWD", "GBWD_RELU2"]),
        ("dense/gate_bwd_silu", &["GATE_BWD", "GBWD_SILU"]),
        ("dense/adamw", &["ADAMW"]),
    ] {
        v.push(fixed(key, ELEM_SRC, defs, ep));
    }
    let np = size_of::<NormParams>();
    for def in [
        "RMS",
        "RMS_FIN",
        "RMS_APPLY",
        "RMSB",
        "RMSB_FIN",
        "RMSB_APPLY",
    ] {
        v.push(fixed(
            &format!("dense/{}", def.to_lowercase()),
            NORM_SRC,
            &[def],
            np,
        ));
    }
    for def in ["RMS", "RMSB"] {
        v.push(fixed(
            &format!("dense/{}/sg", def.to_lowercase()),
            NORM_SRC,
            &[def, "SG"],
            np,
        ));
    }
    let cp = size_of::<ColsumParams>();
    v.push(fixed("dense/colsum_prod", COLSUM_SRC, &["PROD"], cp));
    v.push(fixed("dense/colsum_plain", COLSUM_SRC, &["PLAIN"], cp));
    let mp = size_of::<EmbedParams>();
    for def in ["GATHER", "LINKS", "SCATTER"] {
        v.push(fixed(
            &format!("dense/embed_{}", def.to_lowercase()),
            EMBED_SRC,
            &[def],
            mp,
        ));
    }
    v.push(fixed("dense/ce", LOSS_SRC, &[], size_of::<LossParams>()));
    v.push(fixed(
        "dense/ce_grad",
        LOSS_SRC,
        &["GRAD"],
        size_of::<LossParams>(),
    ));
    let sp = size_of::<LossSegParams>();
    for def in ["PART", "FIN", "GSEG"] {
        v.push(fixed(
            &format!("dense/ce_{}", def.to_lowercase()),
            LOSS_SEG_SRC,
            &[def],
            sp,
        ));
    }
    v.push(fixed("attn/rope", ROPE, &[], size_of::<RopeParams>()));
    v.push(fixed(
        "attn/combine",
        COMBINE,
        &[],
        size_of::<CombineParams>(),
    ));
    v.push(fixed("attn/delta", DELTA, &[], size_of::<DeltaParams>()));
    v.extend(ops::attention::variants([
        size_of::<AttnParams>(),
        size_of::<AttnBwdParams>(),
    ]));
    v.extend(ops::ternary::variants());
    v
}

/// The snapshot name of a cache key (`/` is not a file name character).
fn snapshot_name(key: &str) -> String {
    key.replace('/', "__")
}

#[test]
fn every_kernel_parses_validates_and_matches_its_parameter_struct() {
    let variants = all();
    let mut keys: Vec<&str> = variants.iter().map(|v| v.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), variants.len(), "two variants share a key");
    for v in &variants {
        let shape = reflect(&v.code).unwrap_or_else(|e| panic!("{}: {e}", v.key));
        assert_eq!(
            shape.params_size as usize, v.params,
            "{}: the WGSL parameter struct is {} bytes, the Rust one {}",
            v.key, shape.params_size, v.params
        );
        let module = naga::front::wgsl::parse_str(&v.code).expect("parsed above");
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", v.key, e.emit_to_string(&v.code)));
    }
}

#[test]
fn generated_kernels_match_their_snapshots() {
    let variants = all();
    // no snapshot outlives its kernel
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/snapshots");
    let names: Vec<String> = variants
        .iter()
        .map(|v| format!("tern_wgpu__variants__{}.snap", snapshot_name(&v.key)))
        .collect();
    for entry in std::fs::read_dir(dir).expect("src/snapshots") {
        let file = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if file.ends_with(".snap") {
            assert!(names.contains(&file), "{file}: no kernel has this snapshot");
        }
    }
    for v in variants {
        insta::assert_snapshot!(snapshot_name(&v.key), v.code);
    }
}
