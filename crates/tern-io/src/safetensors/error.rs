//! Errors of safetensors reading and writing: every error names the file it
//! concerns and says what was wrong.

use std::fmt;
use std::path::{Path, PathBuf};

use ::safetensors::Dtype;

/// An error about one safetensors file (or sharded-model index file).
#[derive(Debug)]
pub struct SafetensorsError {
    /// The file the problem was found in: a `.safetensors` file, an index
    /// JSON, a directory that was opened, or the target of a write.
    pub path: PathBuf,
    /// What was wrong.
    pub kind: SafetensorsErrorKind,
}

impl SafetensorsError {
    pub(crate) fn new(path: &Path, kind: SafetensorsErrorKind) -> Self {
        Self {
            path: path.to_path_buf(),
            kind,
        }
    }

    pub(crate) fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        Self::new(path, SafetensorsErrorKind::Io { action, source })
    }
}

impl fmt::Display for SafetensorsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.kind {
            SafetensorsErrorKind::UnsupportedDtype { tensor, dtype } => write!(
                f,
                "dtype {dtype} of tensor `{tensor}` in file {path} is not supported \
                 (convertible to f32: F32, F16, BF16, U8, I8)"
            ),
            SafetensorsErrorKind::NonFinite {
                tensor,
                index,
                value,
            } => write!(
                f,
                "tensor `{tensor}` in file {path} holds a non-finite value ({value}) at element {index}"
            ),
            kind => write!(f, "{path}: {kind}"),
        }
    }
}

impl std::error::Error for SafetensorsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            SafetensorsErrorKind::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The problem behind a [`SafetensorsError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SafetensorsErrorKind {
    /// An operating-system error while opening, mapping, reading or writing.
    #[error("cannot {action}: {source}")]
    Io {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file has zero bytes.
    #[error("file is empty (a safetensors file starts with an 8-byte header length)")]
    EmptyFile,
    /// The file is shorter than the 8-byte little-endian header length.
    #[error("file has {len} bytes, fewer than the 8-byte header length prefix")]
    TruncatedPrefix { len: u64 },
    /// The header length exceeds the limit of the safetensors format reader.
    #[error("header length {header_len} exceeds the {limit}-byte limit")]
    HeaderTooLarge { header_len: u64, limit: u64 },
    /// The header length points past the end of the file.
    #[error("header length {header_len} is larger than the {available} bytes after the prefix")]
    HeaderPastEnd { header_len: u64, available: u64 },
    /// The header bytes are not UTF-8.
    #[error("header is not valid UTF-8: {0}")]
    HeaderNotUtf8(String),
    /// The header is not the expected JSON object.
    #[error("header is not a valid safetensors JSON header: {0}")]
    InvalidHeaderJson(String),
    /// Two header entries have the same tensor name.
    #[error("tensor `{tensor}` appears more than once in the header")]
    DuplicateTensor { tensor: String },
    /// A tensor's shape has more dimensions than tern accepts.
    #[error("tensor `{tensor}` has {dims} dimensions, more than the {max} supported")]
    TooManyDims {
        tensor: String,
        dims: usize,
        max: usize,
    },
    /// A dtype string that the safetensors format (as tern reads it) does not know.
    #[error("tensor `{tensor}` has unknown dtype `{dtype}`")]
    UnknownDtype { tensor: String, dtype: String },
    /// The element count or byte size of a tensor overflows.
    #[error("shape {shape:?} of tensor `{tensor}` overflows when computing its byte size")]
    ShapeOverflow { tensor: String, shape: Vec<u64> },
    /// A sub-byte dtype whose element count does not fill whole bytes.
    #[error(
        "tensor `{tensor}` of dtype {dtype} and shape {shape:?} does not end on a byte boundary"
    )]
    MisalignedSubByte {
        tensor: String,
        dtype: String,
        shape: Vec<u64>,
    },
    /// `data_offsets` disagree with `dtype` x `shape`.
    #[error(
        "tensor `{tensor}` of dtype {dtype} and shape {shape:?} needs {expected} bytes \
         but its data_offsets [{begin}, {end}] span {}",
        end.saturating_sub(*begin)
    )]
    ByteCountMismatch {
        tensor: String,
        dtype: String,
        shape: Vec<u64>,
        expected: u64,
        begin: u64,
        end: u64,
    },
    /// Tensors overlap, leave gaps, or have an end before their begin.
    #[error(
        "tensor `{tensor}` has data_offsets [{begin}, {end}] but the data before it ends at \
         {expected_begin} (tensor data must be contiguous, in order, without overlap)"
    )]
    BadOffsets {
        tensor: String,
        begin: u64,
        end: u64,
        expected_begin: u64,
    },
    /// A tensor's data would extend past the end of the file.
    #[error(
        "tensor `{tensor}` ends at byte {end} of the data section, but only {data_len} \
         bytes follow the header"
    )]
    OffsetsPastEnd {
        tensor: String,
        end: u64,
        data_len: u64,
    },
    /// Bytes after the last tensor, not covered by any tensor.
    #[error("{count} trailing bytes after the last tensor's data")]
    TrailingBytes { count: u64 },
    /// Any other rejection by the safetensors header validation.
    #[error("invalid safetensors file: {0}")]
    Invalid(String),
    /// A tensor name that the checkpoint does not hold.
    #[error("no tensor named `{0}`")]
    TensorNotFound(String),
    /// The tensor's dtype cannot be converted to f32.
    #[error("dtype {dtype} of tensor `{tensor}` is not supported")]
    UnsupportedDtype { tensor: String, dtype: Dtype },
    /// A caller buffer of the wrong length.
    #[error("tensor `{tensor}` has {expected} elements but the output buffer holds {got}")]
    OutputLength {
        tensor: String,
        expected: usize,
        got: usize,
    },
    /// NaN or infinity found by `check_finite`.
    #[error("tensor `{tensor}` holds a non-finite value ({value}) at element {index}")]
    NonFinite {
        tensor: String,
        index: usize,
        value: f32,
    },
    /// The index JSON is not valid JSON or not an object.
    #[error("index is not valid JSON: {0}")]
    IndexInvalidJson(String),
    /// The index JSON has no `weight_map` object.
    #[error("index has no `weight_map` object mapping tensor names to shard files")]
    IndexMissingWeightMap,
    /// A shard file name that is absolute or leaves the index's directory.
    #[error("index maps tensor `{tensor}` to shard `{shard}`, which is not a file name inside the index's directory")]
    IndexBadShardPath { tensor: String, shard: String },
    /// The index names a shard that does not exist.
    #[error("index names shard `{shard}` (for tensor `{tensor}`), but {} does not exist", shard_path.display())]
    ShardMissing {
        shard: String,
        tensor: String,
        shard_path: PathBuf,
    },
    /// The index maps a tensor to a shard that does not contain it.
    #[error("index maps tensor `{tensor}` to shard `{shard}`, which does not contain it")]
    TensorNotInShard { tensor: String, shard: String },
    /// A directory without a recognisable safetensors checkpoint.
    #[error("no safetensors checkpoint found in directory ({0})")]
    NoCheckpointInDir(String),
    /// Two tensors given to the writer share a name (or one uses the reserved `__metadata__`).
    #[error("cannot write tensor `{tensor}`: {reason}")]
    WriteInvalid { tensor: String, reason: String },
}

impl SafetensorsErrorKind {
    /// A short stable name of the variant (for tests, logs and tooling).
    pub fn name(&self) -> &'static str {
        use SafetensorsErrorKind::*;
        match self {
            Io { .. } => "Io",
            EmptyFile => "EmptyFile",
            TruncatedPrefix { .. } => "TruncatedPrefix",
            HeaderTooLarge { .. } => "HeaderTooLarge",
            HeaderPastEnd { .. } => "HeaderPastEnd",
            HeaderNotUtf8(_) => "HeaderNotUtf8",
            InvalidHeaderJson(_) => "InvalidHeaderJson",
            DuplicateTensor { .. } => "DuplicateTensor",
            TooManyDims { .. } => "TooManyDims",
            UnknownDtype { .. } => "UnknownDtype",
            ShapeOverflow { .. } => "ShapeOverflow",
            MisalignedSubByte { .. } => "MisalignedSubByte",
            ByteCountMismatch { .. } => "ByteCountMismatch",
            BadOffsets { .. } => "BadOffsets",
            OffsetsPastEnd { .. } => "OffsetsPastEnd",
            TrailingBytes { .. } => "TrailingBytes",
            Invalid(_) => "Invalid",
            TensorNotFound(_) => "TensorNotFound",
            UnsupportedDtype { .. } => "UnsupportedDtype",
            OutputLength { .. } => "OutputLength",
            NonFinite { .. } => "NonFinite",
            IndexInvalidJson(_) => "IndexInvalidJson",
            IndexMissingWeightMap => "IndexMissingWeightMap",
            IndexBadShardPath { .. } => "IndexBadShardPath",
            ShardMissing { .. } => "ShardMissing",
            TensorNotInShard { .. } => "TensorNotInShard",
            NoCheckpointInDir(_) => "NoCheckpointInDir",
            WriteInvalid { .. } => "WriteInvalid",
        }
    }
}
