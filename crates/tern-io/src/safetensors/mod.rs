//! Safetensors checkpoints: memory-mapped reading of single files and sharded
//! Hugging Face models (through `model.safetensors.index.json`), f32
//! conversion, non-finite checks, `tern inspect` summaries, and atomic writing.
//!
//! Header parsing and validation are those of the `safetensors` crate, with
//! extra checks (duplicate names, a dimension bound, typed errors that name the
//! tensor at fault) layered on top; see `header.rs`.

mod convert;
mod error;
mod header;
mod read;
mod write;

pub use ::safetensors::Dtype;
pub use convert::{decode_f32, first_non_finite, is_f32_convertible};
pub use error::{SafetensorsError, SafetensorsErrorKind};
pub use header::{MAX_DIMS, MAX_HEADER_LEN};
pub use read::{
    Checkpoint, CheckpointSummary, FileSummary, ShardFile, TensorEntry, TensorSummary,
    INDEX_FILE_NAME, MAX_INDEX_LEN, SINGLE_FILE_NAME,
};
pub use write::{serialize_safetensors, write_safetensors, WriteTensor};
