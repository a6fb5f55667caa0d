//! tern-io: GGUF v3 and safetensors files, read through memory maps and
//! written as streams (layouts: `docs/formats.md`).
//!
//! Write a GGUF file tensor by tensor (into a temporary file renamed on
//! success), then map it and read a key and a tensor back without copying:
//!
//! ```
//! use tern_io::gguf::{GgufFile, GgufWriter};
//! use tern_tensor::GgmlType;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("tiny.gguf");
//! let mut w = GgufWriter::create(&path)?;
//! w.add_kv("general.architecture", "bitnet")?;
//! w.add_tensor_info("output_norm.weight", GgmlType::F32, &[4])?;
//! let mut data = w.begin_data()?;
//! let norm: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
//! data.write_tensor("output_norm.weight", &norm)?;
//! data.finish()?;
//!
//! let f = GgufFile::open(&path)?;
//! assert_eq!(f.get_str("general.architecture")?, "bitnet");
//! let t = f.tensor("output_norm.weight").expect("written above");
//! assert_eq!((t.ty, t.ne.as_slice()), (GgmlType::F32, &[4u64][..]));
//! assert_eq!(f.tensor_data(t), &norm[..]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod atomic;
pub mod gguf;
pub mod npy;
pub mod safetensors;
