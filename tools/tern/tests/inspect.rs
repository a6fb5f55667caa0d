//! Snapshots of `tern inspect` on committed fixtures (insta).

/// Run `tern ARGS` in the workspace root: (success, stdout, stderr).
fn tern<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    tern_tests::run_bin(env!("CARGO_BIN_EXE_tern"), args)
}

#[test]
fn inspect_gguf_text() {
    let (ok, stdout, stderr) = tern(&["inspect", "tests/fixtures/gguf/pywritten.gguf"]);
    assert!(ok, "{stderr}");
    insta::assert_snapshot!(stdout);
}

#[test]
fn inspect_gguf_json() {
    let (ok, stdout, stderr) = tern(&["inspect", "--json", "tests/fixtures/gguf/pywritten.gguf"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    insta::assert_json_snapshot!(v);
}

#[test]
fn inspect_sharded_safetensors_text() {
    let (ok, stdout, stderr) = tern(&["inspect", "tests/fixtures/safetensors/sharded"]);
    assert!(ok, "{stderr}");
    insta::assert_snapshot!(stdout);
}

#[test]
fn inspect_bad_file_names_it() {
    let (ok, _, stderr) = tern(&["inspect", "tests/fixtures/malformed/gguf/bad_magic.gguf"]);
    assert!(!ok);
    assert!(stderr.contains("bad_magic.gguf"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
