//! Errors of the GGUF reader and writer.
//!
//! Every error names the file it concerns ([`GgufError::path`]) and says what
//! is wrong in a [`GgufErrorKind`] that callers (and tests) can match on.

use std::fmt;
use std::path::{Path, PathBuf};

use tern_tensor::GgmlType;

use super::value::ValueType;

/// A GGUF error: the file it concerns and what went wrong.
///
/// Displayed as `"<file>: <what>"`, e.g.
/// `"model.gguf: tensor 'blk.0.attn_q.weight': offset 7 is not a multiple of alignment 32"`.
#[derive(Debug)]
pub struct GgufError {
    /// The file being read or written (for the writer: the final target path).
    pub path: PathBuf,
    /// What is wrong.
    pub kind: GgufErrorKind,
}

impl GgufError {
    /// An error about `path`.
    pub fn new(path: impl Into<PathBuf>, kind: GgufErrorKind) -> Self {
        GgufError {
            path: path.into(),
            kind,
        }
    }

    /// The file this error is about.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What went wrong.
    pub fn kind(&self) -> &GgufErrorKind {
        &self.kind
    }
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.kind)
    }
}

impl std::error::Error for GgufError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            GgufErrorKind::Io(e) => Some(e),
            GgufErrorKind::Metadata(e) => Some(e),
            _ => None,
        }
    }
}

/// What is wrong with a GGUF file (or with a request to write one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufErrorKind {
    /// Opening, mapping, writing, syncing or renaming failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// The file has zero bytes.
    #[error("file is empty (a GGUF file starts with the magic \"GGUF\")")]
    Empty,

    /// The first four bytes are not `GGUF`.
    #[error("bad magic {found:02x?}: not a GGUF file (expected \"GGUF\")")]
    BadMagic { found: Vec<u8> },

    /// A version other than 2 or 3. Version 1 (u32 counts) is obsolete.
    #[error("unsupported GGUF version {version} (tern reads versions 2 and 3)")]
    UnsupportedVersion { version: u32 },

    /// The version's low 16 bits are zero: a big-endian GGUF file.
    #[error("GGUF version field {version:#010x} looks byte-swapped: big-endian GGUF files are not supported")]
    BigEndian { version: u32 },

    /// The file ends before a field it declares.
    #[error("truncated: {what} at offset {offset} needs {needed} bytes, but the file ends at {file_len}")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },

    /// A count or length (tensor count, KV count, string length, array length)
    /// that the rest of the file cannot possibly hold.
    #[error("{what} is {count}, which needs at least {min_bytes} bytes, but only {remaining} bytes remain after offset {offset}")]
    TooLarge {
        what: String,
        count: u64,
        min_bytes: u128,
        remaining: u64,
        offset: u64,
    },

    /// A string (key, string value or tensor name) is not valid UTF-8.
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },

    /// A metadata value type id outside 0..=12.
    #[error("key '{key}': unknown value type id {id}")]
    UnknownValueType { key: String, id: u32 },

    /// A bool value byte other than 0 or 1.
    #[error("key '{key}': bool value byte {value} is neither 0 nor 1")]
    InvalidBool { key: String, value: u8 },

    /// Arrays nested deeper than [`super::MAX_ARRAY_DEPTH`].
    #[error("key '{key}': arrays nested deeper than {max}")]
    NestingTooDeep { key: String, max: usize },

    /// A metadata key appears twice.
    #[error("duplicate metadata key '{key}'")]
    DuplicateKey { key: String },

    /// A metadata key is empty.
    #[error("empty metadata key")]
    EmptyKey,

    /// `general.alignment` is not a u32.
    #[error("general.alignment has type {found}, expected u32")]
    AlignmentType { found: ValueType },

    /// `general.alignment` is zero or not a power of two.
    #[error("alignment {alignment} is not a non-zero power of two")]
    BadAlignment { alignment: u64 },

    /// Two tensors share a name.
    #[error("duplicate tensor name '{name}'")]
    DuplicateTensor { name: String },

    /// A tensor name of 64 bytes or more (ggml's `GGML_MAX_NAME` is 64 including the NUL).
    #[error("tensor '{name}': name is {len} bytes, the limit is {max} (ggml's GGML_MAX_NAME - 1)")]
    NameTooLong {
        name: String,
        len: usize,
        max: usize,
    },

    /// An empty tensor name.
    #[error("empty tensor name")]
    EmptyName,

    /// More than [`super::MAX_DIMS`] dimensions (or, when writing, none).
    #[error("tensor '{tensor}': {n_dims} dimensions (GGUF allows 1 to {max})")]
    BadDimCount {
        tensor: String,
        n_dims: u64,
        max: usize,
    },

    /// A dimension of zero or a negative dimension (as a signed 64-bit value).
    #[error("tensor '{tensor}': dimension {index} is {value}, dimensions must be positive")]
    BadDim {
        tensor: String,
        index: usize,
        value: i64,
    },

    /// A ggml type id tern does not know.
    #[error("tensor '{tensor}': unknown ggml type id {id}")]
    UnknownGgmlType { tensor: String, id: u32 },

    /// `ne[0]` is not a multiple of the type's block size.
    #[error("tensor '{tensor}': ne[0] = {ne0} is not a multiple of the {ty} block size {block}")]
    NotBlockAligned {
        tensor: String,
        ty: GgmlType,
        ne0: u64,
        block: usize,
    },

    /// The element or byte count of a shape overflows 64 bits.
    #[error("tensor '{tensor}': shape {ne:?} overflows a 64-bit size")]
    SizeOverflow { tensor: String, ne: Vec<u64> },

    /// A tensor's offset is not a multiple of the file's alignment.
    #[error("tensor '{tensor}': offset {offset} is not a multiple of alignment {alignment}")]
    MisalignedOffset {
        tensor: String,
        offset: u64,
        alignment: u32,
    },

    /// A tensor's data does not lie inside the file.
    #[error(
        "tensor '{tensor}': data [{start}, {end}) lies past the end of the file ({file_len} bytes)"
    )]
    DataOutOfBounds {
        tensor: String,
        start: u128,
        end: u128,
        file_len: u64,
    },

    /// Two tensors' data ranges overlap.
    #[error("tensor '{tensor}': data at offset {offset} overlaps tensor '{other}' which ends at offset {other_end}")]
    OverlappingTensors {
        tensor: String,
        offset: u64,
        other: String,
        other_end: u64,
    },

    /// A typed metadata lookup failed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),

    /// Writer: a tensor was written out of the declared order (or was never declared).
    #[error("tensor '{got}' written out of order: the next declared tensor is {expected}")]
    OutOfOrder { expected: String, got: String },

    /// Writer: a tensor's byte count differs from its declared shape and type.
    #[error(
        "tensor '{tensor}': {written} bytes written, its declared shape and type need {declared}"
    )]
    WrongSize {
        tensor: String,
        declared: u64,
        written: u64,
    },

    /// Writer: `finish` was called before every declared tensor was written.
    #[error("{missing} declared tensors were not written (next: '{next}')")]
    MissingTensors { missing: usize, next: String },

    /// Writer: an earlier error left the output unusable.
    #[error("the writer failed earlier and cannot continue")]
    Poisoned,
}

/// A typed metadata lookup failed: the key is missing or has another type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata key '{key}' is missing (expected {expected})")]
    Missing { key: String, expected: &'static str },
    #[error("metadata key '{key}' has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
}
