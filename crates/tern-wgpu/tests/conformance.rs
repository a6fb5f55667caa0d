//! The backend conformance suite on wgpu: on the fallback (software) adapter
//! — Mesa lavapipe in CI — or the one `TERN_WGPU_ADAPTER` names; again with a
//! 4 KiB binding limit so every op takes its split path; and again without
//! SHADER_F16. Without any adapter each test says why it was skipped (fails under CI=true).

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

/// Without SHADER_F16 (kernels that stage exact values in f16 fall back to f32).
mod without_f16 {
    tern_backend::conformance_tests!(match super::backend(tern_wgpu::WgpuOptions {
        no_f16: true,
        ..Default::default()
    }) {
        Some(b) => b,
        None => return,
    });
}
