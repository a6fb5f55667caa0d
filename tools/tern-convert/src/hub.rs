//! Finding a Hugging Face model in the local hub cache.
//!
//! The cache layout (shared with `huggingface_hub` and the `hf-hub` crate):
//! `<cache>/models--OWNER--NAME/refs/<branch>` holds a commit hash and
//! `<cache>/models--OWNER--NAME/snapshots/<commit>/` holds the files (links
//! into `blobs/`). The cache folder is `$HF_HUB_CACHE`, else `$HF_HOME/hub`,
//! else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
//!
//! Lookup is offline: with the files cached, conversion needs no network.
//! With the `download` feature, missing files are fetched through hf-hub's
//! blocking API into the same cache first.

use crate::ConvertError;
use std::path::{Path, PathBuf};

/// The hub cache folder from the environment (see the module docs).
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var("HF_HUB_CACHE") {
        return p;
    }
    if let Some(p) = var("HF_HOME") {
        return p.join("hub");
    }
    if let Some(p) = var("XDG_CACHE_HOME") {
        return p.join("huggingface").join("hub");
    }
    var("HOME")
        .or_else(|| var("USERPROFILE"))
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache")
        .join("huggingface")
        .join("hub")
}

fn hub_err(repo: &str, reason: String) -> ConvertError {
    ConvertError::Hub {
        repo: repo.to_owned(),
        reason,
    }
}

/// `OWNER/NAME` checked: one slash, no empty part, no `..`.
fn check_repo_id(repo: &str) -> Result<(), ConvertError> {
    let ok = matches!(repo.split('/').collect::<Vec<_>>().as_slice(),
        [o, n] if !o.is_empty() && !n.is_empty() && *o != ".." && *n != ".." && *o != "." && *n != ".");
    if ok {
        Ok(())
    } else {
        Err(hub_err(
            repo,
            "expected a model id of the form OWNER/NAME".into(),
        ))
    }
}

/// Folder of a repo inside the cache (`models--OWNER--NAME`).
fn repo_folder(repo: &str, revision: &str) -> String {
    hf_hub::Repo::with_revision(
        repo.to_owned(),
        hf_hub::RepoType::Model,
        revision.to_owned(),
    )
    .folder_name()
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The snapshot folder of `repo` at `revision` (a branch, tag or commit) in
/// `cache`, checked to hold `config.json` and every safetensors file the model
/// needs. The error says what to download and where the cache is.
pub fn resolve_cached(cache: &Path, repo: &str, revision: &str) -> Result<PathBuf, ConvertError> {
    check_repo_id(repo)?;
    let base = cache.join(repo_folder(repo, revision));
    let how = format!(
        "download it while online with `huggingface-cli download {repo}{}` (files: config.json, \
         tokenizer.json or tokenizer.model, model.safetensors or model.safetensors.index.json \
         with its shards), or set HF_HUB_CACHE / HF_HOME to the cache that holds it; the cache \
         searched is {}",
        if revision == "main" {
            String::new()
        } else {
            format!(" --revision {revision}")
        },
        cache.display()
    );
    let commit = if is_commit(revision) {
        revision.to_owned()
    } else {
        let r = base.join("refs").join(revision);
        match std::fs::read_to_string(&r) {
            Ok(s) => s.trim().to_owned(),
            Err(_) => {
                return Err(hub_err(
                    repo,
                    format!(
                        "revision {revision:?} is not in the local cache ({} is missing); {how}",
                        r.display()
                    ),
                ))
            }
        }
    };
    if !is_commit(&commit) {
        return Err(hub_err(
            repo,
            format!("the cache ref for {revision:?} holds {commit:?}, not a commit hash"),
        ));
    }
    let snap = base.join("snapshots").join(&commit);
    let mut missing = Vec::new();
    if !snap.join("config.json").is_file() {
        missing.push("config.json".to_owned());
    }
    let index = snap.join(tern_io::safetensors::INDEX_FILE_NAME);
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| hub_err(repo, format!("{}: {e}", index.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| hub_err(repo, format!("{}: invalid JSON: {e}", index.display())))?;
        let mut shards: Vec<&str> = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| m.values().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        shards.sort_unstable();
        shards.dedup();
        for s in shards {
            if !snap.join(s).is_file() {
                missing.push(s.to_owned());
            }
        }
    } else if !snap.join(tern_io::safetensors::SINGLE_FILE_NAME).is_file() {
        missing.push(format!(
            "{} (or {})",
            tern_io::safetensors::SINGLE_FILE_NAME,
            tern_io::safetensors::INDEX_FILE_NAME
        ));
    }
    if !missing.is_empty() {
        return Err(hub_err(
            repo,
            format!(
                "snapshot {} lacks {}; {how}",
                snap.display(),
                missing.join(", ")
            ),
        ));
    }
    Ok(snap)
}

/// Fetch the files of `repo` into `cache` through hf-hub's blocking API
/// (network), then resolve the snapshot as [`resolve_cached`] does.
#[cfg(feature = "download")]
pub fn download(cache: &Path, repo: &str, revision: &str) -> Result<PathBuf, ConvertError> {
    use hf_hub::api::sync::ApiBuilder;
    check_repo_id(repo)?;
    let api = ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
        .build()
        .map_err(|e| hub_err(repo, e.to_string()))?;
    let r = api.repo(hf_hub::Repo::with_revision(
        repo.to_owned(),
        hf_hub::RepoType::Model,
        revision.to_owned(),
    ));
    let get = |f: &str| r.get(f).map_err(|e| hub_err(repo, format!("{f}: {e}")));
    get("config.json")?;
    for optional in ["tokenizer.json", "tokenizer.model", "tokenizer_config.json"] {
        let _ = r.get(optional);
    }
    match r.get(tern_io::safetensors::INDEX_FILE_NAME) {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| hub_err(repo, format!("{}: {e}", index.display())))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| hub_err(repo, format!("{}: {e}", index.display())))?;
            let mut shards: Vec<String> = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                get(&s)?;
            }
        }
        Err(_) => {
            get(tern_io::safetensors::SINGLE_FILE_NAME)?;
        }
    }
    resolve_cached(cache, repo, revision)
}
