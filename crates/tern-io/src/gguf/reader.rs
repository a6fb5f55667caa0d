//! Memory-mapped GGUF reader, hardened against hostile files.
//!
//! What [`GgufFile::open`] checks, in order (each failure is a [`GgufErrorKind`]):
//! 1. magic `GGUF`; version 2 or 3 (both use u64 counts; version 1 and
//!    byte-swapped (big-endian) files are rejected);
//! 2. KV count and tensor count: each entry needs a minimum number of bytes
//!    (13 for a KV pair, 24 for a tensor info), so a count the rest of the file
//!    cannot hold is rejected before anything is allocated;
//! 3. every KV pair: UTF-8, non-empty key, known value type, bools 0 or 1,
//!    string and array lengths within the remaining bytes, arrays nested at most
//!    [`MAX_ARRAY_DEPTH`] deep; then duplicate keys;
//! 4. every tensor info: UTF-8 name shorter than 64 bytes (ggml's
//!    `GGML_MAX_NAME` includes the NUL), at most 4 dimensions, every dimension
//!    positive as a signed 64-bit number, known ggml type id (bitnet.cpp's
//!    I2_S = 36 included), `ne[0]` a multiple of the block size, element and
//!    byte counts without overflow; then duplicate names;
//! 5. `general.alignment`, if present: a u32, non-zero power of two;
//! 6. tensor data: every offset a multiple of the alignment, every
//!    `[data_offset + offset, + n_bytes)` inside the file, no two ranges
//!    overlapping.
//!
//! Tensor data may come in any order and with gaps (other writers may do
//! that); [`GgufFile::has_sequential_layout`] says whether the file follows
//! llama.cpp's rule `offset[i] = sum_{j<i} pad(n_bytes[j], alignment)`.
//! Trailing bytes after the last tensor are allowed.
//!
//! Memory: no allocation is sized by a count before that count is checked
//! against the bytes left in the file. Numeric arrays, strings and string
//! arrays then take at most as many bytes as they occupy in the file (string
//! arrays are measured first and allocated once). The tables of KV pairs and
//! tensor infos reserve no more than the remaining bytes; past that they grow
//! with the entries actually read, at a small constant factor per entry (an
//! entry is at least 13 or 24 bytes in the file, 80 or 72 in memory).
//! `tests/tests/gguf_malformed.rs` checks the largest allocation against the
//! file size on a malformed corpus and on 3000 mutants of a valid file.

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::ser::SerializeStruct;
use serde::Serialize;
use tern_tensor::{GgmlType, ShapeError};

use super::error::{GgufError, GgufErrorKind, MetadataError};
use super::value::{Array, StringArray, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_NAME_LEN};

type Kind = GgufErrorKind;

/// Smallest encoded KV pair: u64 key length, u32 type, one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest encoded tensor info: u64 name length, u32 n_dims, u32 type, u64 offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// Pre-allocation cap for the KV and tensor tables; they grow past it as entries are read.
const TABLE_PREALLOC: usize = 1024;

/// How many table entries of type `T` to reserve for `n` claimed entries: no
/// more than the remaining bytes could pay for at `T`'s in-memory size, so the
/// reservation never exceeds the file; real entries beyond it grow the table.
fn table_capacity<T>(n: usize, remaining: u64) -> usize {
    let affordable = remaining / (std::mem::size_of::<T>().max(1) as u64);
    n.min(TABLE_PREALLOC)
        .min(usize::try_from(affordable).unwrap_or(usize::MAX))
}

/// One tensor as described in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name (e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// Storage type.
    pub ty: GgmlType,
    /// Dimensions, innermost (contiguous) first: a torch `[out, in]` weight has `ne = [in, out]`.
    pub ne: Vec<u64>,
    /// Offset of the data relative to [`GgufFile::data_offset`].
    pub offset: u64,
    /// Bytes of data (I2_S's 32-byte trailer included).
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (checked when the file was read; saturates for a
    /// hand-built info whose shape overflows).
    pub fn n_elements(&self) -> u64 {
        tern_tensor::element_count(&self.ne).unwrap_or(u64::MAX)
    }

    /// Dimensions outermost first, as torch and numpy write them.
    pub fn shape(&self) -> Vec<u64> {
        self.ne.iter().rev().copied().collect()
    }
}

/// `{name, type, ne, n_elements, n_bytes, offset}` with `type` as its ggml name.
impl Serialize for TensorInfo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("TensorInfo", 6)?;
        s.serialize_field("name", &self.name)?;
        s.serialize_field("type", self.ty.name())?;
        s.serialize_field("ne", &self.ne)?;
        s.serialize_field("n_elements", &self.n_elements())?;
        s.serialize_field("n_bytes", &self.n_bytes)?;
        s.serialize_field("offset", &self.offset)?;
        s.end()
    }
}

/// The KV metadata of a file, in file order, with lookup by key.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    /// Indices into `entries`, sorted by key (for lookups and duplicate detection).
    sorted: Vec<usize>,
}

macro_rules! typed_getters {
    ($($(#[$doc:meta])* $name:ident -> $t:ty = $variant:ident, $expected:literal;)*) => {
        impl Metadata {$(
            $(#[$doc])*
            pub fn $name(&self, key: &str) -> Result<$t, MetadataError> {
                match self.get(key) {
                    Some(Value::$variant(v)) => Ok(*v),
                    Some(other) => Err(MetadataError::WrongType {
                        key: key.to_owned(),
                        expected: $expected,
                        found: other.type_name(),
                    }),
                    None => Err(MetadataError::Missing { key: key.to_owned(), expected: $expected }),
                }
            }
        )*}
        impl GgufFile {$(
            $(#[$doc])*
            pub fn $name(&self, key: &str) -> Result<$t, GgufError> {
                self.metadata.$name(key).map_err(|e| self.err(e.into()))
            }
        )*}
    };
}

typed_getters! {
    /// The u8 value of `key`.
    get_u8 -> u8 = U8, "u8";
    /// The i8 value of `key`.
    get_i8 -> i8 = I8, "i8";
    /// The u16 value of `key`.
    get_u16 -> u16 = U16, "u16";
    /// The i16 value of `key`.
    get_i16 -> i16 = I16, "i16";
    /// The u32 value of `key`.
    get_u32 -> u32 = U32, "u32";
    /// The i32 value of `key`.
    get_i32 -> i32 = I32, "i32";
    /// The f32 value of `key`.
    get_f32 -> f32 = F32, "f32";
    /// The bool value of `key`.
    get_bool -> bool = Bool, "bool";
    /// The u64 value of `key`.
    get_u64 -> u64 = U64, "u64";
    /// The i64 value of `key`.
    get_i64 -> i64 = I64, "i64";
    /// The f64 value of `key`.
    get_f64 -> f64 = F64, "f64";
}

impl Metadata {
    /// Index `entries`; a key that appears twice is [`GgufErrorKind::DuplicateKey`].
    fn from_entries(entries: Vec<(String, Value)>) -> Result<Self, GgufErrorKind> {
        let mut sorted: Vec<usize> = (0..entries.len()).collect();
        sorted.sort_by(|&a, &b| key_of(&entries, a).cmp(key_of(&entries, b)));
        for w in sorted.windows(2) {
            if let [a, b] = *w {
                if key_of(&entries, a) == key_of(&entries, b) {
                    return Err(Kind::DuplicateKey {
                        key: key_of(&entries, b).to_owned(),
                    });
                }
            }
        }
        Ok(Metadata { entries, sorted })
    }

    /// Number of KV pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no KV pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pairs in file order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = self
            .sorted
            .binary_search_by(|&i| key_of(&self.entries, i).cmp(key))
            .ok()?;
        let idx = *self.sorted.get(i)?;
        self.entries.get(idx).map(|(_, v)| v)
    }

    /// True when `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The string value of `key`.
    pub fn get_str(&self, key: &str) -> Result<&str, MetadataError> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(wrong_type(key, "string", other)),
            None => Err(missing(key, "string")),
        }
    }

    /// The array value of `key` (any element type).
    pub fn get_array(&self, key: &str) -> Result<&Array, MetadataError> {
        match self.get(key) {
            Some(Value::Array(a)) => Ok(a),
            Some(other) => Err(wrong_type(key, "array", other)),
            None => Err(missing(key, "array")),
        }
    }

    /// The string-array value of `key` (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<&StringArray, MetadataError> {
        match self.get(key) {
            Some(Value::Array(Array::String(a))) => Ok(a),
            Some(other) => Err(wrong_type(key, "array[string]", other)),
            None => Err(missing(key, "array[string]")),
        }
    }
}

fn key_of(entries: &[(String, Value)], i: usize) -> &str {
    entries.get(i).map_or("", |(k, _)| k.as_str())
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> MetadataError {
    MetadataError::WrongType {
        key: key.to_owned(),
        expected,
        found: found.type_name(),
    }
}

fn missing(key: &str, expected: &'static str) -> MetadataError {
    MetadataError::Missing {
        key: key.to_owned(),
        expected,
    }
}

enum Storage {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file whose tensor data stays in the memory map.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    alignment: u32,
    data_offset: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    /// Indices into `tensors` sorted by name.
    by_name: Vec<usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

/// A serializable overview of a file, for `tern inspect --json`.
#[derive(Clone, Debug, Serialize)]
pub struct GgufSummary {
    pub path: String,
    pub version: u32,
    pub alignment: u32,
    pub data_offset: u64,
    pub file_len: u64,
    pub sequential_layout: bool,
    pub metadata: Vec<MetadataSummary>,
    pub tensors: Vec<TensorInfo>,
}

/// One KV pair of a [`GgufSummary`]; long arrays are cut (see [`Value::to_json`]).
#[derive(Clone, Debug, Serialize)]
pub struct MetadataSummary {
    pub key: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub value: serde_json::Value,
}

impl GgufFile {
    /// Memory-map and parse the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |e: std::io::Error| GgufError::new(&path, Kind::Io(e));
        let file = File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Err(GgufError::new(path, Kind::Empty));
        }
        // SAFETY: the map is read-only. As with every memory-mapped model
        // loader, the file must not be truncated or rewritten while it is open;
        // tern's own writer never modifies a file in place (it renames a new one
        // over it), so a reader keeps seeing the old, complete file.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Storage::Mmap(map))
    }

    /// Parse a GGUF image held in memory; `label` names it in errors.
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        let path = label.into();
        if bytes.is_empty() {
            return Err(GgufError::new(path, Kind::Empty));
        }
        Self::parse(path, Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<GgufFile, GgufError> {
        match parse_layout(&storage) {
            Ok(l) => Ok(GgufFile {
                path,
                storage,
                version: l.version,
                alignment: l.alignment,
                data_offset: l.data_offset,
                metadata: l.metadata,
                tensors: l.tensors,
                by_name: l.by_name,
            }),
            Err(kind) => Err(GgufError::new(path, kind)),
        }
    }

    fn err(&self, kind: GgufErrorKind) -> GgufError {
        GgufError::new(&self.path, kind)
    }

    /// The path (or label) the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Absolute file offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.len() as u64
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.storage
    }

    /// KV metadata in file order.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Shorthand for `metadata().get(key)`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The string value of `key`.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.metadata.get_str(key).map_err(|e| self.err(e.into()))
    }

    /// The array value of `key`.
    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        self.metadata.get_array(key).map_err(|e| self.err(e.into()))
    }

    /// The string-array value of `key`.
    pub fn get_str_array(&self, key: &str) -> Result<&StringArray, GgufError> {
        self.metadata
            .get_str_array(key)
            .map_err(|e| self.err(e.into()))
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let i = self
            .by_name
            .binary_search_by(|&i| tensor_name(&self.tensors, i).cmp(name))
            .ok()?;
        self.tensors.get(*self.by_name.get(i)?)
    }

    /// The bytes of a tensor of this file, borrowed from the map (no copy).
    /// Its address is aligned to [`GgufFile::alignment`] when the file is memory-mapped.
    ///
    /// `info` must come from this file's [`GgufFile::tensors`]; for anything
    /// else the range is re-checked and an out-of-range request yields an empty slice.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let range = (|| {
            let start = usize::try_from(self.data_offset.checked_add(info.offset)?).ok()?;
            let end = start.checked_add(usize::try_from(info.n_bytes).ok()?)?;
            self.storage.get(start..end)
        })();
        range.unwrap_or(&[])
    }

    /// The bytes of the tensor called `name`.
    pub fn tensor_data_by_name(&self, name: &str) -> Option<&[u8]> {
        self.tensor(name).map(|t| self.tensor_data(t))
    }

    /// True when the tensors follow llama.cpp's layout: in file order, each
    /// offset is the sum of the previous tensors' sizes padded to the alignment.
    pub fn has_sequential_layout(&self) -> bool {
        let align = u64::from(self.alignment);
        let mut expected = 0u64;
        for t in &self.tensors {
            if t.offset != expected {
                return false;
            }
            match pad_to(t.n_bytes, align).and_then(|p| expected.checked_add(p)) {
                Some(next) => expected = next,
                None => return false,
            }
        }
        true
    }

    /// An overview for printing; arrays cut to `max_array_items` elements.
    pub fn summary(&self, max_array_items: usize) -> GgufSummary {
        GgufSummary {
            path: self.path.display().to_string(),
            version: self.version,
            alignment: self.alignment,
            data_offset: self.data_offset,
            file_len: self.file_len(),
            sequential_layout: self.has_sequential_layout(),
            metadata: self
                .metadata
                .iter()
                .map(|(k, v)| MetadataSummary {
                    key: k.to_owned(),
                    ty: v.type_name(),
                    value: v.to_json(Some(max_array_items)),
                })
                .collect(),
            tensors: self.tensors.clone(),
        }
    }
}

fn tensor_name(tensors: &[TensorInfo], i: usize) -> &str {
    tensors.get(i).map_or("", |t| t.name.as_str())
}

/// `x` rounded up to a multiple of `align` (a power of two), checked.
pub(crate) fn pad_to(x: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    Some(x.checked_add(mask)? & !mask)
}

struct Layout {
    version: u32,
    alignment: u32,
    data_offset: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: Vec<usize>,
}

/// A bounds-checked little-endian cursor over the file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], Kind> {
        let truncated = || Kind::Truncated {
            what: what(),
            offset: self.pos as u64,
            needed: n as u64,
            file_len: self.buf.len() as u64,
        };
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let s = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], Kind> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, Kind> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, Kind> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Check that `count` items of at least `min_size` bytes each fit in the
    /// rest of the file, and return the count as usize.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        what: &dyn Fn() -> String,
    ) -> Result<usize, Kind> {
        let min_bytes = u128::from(count) * u128::from(min_size);
        let remaining = self.remaining();
        if min_bytes > u128::from(remaining) {
            return Err(Kind::TooLarge {
                what: what(),
                count,
                min_bytes,
                remaining,
                offset: self.pos as u64,
            });
        }
        usize::try_from(count).map_err(|_| Kind::TooLarge {
            what: what(),
            count,
            min_bytes,
            remaining,
            offset: self.pos as u64,
        })
    }

    /// A u64 length followed by that many UTF-8 bytes, borrowed.
    fn str(&mut self, what: &dyn Fn() -> String) -> Result<&'a str, Kind> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let n = self.check_count(len, 1, &|| format!("length of {}", what()))?;
        let start = self.pos as u64;
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes).map_err(|_| Kind::InvalidUtf8 {
            what: what(),
            offset: start,
        })
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value, Kind> {
        let what = || format!("value of key '{key}'");
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(&what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => Value::Bool(bool_of(self.array::<1>(&what)?[0], key)?),
            ValueType::String => Value::String(self.str(&what)?.to_owned()),
            ValueType::Array => Value::Array(self.array_value(key, depth)?),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
        })
    }

    /// Element type, count and elements of an array value; `depth` counts the
    /// arrays enclosing this one.
    fn array_value(&mut self, key: &str, depth: usize) -> Result<Array, Kind> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(Kind::NestingTooDeep {
                key: key.to_owned(),
                max: MAX_ARRAY_DEPTH,
            });
        }
        let id = self.u32(&|| format!("array element type of key '{key}'"))?;
        let elem = ValueType::from_id(id).ok_or_else(|| Kind::UnknownValueType {
            key: key.to_owned(),
            id,
        })?;
        let count = self.u64(&|| format!("array length of key '{key}'"))?;
        let what = || format!("array length of key '{key}'");
        let n = self.check_count(count, elem.min_encoded_size() as u64, &what)?;
        let items = || format!("array elements of key '{key}'");
        Ok(match elem {
            ValueType::U8 => Array::U8(self.take(n, &items)?.to_vec()),
            ValueType::I8 => Array::I8(
                self.take(n, &items)?
                    .iter()
                    .map(|&b| i8::from_le_bytes([b]))
                    .collect(),
            ),
            ValueType::U16 => Array::U16(self.numbers(n, &items, u16::from_le_bytes)?),
            ValueType::I16 => Array::I16(self.numbers(n, &items, i16::from_le_bytes)?),
            ValueType::U32 => Array::U32(self.numbers(n, &items, u32::from_le_bytes)?),
            ValueType::I32 => Array::I32(self.numbers(n, &items, i32::from_le_bytes)?),
            ValueType::F32 => Array::F32(self.numbers(n, &items, f32::from_le_bytes)?),
            ValueType::U64 => Array::U64(self.numbers(n, &items, u64::from_le_bytes)?),
            ValueType::I64 => Array::I64(self.numbers(n, &items, i64::from_le_bytes)?),
            ValueType::F64 => Array::F64(self.numbers(n, &items, f64::from_le_bytes)?),
            ValueType::Bool => Array::Bool(
                self.take(n, &items)?
                    .iter()
                    .map(|&b| bool_of(b, key))
                    .collect::<Result<_, _>>()?,
            ),
            ValueType::String => Array::String(self.string_array(n, key)?),
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(Box::new(self.array_value(key, depth + 1)?));
                }
                Array::Array(v)
            }
        })
    }

    fn numbers<T, const N: usize>(
        &mut self,
        n: usize,
        what: &dyn Fn() -> String,
        conv: fn([u8; N]) -> T,
    ) -> Result<Vec<T>, Kind> {
        let len = n.checked_mul(N).ok_or_else(|| Kind::Truncated {
            what: what(),
            offset: self.pos as u64,
            needed: u64::MAX,
            file_len: self.buf.len() as u64,
        })?;
        let bytes = self.take(len, what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                conv(a)
            })
            .collect())
    }

    /// `n` strings: a first pass measures them (without allocating) so the
    /// buffer is allocated once at its exact size.
    fn string_array(&mut self, n: usize, key: &str) -> Result<StringArray, Kind> {
        let start = self.pos;
        let mut total = 0usize;
        for i in 0..n {
            let s = self.str(&|| format!("string #{i} of array '{key}'"))?;
            total = total.saturating_add(s.len());
        }
        self.pos = start;
        let mut out = StringArray::with_capacity(n, total);
        for i in 0..n {
            out.push(self.str(&|| format!("string #{i} of array '{key}'"))?);
        }
        Ok(out)
    }
}

fn bool_of(b: u8, key: &str) -> Result<bool, Kind> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(Kind::InvalidBool {
            key: key.to_owned(),
            value,
        }),
    }
}

fn shape_error(tensor: &str, ne: &[u64], e: ShapeError) -> Kind {
    match e {
        ShapeError::NotBlockAligned { ty, ne0, block } => Kind::NotBlockAligned {
            tensor: tensor.to_owned(),
            ty,
            ne0,
            block,
        },
        ShapeError::Overflow { .. } => Kind::SizeOverflow {
            tensor: tensor.to_owned(),
            ne: ne.to_vec(),
        },
    }
}

/// Check a tensor's shape and type and return its byte count. Shared by the
/// reader and the writer.
pub(crate) fn check_tensor(name: &str, ty: GgmlType, ne: &[u64]) -> Result<u64, Kind> {
    if name.len() > MAX_NAME_LEN {
        return Err(Kind::NameTooLong {
            name: name.to_owned(),
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    if ne.len() > MAX_DIMS {
        return Err(Kind::BadDimCount {
            tensor: name.to_owned(),
            n_dims: ne.len() as u64,
            max: MAX_DIMS,
        });
    }
    for (index, &d) in ne.iter().enumerate() {
        // GGUF stores dimensions as i64: the top bit set means negative.
        let value = d as i64;
        if value <= 0 {
            return Err(Kind::BadDim {
                tensor: name.to_owned(),
                index,
                value,
            });
        }
    }
    let n_elements = tern_tensor::element_count(ne).filter(|&n| n <= i64::MAX as u64);
    if n_elements.is_none() {
        return Err(Kind::SizeOverflow {
            tensor: name.to_owned(),
            ne: ne.to_vec(),
        });
    }
    ty.tensor_bytes(ne).map_err(|e| shape_error(name, ne, e))
}

fn parse_layout(buf: &[u8]) -> Result<Layout, Kind> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c
        .take(4, &|| "magic".to_owned())
        .map_err(|_| Kind::BadMagic {
            found: buf.get(..4).unwrap_or(buf).to_vec(),
        })?;
    if magic != MAGIC {
        return Err(Kind::BadMagic {
            found: magic.to_vec(),
        });
    }
    let version = c.u32(&|| "header version".to_owned())?;
    if version & 0xFFFF == 0 && version != 0 {
        return Err(Kind::BigEndian { version });
    }
    if version != 2 && version != 3 {
        return Err(Kind::UnsupportedVersion { version });
    }
    let n_tensors = c.u64(&|| "header tensor count".to_owned())?;
    let n_kv = c.u64(&|| "header KV count".to_owned())?;

    // KV pairs.
    let n_kv = c.check_count(n_kv, MIN_KV_BYTES, &|| "KV count".to_owned())?;
    let mut entries: Vec<(String, Value)> =
        Vec::with_capacity(table_capacity::<(String, Value)>(n_kv, c.remaining()));
    for i in 0..n_kv {
        let key = c.str(&|| format!("key #{i}"))?;
        if key.is_empty() {
            return Err(Kind::EmptyKey);
        }
        let id = c.u32(&|| format!("value type of key '{key}'"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| Kind::UnknownValueType {
            key: key.to_owned(),
            id,
        })?;
        let value = c.value(ty, key, 0)?;
        entries.push((key.to_owned(), value));
    }
    let metadata = Metadata::from_entries(entries)?;

    // Tensor infos.
    let n_tensors = c.check_count(n_tensors, MIN_TENSOR_INFO_BYTES, &|| {
        "tensor count".to_owned()
    })?;
    let mut tensors: Vec<TensorInfo> =
        Vec::with_capacity(table_capacity::<TensorInfo>(n_tensors, c.remaining()));
    for i in 0..n_tensors {
        let name = c.str(&|| format!("name of tensor #{i}"))?;
        let n_dims = c.u32(&|| format!("n_dims of tensor '{name}'"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(Kind::BadDimCount {
                tensor: name.to_owned(),
                n_dims: n_dims.into(),
                max: MAX_DIMS,
            });
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            ne.push(c.u64(&|| format!("ne[{d}] of tensor '{name}'"))?);
        }
        let id = c.u32(&|| format!("type of tensor '{name}'"))?;
        let offset = c.u64(&|| format!("offset of tensor '{name}'"))?;
        let ty = GgmlType::from_id(id).ok_or_else(|| Kind::UnknownGgmlType {
            tensor: name.to_owned(),
            id,
        })?;
        let n_bytes = check_tensor(name, ty, &ne)?;
        tensors.push(TensorInfo {
            name: name.to_owned(),
            ty,
            ne,
            offset,
            n_bytes,
        });
    }
    let mut by_name: Vec<usize> = (0..tensors.len()).collect();
    by_name.sort_by(|&a, &b| tensor_name(&tensors, a).cmp(tensor_name(&tensors, b)));
    for w in by_name.windows(2) {
        if let [a, b] = *w {
            if tensor_name(&tensors, a) == tensor_name(&tensors, b) {
                return Err(Kind::DuplicateTensor {
                    name: tensor_name(&tensors, b).to_owned(),
                });
            }
        }
    }

    // Alignment and data section.
    let alignment = match metadata.get(super::ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) => *a,
        Some(other) => {
            return Err(Kind::AlignmentType {
                found: other.value_type(),
            })
        }
    };
    if !alignment.is_power_of_two() {
        return Err(Kind::BadAlignment {
            alignment: alignment.into(),
        });
    }
    let align = u64::from(alignment);
    let data_offset = pad_to(c.pos as u64, align).ok_or(Kind::BadAlignment {
        alignment: alignment.into(),
    })?;
    let file_len = buf.len() as u64;
    for t in &tensors {
        if t.offset % align != 0 {
            return Err(Kind::MisalignedOffset {
                tensor: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        let start = u128::from(data_offset) + u128::from(t.offset);
        let end = start + u128::from(t.n_bytes);
        if end > u128::from(file_len) {
            return Err(Kind::DataOutOfBounds {
                tensor: t.name.clone(),
                start,
                end,
                file_len,
            });
        }
    }
    // In bounds, so offset + n_bytes below cannot overflow.
    let mut by_offset: Vec<usize> = (0..tensors.len()).collect();
    by_offset.sort_by_key(|&i| tensors.get(i).map_or(0, |t| t.offset));
    for w in by_offset.windows(2) {
        if let [a, b] = *w {
            if let (Some(ta), Some(tb)) = (tensors.get(a), tensors.get(b)) {
                let a_end = ta.offset.saturating_add(ta.n_bytes);
                if a_end > tb.offset {
                    return Err(Kind::OverlappingTensors {
                        tensor: tb.name.clone(),
                        offset: tb.offset,
                        other: ta.name.clone(),
                        other_end: a_end,
                    });
                }
            }
        }
    }

    Ok(Layout {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
        by_name,
    })
}
