//! Shared helpers for tern's end-to-end tests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Path of a committed fixture under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// Root of the workspace.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A global allocator that remembers the largest single allocation request.
///
/// Install it in a test binary with
/// `#[global_allocator] static A: tern_tests::LargestAlloc = tern_tests::LargestAlloc;`
/// and read [`LargestAlloc::largest`] after [`LargestAlloc::reset`] to prove a
/// parser never asked for more memory than a hostile file could justify.
pub struct LargestAlloc;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

impl LargestAlloc {
    /// Forget the largest allocation seen so far.
    pub fn reset() {
        LARGEST.store(0, Ordering::SeqCst);
    }
    /// Largest single allocation (bytes) since the last reset, on any thread.
    pub fn largest() -> usize {
        LARGEST.load(Ordering::SeqCst)
    }
}

unsafe impl GlobalAlloc for LargestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

/// The Python interpreter of the oracle venv (gguf-py, numpy, safetensors).
///
/// Looked up as `$TERN_PYTHON`, then `target/pyenv/bin/python` (created by
/// `.ci/run` or `cargo xtask pyenv`). Returns `None` when neither exists;
/// under `CI=true` that is a failure, since CI must run every oracle.
pub fn oracle_python() -> Option<PathBuf> {
    let candidate = std::env::var_os("TERN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/pyenv/bin/python"));
    let ok = candidate.exists()
        && Command::new(&candidate)
            .args(["-c", "import gguf, numpy"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if ok {
        return Some(candidate);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "oracle python {} with gguf and numpy is required under CI=true (run .ci/run)",
            candidate.display()
        );
    }
    eprintln!(
        "SKIPPED: oracle python {} with gguf+numpy not found; run `cargo xtask pyenv`",
        candidate.display()
    );
    None
}

/// Run `python script args...` and return stdout, panicking with stderr on failure.
pub fn run_python(python: &Path, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(python)
        .args(args)
        .output()
        .expect("spawn python");
    assert!(
        out.status.success(),
        "python {:?} failed:\n{}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python printed UTF-8")
}
