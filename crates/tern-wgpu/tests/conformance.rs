//! The backend conformance suite on wgpu: on the fallback (software) adapter
//! — Mesa lavapipe in CI — and again with a 4 KiB binding limit so every op
//! takes its split path. Without any adapter each test prints why it was
//! skipped.

fn backend(opts: tern_wgpu::WgpuOptions) -> Option<tern_wgpu::Wgpu> {
    let opts = tern_wgpu::WgpuOptions {
        force_fallback: std::env::var_os("TERN_WGPU_ADAPTER").is_none(),
        adapter: std::env::var("TERN_WGPU_ADAPTER").ok(),
        ..opts
    };
    match tern_wgpu::Wgpu::with_options(&opts) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("wgpu conformance test skipped: {e}");
            None
        }
    }
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
