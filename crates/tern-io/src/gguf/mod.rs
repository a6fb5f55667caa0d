//! GGUF v3: a memory-mapped, hardened reader and a streaming writer.
//!
//! Layout (little-endian; see `docs/formats.md`): magic `GGUF`, u32 version,
//! u64 tensor count, u64 KV count, the KV pairs (string key, u32 value type,
//! value), the tensor infos (string name, u32 n_dims, `u64 ne[n_dims]`, u32 ggml
//! type, u64 offset), zero padding to `general.alignment` (default 32), then
//! the tensor data, each tensor padded to the alignment.
//!
//! tern has its own implementation rather than the crates.io `gguf` crate
//! because it needs BF16 and the ternary types, zero-copy views into a memory
//! map, validation of hostile files and a writer that streams one tensor at a
//! time. Reading accepts versions 2 and 3 (same layout; version 1 had u32
//! counts and is rejected); writing produces version 3. See [`reader`] for
//! the exact list of checks.
//!
//! ```no_run
//! use tern_io::gguf::{GgufFile, GgufWriter, Value};
//! use tern_tensor::GgmlType;
//! # fn main() -> Result<(), tern_io::gguf::GgufError> {
//! let mut w = GgufWriter::create("out.gguf")?;
//! w.add_kv("general.architecture", "bitnet")?;
//! w.add_tensor_info("output_norm.weight", GgmlType::F32, &[4])?;
//! let mut sink = w.begin_data()?;
//! sink.write_tensor("output_norm.weight", &[0u8; 16])?;
//! sink.finish()?;
//!
//! let f = GgufFile::open("out.gguf")?;
//! assert_eq!(f.get_str("general.architecture")?, "bitnet");
//! let t = f.tensor("output_norm.weight").unwrap();
//! assert_eq!(f.tensor_data(t).len(), 16);
//! # Ok(()) }
//! ```

mod error;
pub mod reader;
mod value;
pub mod writer;

pub use error::{GgufError, GgufErrorKind, MetadataError};
pub use reader::{GgufFile, GgufSummary, Metadata, MetadataSummary, TensorInfo};
pub use value::{Array, StringArray, Value, ValueType};
pub use writer::{GgufWriter, TensorSink, TensorWriter, WRITE_VERSION};

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// The metadata key that sets the data alignment (a u32 power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Longest tensor name in bytes: ggml's `GGML_MAX_NAME` (64) minus the NUL.
pub const MAX_NAME_LEN: usize = 63;
/// Deepest nesting of arrays tern reads or writes (an array of arrays has depth 2).
pub const MAX_ARRAY_DEPTH: usize = 8;

#[cfg(test)]
mod tests;
