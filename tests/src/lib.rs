//! Shared helpers for tern's end-to-end tests.
//!
//! What tests find outside the repository, and where they look:
//!
//! | what | looked up as | made by |
//! |---|---|---|
//! | oracle venv (gguf-py, numpy, safetensors) | `$TERN_PYTHON`, `target/pyenv/bin/python` | `cargo xtask pyenv`, `.ci/run` |
//! | torch venv (torch, transformers, peft, tokenizers) | `$TERN_TORCH_PYTHON`, `target/torchenv/bin/python` | `cargo xtask pyenv --torch`, `.ci/run` (tests/requirements-torch.txt) |
//! | shared data sets (BiomedQA) | `$TERN_DATA_DIR/<set>/…`, `../shared/data/<set>/…` beside the repository | not in the repository |
//!
//! A test that lacks one calls [`missing`]: it prints `SKIPPED: …` and
//! passes on a developer's machine, and fails under `CI=true`.

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

pub use tern_backend::conformance::{in_ci, missing};

/// Run the program `bin` (a test's `env!("CARGO_BIN_EXE_…")`) with `args` in
/// the workspace root: (success, stdout, stderr).
pub fn run_bin<S: AsRef<std::ffi::OsStr>>(bin: &str, args: &[S]) -> (bool, String, String) {
    let out = Command::new(bin)
        .current_dir(workspace_root())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    (
        out.status.success(),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

/// `python` if it exists and `check` (a Python snippet) succeeds in it.
fn python_with(python: PathBuf, check: &str) -> Option<PathBuf> {
    let ok = python.exists()
        && Command::new(&python)
            .args(["-c", check])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    ok.then_some(python)
}

/// The Python interpreter of the oracle venv (gguf-py, numpy, safetensors).
///
/// Looked up as `$TERN_PYTHON`, then `target/pyenv/bin/python` (created by
/// `.ci/run` or `cargo xtask pyenv`). `None` (through [`missing`]: a
/// failure under `CI=true`) when it lacks gguf or numpy.
pub fn oracle_python() -> Option<PathBuf> {
    let candidate = std::env::var_os("TERN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/pyenv/bin/python"));
    let found = python_with(candidate.clone(), "import gguf, numpy");
    if found.is_none() {
        missing(format_args!(
            "oracle python {} with gguf and numpy not found; run `cargo xtask pyenv`",
            candidate.display()
        ));
    }
    found
}

/// The versions of `tests/requirements-torch.txt` that the torch venv must
/// have: the committed fixtures were made with them.
const TORCH_VENV_CHECK: &str = "import torch, transformers, peft, tokenizers, sys; \
    sys.exit(not (torch.__version__.split('+')[0] == '2.15.0' \
    and transformers.__version__ == '5.23.0' and peft.__version__ == '0.21.2' \
    and tokenizers.__version__ == '0.23.3'))";

/// The Python interpreter of the torch venv (torch, transformers, peft and
/// tokenizers at the versions of `tests/requirements-torch.txt`).
///
/// Looked up as `$TERN_TORCH_PYTHON`, then `target/torchenv/bin/python`
/// (created by `.ci/run`). `None` (through [`missing`]: a failure under
/// `CI=true`) when it is absent or has other versions.
pub fn torch_python() -> Option<PathBuf> {
    let candidate = std::env::var_os("TERN_TORCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/torchenv/bin/python"));
    let found = python_with(candidate.clone(), TORCH_VENV_CHECK);
    if found.is_none() {
        missing(format_args!(
            "torch venv {} with torch 2.15.0, transformers 5.23.0, peft 0.21.2 and \
             tokenizers 0.23.3 not found; create it with `python3 -m venv target/torchenv && \
             target/torchenv/bin/pip install -r tests/requirements-torch.txt` (as .ci/run does)",
            candidate.display()
        ));
    }
    found
}

/// A file of a shared data set (e.g. `biomedqa/train.jsonl`), which is not
/// part of the repository: looked up under `$TERN_DATA_DIR`, then under
/// `../shared/data` beside the repository (where this workplace and CI keep
/// it). `None` (through [`missing`]: a failure under `CI=true`) when neither
/// has it.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let env = std::env::var_os("TERN_DATA_DIR").map(|d| PathBuf::from(d).join(rel));
    let beside = workspace_root().join("../shared/data").join(rel);
    if let Some(p) = env.iter().chain([&beside]).find(|p| p.is_file()) {
        return Some(p.clone());
    }
    let env = env.map_or(
        format!("$TERN_DATA_DIR/{rel} (TERN_DATA_DIR is not set)"),
        |p| p.display().to_string(),
    );
    missing(format_args!(
        "data file {rel} not found at {env} nor at {}",
        beside.display()
    ));
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
