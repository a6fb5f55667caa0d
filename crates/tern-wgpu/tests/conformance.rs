//! The backend conformance suite on wgpu: on the fallback (software) adapter
//! — Mesa lavapipe in CI — or the one `TERN_WGPU_ADAPTER` names; again with a
//! 4 KiB binding limit so every op takes its split path; and again without
//! SHADER_F16 and subgroup operations. Without any adapter each test says why it was skipped (fails under CI=true).

fn backend(opts: tern_wgpu::WgpuOptions) -> Option<tern_wgpu::Wgpu> {
    tern_wgpu::test_device(opts)
}

mod default_limits {
    tern_backend::conformance_tests!(match super::backend(Default::default()) {
        Some(b) => b,
        None => return,
    });
}

mod split_bindings {
    tern_backend::conformance_tests!(match super::backend(tern_wgpu::WgpuOptions {
        max_binding: Some(4096),
        ..Default::default()
    }) {
        Some(b) => b,
        None => return,
    });
}

/// Without SHADER_F16 (kernels that stage exact values in f16 fall back to
/// f32) and without subgroup operations (reductions through workgroup memory).
mod without_f16_and_subgroups {
    tern_backend::conformance_tests!(match super::backend(tern_wgpu::WgpuOptions {
        no_f16: true,
        no_subgroups: true,
        ..Default::default()
    }) {
        Some(b) => b,
        None => return,
    });
}

/// The fused block ops with at most 3 workgroups per dispatch, so that each
/// workgroup runs several batches of features (the path large models take),
/// with and without subgroup operations.
#[test]
fn fused_block_ops_in_batches() {
    for no_subgroups in [false, true] {
        let Some(b) = backend(tern_wgpu::WgpuOptions {
            fused_workgroups: Some(3),
            no_subgroups,
            ..Default::default()
        }) else {
            return;
        };
        tern_backend::conformance::fused_block_ops_match_composition(&b);
    }
}
