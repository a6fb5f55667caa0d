//! Streaming GGUF v3 writer.
//!
//! Metadata and tensor infos are collected first (validated as they are
//! added), then [`GgufWriter::begin_data`] writes the header, the KV pairs,
//! the tensor infos with sequential offsets
//! (`offset[i] = sum_{j<i} pad(n_bytes[j], alignment)`, llama.cpp's rule) and
//! zero padding, and returns a [`TensorSink`] that takes the tensor data one
//! tensor at a time, in declared order. Only one tensor needs to be in memory
//! at once ([`TensorSink::write_tensor_with`] does not even need that).
//!
//! Everything goes to a temporary file next to the target; [`TensorSink::finish`]
//! flushes, fsyncs and renames it over the target. If anything fails, or the
//! writer or sink is dropped before `finish`, the temporary file is removed
//! and the target is left untouched.

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tern_tensor::GgmlType;

use super::error::{GgufError, GgufErrorKind};
use super::reader::{check_tensor, pad_to, TensorInfo};
use super::value::{Array, Value};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
use crate::atomic::AtomicFile;

type Kind = GgufErrorKind;

/// The GGUF version this writer produces.
pub const WRITE_VERSION: u32 = 3;

/// Collects metadata and tensor infos for a new GGUF file.
pub struct GgufWriter {
    path: PathBuf,
    temp: TempFile,
    alignment: u32,
    kvs: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<TensorInfo>,
    names: HashSet<String>,
}

impl GgufWriter {
    /// Start a file that [`TensorSink::finish`] will place at `path`. A
    /// temporary file is created in the same directory right away.
    pub fn create(path: impl AsRef<Path>) -> Result<GgufWriter, GgufError> {
        let path = path.as_ref().to_path_buf();
        let temp = TempFile::create(&path).map_err(|e| GgufError::new(&path, Kind::Io(e)))?;
        Ok(GgufWriter {
            path,
            temp,
            alignment: DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
        })
    }

    fn err(&self, kind: Kind) -> GgufError {
        GgufError::new(&self.path, kind)
    }

    /// The data alignment (32 unless `general.alignment` was added).
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Add a KV pair; keys must be unique and non-empty. Adding
    /// `general.alignment` (a u32 power of two) sets the data alignment.
    /// Arrays may nest at most [`MAX_ARRAY_DEPTH`] deep (the reader's limit).
    pub fn add_kv(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> Result<(), GgufError> {
        let key = key.into();
        let value = value.into();
        if key.is_empty() {
            return Err(self.err(Kind::EmptyKey));
        }
        if self.keys.contains(&key) {
            return Err(self.err(Kind::DuplicateKey { key }));
        }
        if let Value::Array(a) = &value {
            if array_depth(a) > MAX_ARRAY_DEPTH {
                return Err(self.err(Kind::NestingTooDeep {
                    key,
                    max: MAX_ARRAY_DEPTH,
                }));
            }
        }
        if key == ALIGNMENT_KEY {
            match value {
                Value::U32(a) if a.is_power_of_two() => self.alignment = a,
                Value::U32(a) => {
                    return Err(self.err(Kind::BadAlignment {
                        alignment: a.into(),
                    }))
                }
                ref other => {
                    return Err(self.err(Kind::AlignmentType {
                        found: other.value_type(),
                    }))
                }
            }
        }
        self.keys.insert(key.clone());
        self.kvs.push((key, value));
        Ok(())
    }

    /// Declare a tensor (`ne` innermost first, 1 to 4 positive dimensions,
    /// `ne[0]` a multiple of the block size, name of 1 to 63 bytes, unique).
    /// Returns its byte count. Tensors are written in the order declared.
    pub fn add_tensor_info(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        ne: &[u64],
    ) -> Result<u64, GgufError> {
        let name = name.into();
        if name.is_empty() {
            return Err(self.err(Kind::EmptyName));
        }
        if ne.is_empty() {
            return Err(self.err(Kind::BadDimCount {
                tensor: name,
                n_dims: 0,
                max: MAX_DIMS,
            }));
        }
        let n_bytes = check_tensor(&name, ty, ne).map_err(|k| self.err(k))?;
        if self.names.contains(&name) {
            return Err(self.err(Kind::DuplicateTensor { name }));
        }
        self.names.insert(name.clone());
        self.tensors.push(TensorInfo {
            name,
            ty,
            ne: ne.to_vec(),
            offset: 0,
            n_bytes,
        });
        Ok(n_bytes)
    }

    /// Number of KV pairs added so far.
    pub fn kv_count(&self) -> usize {
        self.kvs.len()
    }

    /// Tensors declared so far (offsets are assigned by `begin_data`).
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Write header, metadata, tensor infos and padding; return the sink for tensor data.
    pub fn begin_data(mut self) -> Result<TensorSink, GgufError> {
        let align = u64::from(self.alignment);
        let mut next = 0u64;
        for t in &mut self.tensors {
            t.offset = next;
            next = pad_to(t.n_bytes, align)
                .and_then(|p| next.checked_add(p))
                .ok_or_else(|| Kind::SizeOverflow {
                    tensor: t.name.clone(),
                    ne: t.ne.clone(),
                })
                .map_err(|k| GgufError::new(&self.path, k))?;
        }
        let GgufWriter {
            path,
            mut temp,
            alignment,
            kvs,
            tensors,
            ..
        } = self;
        let res = (|| -> io::Result<()> {
            let w = temp.writer()?;
            w.write_all(&MAGIC)?;
            w.write_all(&WRITE_VERSION.to_le_bytes())?;
            w.write_all(&(tensors.len() as u64).to_le_bytes())?;
            w.write_all(&(kvs.len() as u64).to_le_bytes())?;
            for (k, v) in &kvs {
                write_str(w, k)?;
                w.write_all(&v.value_type().id().to_le_bytes())?;
                write_value(w, v)?;
            }
            for t in &tensors {
                write_str(w, &t.name)?;
                w.write_all(&(t.ne.len() as u32).to_le_bytes())?;
                for d in &t.ne {
                    w.write_all(&d.to_le_bytes())?;
                }
                w.write_all(&t.ty.id().to_le_bytes())?;
                w.write_all(&t.offset.to_le_bytes())?;
            }
            let pos = w.pos;
            write_zeros(w, padding(pos, u64::from(alignment)))?;
            Ok(())
        })();
        res.map_err(|e| GgufError::new(&path, Kind::Io(e)))?;
        Ok(TensorSink {
            path,
            temp,
            alignment,
            tensors,
            next: 0,
            poisoned: false,
        })
    }
}

/// Takes tensor data, one tensor at a time, in declared order.
pub struct TensorSink {
    path: PathBuf,
    temp: TempFile,
    alignment: u32,
    tensors: Vec<TensorInfo>,
    next: usize,
    poisoned: bool,
}

/// The `io::Write` handed to [`TensorSink::write_tensor_with`]: it refuses
/// bytes beyond the tensor's declared size.
pub struct TensorWriter<'a> {
    inner: &'a mut Counting,
    remaining: u64,
    written: u64,
    /// Bytes offered so far, including refused ones.
    offered: u64,
    overflow: bool,
}

impl TensorWriter<'_> {
    /// Bytes still expected for this tensor.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl Write for TensorWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len() as u64;
        self.offered = self.offered.saturating_add(n);
        if n > self.remaining {
            self.overflow = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more bytes than the tensor's declared size",
            ));
        }
        self.inner.write_all(buf)?;
        self.remaining -= n;
        self.written += n;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TensorSink {
    fn err(&self, kind: Kind) -> GgufError {
        GgufError::new(&self.path, kind)
    }

    /// All tensor infos with their final offsets.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor expected next, if any.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.next)
    }

    /// The data alignment.
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Check that `name` is the next declared tensor; return its byte count.
    fn expect(&self, name: &str) -> Result<u64, GgufError> {
        if self.poisoned {
            return Err(self.err(Kind::Poisoned));
        }
        match self.tensors.get(self.next) {
            Some(t) if t.name == name => Ok(t.n_bytes),
            Some(t) => Err(self.err(Kind::OutOfOrder {
                expected: format!("'{}'", t.name),
                got: name.to_owned(),
            })),
            None => Err(self.err(Kind::OutOfOrder {
                expected: "none (all declared tensors are written)".to_owned(),
                got: name.to_owned(),
            })),
        }
    }

    /// Write the whole data of the next tensor, which must be `name`, and
    /// exactly its declared byte count.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), GgufError> {
        let declared = self.expect(name)?;
        if bytes.len() as u64 != declared {
            return Err(self.err(Kind::WrongSize {
                tensor: name.to_owned(),
                declared,
                written: bytes.len() as u64,
            }));
        }
        self.write_tensor_with(name, |w| w.write_all(bytes))
    }

    /// Stream the data of the next tensor, which must be `name`: `f` writes
    /// exactly its declared byte count to the [`TensorWriter`] (in as many
    /// pieces as it likes). Any failure leaves the sink unusable.
    pub fn write_tensor_with<F>(&mut self, name: &str, f: F) -> Result<(), GgufError>
    where
        F: FnOnce(&mut TensorWriter<'_>) -> io::Result<()>,
    {
        let declared = self.expect(name)?;
        self.poisoned = true; // cleared on success
        let align = u64::from(self.alignment);
        let inner = match self.temp.writer() {
            Ok(w) => w,
            Err(e) => return Err(self.err(Kind::Io(e))),
        };
        let mut tw = TensorWriter {
            inner,
            remaining: declared,
            written: 0,
            offered: 0,
            overflow: false,
        };
        let res = f(&mut tw);
        let (written, offered, overflow) = (tw.written, tw.offered, tw.overflow);
        if overflow || (res.is_ok() && written != declared) {
            return Err(self.err(Kind::WrongSize {
                tensor: name.to_owned(),
                declared,
                written: if overflow { offered } else { written },
            }));
        }
        if let Err(e) = res {
            return Err(self.err(Kind::Io(e)));
        }
        let pad = pad_to(declared, align).map_or(0, |p| p - declared);
        if let Err(e) = self.temp.writer().and_then(|w| write_zeros(w, pad)) {
            return Err(self.err(Kind::Io(e)));
        }
        self.next += 1;
        self.poisoned = false;
        Ok(())
    }

    /// Check that every tensor was written, flush, fsync and rename the
    /// temporary file to the target path.
    pub fn finish(mut self) -> Result<(), GgufError> {
        if self.poisoned {
            return Err(self.err(Kind::Poisoned));
        }
        if let Some(t) = self.tensors.get(self.next) {
            return Err(self.err(Kind::MissingTensors {
                missing: self.tensors.len() - self.next,
                next: t.name.clone(),
            }));
        }
        let path = self.path.clone();
        self.temp
            .persist(&path)
            .map_err(|e| GgufError::new(path, Kind::Io(e)))
    }
}

/// Zero bytes needed after `pos` to reach a multiple of `align`.
fn padding(pos: u64, align: u64) -> u64 {
    pad_to(pos, align).map_or(0, |p| p - pos)
}

fn write_zeros(w: &mut impl Write, mut n: u64) -> io::Result<()> {
    const ZEROS: [u8; 256] = [0; 256];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[u8::from(*x)]),
        Value::String(s) => write_str(w, s),
        Value::Array(a) => write_array(w, a),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
    }
}

/// Element type, count, elements (a nested array's elements carry no type
/// prefix of their own beyond their element type and count).
fn write_array(w: &mut impl Write, a: &Array) -> io::Result<()> {
    w.write_all(&a.elem_type().id().to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    macro_rules! nums {
        ($v:expr) => {{
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match a {
        Array::U8(v) => w.write_all(v),
        Array::I8(v) => nums!(v),
        Array::U16(v) => nums!(v),
        Array::I16(v) => nums!(v),
        Array::U32(v) => nums!(v),
        Array::I32(v) => nums!(v),
        Array::F32(v) => nums!(v),
        Array::Bool(v) => {
            for &b in v {
                w.write_all(&[u8::from(b)])?;
            }
            Ok(())
        }
        Array::String(v) => {
            for s in v.iter() {
                write_str(w, s)?;
            }
            Ok(())
        }
        Array::Array(v) => {
            for inner in v {
                write_array(w, inner)?;
            }
            Ok(())
        }
        Array::U64(v) => nums!(v),
        Array::I64(v) => nums!(v),
        Array::F64(v) => nums!(v),
    }
}

/// Arrays nested in `a`, `a` included.
fn array_depth(a: &Array) -> usize {
    match a {
        Array::Array(v) => 1 + v.iter().map(|x| array_depth(x)).max().unwrap_or(0),
        _ => 1,
    }
}

/// A writer that knows its position.
struct Counting {
    inner: AtomicFile,
    pos: u64,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The output file until it is persisted (see [`AtomicFile`]).
struct TempFile {
    file: Option<Counting>,
}

impl TempFile {
    fn create(target: &Path) -> io::Result<TempFile> {
        Ok(TempFile {
            file: Some(Counting {
                inner: AtomicFile::create(target)?,
                pos: 0,
            }),
        })
    }

    fn writer(&mut self) -> io::Result<&mut Counting> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("temporary file already closed"))
    }

    fn persist(&mut self, _target: &Path) -> io::Result<()> {
        self.file
            .take()
            .ok_or_else(|| io::Error::other("temporary file already closed"))?
            .inner
            .commit()
    }
}
