//! Errors of the data pipeline. Every variant a user can cause names the
//! file, and the 1-based line where one record is at fault.

use std::path::{Path, PathBuf};

/// Why a data set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The data file (or a chat template file) could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something about the file as a whole: empty, unknown extension, not
    /// JSON Lines, a split that leaves nothing to train on.
    #[error("{}: {message}", file.display())]
    File { file: PathBuf, message: String },
    /// A line that is not valid JSON (the serde_json message says where).
    #[error("{}:{line}: malformed JSON: {message}", file.display())]
    Json {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// A record with the wrong shape: no `text` / `messages`, a message
    /// without `role` or `content`, an unknown role, ...
    #[error("{}:{line}: {message}", file.display())]
    Record {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// The chat template raised an error (or failed) on this record.
    #[error("{}:{line}: chat template {template} failed to render: {message}", file.display())]
    Render {
        file: PathBuf,
        line: usize,
        template: String,
        message: String,
    },
    /// The tokenizer failed on this record.
    #[error("{}:{line}: tokenizer {tokenizer}: {message}", file.display())]
    Tokenize {
        file: PathBuf,
        line: usize,
        tokenizer: String,
        message: String,
    },
    /// The chat template itself is unusable (missing, not a template, does
    /// not compile).
    #[error("chat template {template}: {message}")]
    Template { template: String, message: String },
    /// The options contradict each other or the data.
    #[error("data options: {0}")]
    Options(String),
}

impl DataError {
    /// The data file the error is about, when there is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            DataError::Io { file, .. }
            | DataError::File { file, .. }
            | DataError::Json { file, .. }
            | DataError::Record { file, .. }
            | DataError::Render { file, .. }
            | DataError::Tokenize { file, .. } => Some(file),
            DataError::Template { .. } | DataError::Options(_) => None,
        }
    }

    /// The 1-based line of the offending record, when one record is at fault.
    pub fn line(&self) -> Option<usize> {
        match self {
            DataError::Json { line, .. }
            | DataError::Record { line, .. }
            | DataError::Render { line, .. }
            | DataError::Tokenize { line, .. } => Some(*line),
            _ => None,
        }
    }

    pub(crate) fn record(file: &Path, line: usize, message: impl Into<String>) -> Self {
        DataError::Record {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn file_msg(file: &Path, message: impl Into<String>) -> Self {
        DataError::File {
            file: file.to_path_buf(),
            message: message.into(),
        }
    }
}
