//! Opening checkpoints: one `.safetensors` file, a sharded model through its
//! `*.safetensors.index.json`, or a directory holding either.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Deref;
use std::path::{Component, Path, PathBuf};

use ::safetensors::Dtype;
use memmap2::Mmap;
use serde::Serialize;

use super::convert;
use super::error::{SafetensorsError, SafetensorsErrorKind as Kind};
use super::header;

/// Name of the index file of a sharded Hugging Face model.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";
/// Name of the single-file Hugging Face checkpoint.
pub const SINGLE_FILE_NAME: &str = "model.safetensors";
/// Largest index JSON tern reads (real ones are a few hundred KiB).
pub const MAX_INDEX_LEN: u64 = 64 << 20;

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One `.safetensors` file of a checkpoint, mapped once.
pub struct ShardFile {
    path: PathBuf,
    bytes: Bytes,
    header_len: u64,
    metadata: BTreeMap<String, String>,
}

impl ShardFile {
    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Length of the JSON header (the data section starts at `8 + header_len`).
    pub fn header_len(&self) -> u64 {
        self.header_len
    }
    /// Total file length in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }
    /// The file's `__metadata__` map (empty when absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
}

/// Where one tensor is and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Tensor name as in the header.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost dimension first (C order).
    pub shape: Vec<usize>,
    /// Index into [`Checkpoint::files`].
    pub file: usize,
    /// Absolute byte offset of the data within its file.
    pub offset: u64,
    /// Length of the data in bytes.
    pub len: u64,
}

impl TensorEntry {
    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        // The header validation proved that this product does not overflow.
        self.shape.iter().product()
    }
}

/// A safetensors checkpoint: one file or the shards of an index, memory mapped.
pub struct Checkpoint {
    root: PathBuf,
    index: Option<PathBuf>,
    files: Vec<ShardFile>,
    tensors: Vec<TensorEntry>,
    metadata: BTreeMap<String, String>,
    index_metadata: BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("root", &self.root)
            .field("files", &self.files.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct IndexJson {
    #[serde(default)]
    metadata: Option<BTreeMap<String, serde_json::Value>>,
    weight_map: Option<BTreeMap<String, String>>,
}

impl Checkpoint {
    /// Open a `.safetensors` file, an index JSON, or a directory holding a
    /// checkpoint (`model.safetensors.index.json`, then `model.safetensors`,
    /// then a lone `*.safetensors.index.json`, then a lone `*.safetensors`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SafetensorsError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| SafetensorsError::io(path, "open", e))?;
        if meta.is_dir() {
            return Self::open_dir(path);
        }
        let is_json = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".json"));
        if is_json {
            Self::open_index(path)
        } else {
            Self::open_file(path)
        }
    }

    /// Open one `.safetensors` file.
    pub fn open_file(path: impl AsRef<Path>) -> Result<Self, SafetensorsError> {
        let path = path.as_ref();
        let (shard, mut tensors) = map_file(path)?;
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            root: path.to_path_buf(),
            index: None,
            metadata: shard.metadata.clone(),
            files: vec![shard],
            tensors,
            index_metadata: BTreeMap::new(),
        })
    }

    /// Validate an in-memory safetensors image; `name` stands in for the file
    /// path in errors and summaries.
    pub fn from_bytes(name: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self, SafetensorsError> {
        let path = name.as_ref();
        let (shard, mut tensors) = build_shard(path, Bytes::Owned(bytes), 0)?;
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            root: path.to_path_buf(),
            index: None,
            metadata: shard.metadata.clone(),
            files: vec![shard],
            tensors,
            index_metadata: BTreeMap::new(),
        })
    }

    /// Open a sharded checkpoint through its index JSON (`weight_map`: tensor
    /// name -> shard file name, relative to the index's directory). Every shard
    /// is mapped once; only the tensors the index lists are exposed.
    pub fn open_index(index_path: impl AsRef<Path>) -> Result<Self, SafetensorsError> {
        let index_path = index_path.as_ref();
        let err = |kind| SafetensorsError::new(index_path, kind);
        let file =
            File::open(index_path).map_err(|e| SafetensorsError::io(index_path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| SafetensorsError::io(index_path, "stat", e))?
            .len();
        if len > MAX_INDEX_LEN {
            return Err(err(Kind::IndexInvalidJson(format!(
                "index is {len} bytes, more than the {MAX_INDEX_LEN}-byte limit"
            ))));
        }
        let text =
            std::fs::read(index_path).map_err(|e| SafetensorsError::io(index_path, "read", e))?;
        let parsed: IndexJson = serde_json::from_slice(&text)
            .map_err(|e| err(Kind::IndexInvalidJson(e.to_string())))?;
        drop(text);
        let weight_map = parsed
            .weight_map
            .ok_or_else(|| err(Kind::IndexMissingWeightMap))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));

        // Shard names in sorted order; each opened once.
        let mut shard_ids: BTreeMap<&str, usize> = BTreeMap::new();
        for (tensor, shard) in &weight_map {
            let rel = Path::new(shard);
            let plain =
                !shard.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
            if !plain {
                return Err(err(Kind::IndexBadShardPath {
                    tensor: tensor.clone(),
                    shard: shard.clone(),
                }));
            }
            shard_ids.insert(shard, 0);
        }
        let mut files = Vec::with_capacity(shard_ids.len());
        let mut shard_tensors = Vec::with_capacity(shard_ids.len());
        for (i, (shard, id)) in shard_ids.iter_mut().enumerate() {
            *id = i;
            let shard_path = dir.join(shard);
            if !shard_path.is_file() {
                let tensor = weight_map
                    .iter()
                    .find(|(_, s)| s.as_str() == *shard)
                    .map(|(t, _)| t.clone())
                    .unwrap_or_default();
                return Err(err(Kind::ShardMissing {
                    shard: shard.to_string(),
                    tensor,
                    shard_path,
                }));
            }
            let file = File::open(&shard_path)
                .map_err(|e| SafetensorsError::io(&shard_path, "open", e))?;
            let bytes = map(&shard_path, &file)?;
            let (sf, mut ts) = build_shard(&shard_path, bytes, i)?;
            ts.sort_by(|a, b| a.name.cmp(&b.name));
            files.push(sf);
            shard_tensors.push(ts);
        }

        let mut tensors = Vec::with_capacity(weight_map.len());
        for (tensor, shard) in &weight_map {
            let id = shard_ids[shard.as_str()];
            let found = shard_tensors[id]
                .binary_search_by(|t| t.name.as_str().cmp(tensor))
                .map_err(|_| {
                    err(Kind::TensorNotInShard {
                        tensor: tensor.clone(),
                        shard: shard.clone(),
                    })
                })?;
            tensors.push(shard_tensors[id][found].clone());
        }

        // Shards' `__metadata__`, merged; the first shard (by name) wins on conflicts.
        let mut metadata = BTreeMap::new();
        for f in &files {
            for (k, v) in &f.metadata {
                metadata.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Ok(Self {
            root: index_path.to_path_buf(),
            index: Some(index_path.to_path_buf()),
            files,
            tensors,
            metadata,
            index_metadata: parsed.metadata.unwrap_or_default(),
        })
    }

    fn open_dir(dir: &Path) -> Result<Self, SafetensorsError> {
        let index = dir.join(INDEX_FILE_NAME);
        if index.is_file() {
            return Self::open_index(index);
        }
        let single = dir.join(SINGLE_FILE_NAME);
        if single.is_file() {
            return Self::open_file(single);
        }
        let mut indexes = Vec::new();
        let mut singles = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| SafetensorsError::io(dir, "list", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SafetensorsError::io(dir, "list", e))?;
            let p = entry.path();
            if !p.is_file() {
                continue;
            }
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".safetensors.index.json") {
                indexes.push(p);
            } else if name.ends_with(".safetensors") {
                singles.push(p);
            }
        }
        match (indexes.len(), singles.len()) {
            (1, _) => Self::open_index(&indexes[0]),
            (0, 1) => Self::open_file(&singles[0]),
            (0, 0) => Err(SafetensorsError::new(
                dir,
                Kind::NoCheckpointInDir("no *.safetensors or *.safetensors.index.json".into()),
            )),
            (i, s) => Err(SafetensorsError::new(
                dir,
                Kind::NoCheckpointInDir(format!(
                    "ambiguous: {i} index files and {s} .safetensors files and no {INDEX_FILE_NAME} or {SINGLE_FILE_NAME}"
                )),
            )),
        }
    }

    /// What was opened: the file, or the index JSON.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The index JSON when the checkpoint is sharded.
    pub fn index_path(&self) -> Option<&Path> {
        self.index.as_deref()
    }
    /// The mapped files (one, or the shards sorted by name).
    pub fn files(&self) -> &[ShardFile] {
        &self.files
    }
    /// All tensors, sorted by name.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }
    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.name.as_str())
    }
    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    /// Whether the checkpoint holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    /// The `__metadata__` map (for shards: merged, first shard by name wins).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
    /// The index's own `metadata` object (e.g. `total_size`); empty for one file.
    pub fn index_metadata(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.index_metadata
    }
    /// The entry of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tensors[i])
    }
    /// The entry of `name`, or a `TensorNotFound` error naming the checkpoint.
    pub fn entry(&self, name: &str) -> Result<&TensorEntry, SafetensorsError> {
        self.get(name).ok_or_else(|| {
            SafetensorsError::new(&self.root, Kind::TensorNotFound(name.to_string()))
        })
    }
    /// The file holding `entry`.
    pub fn file_of(&self, entry: &TensorEntry) -> &Path {
        &self.files[entry.file].path
    }
    /// Zero-copy view of a tensor's little-endian bytes.
    pub fn data(&self, name: &str) -> Result<&[u8], SafetensorsError> {
        let e = self.entry(name)?;
        Ok(self.entry_data(e))
    }
    /// Zero-copy view of the bytes of an entry of this checkpoint.
    pub fn entry_data(&self, e: &TensorEntry) -> &[u8] {
        let bytes: &[u8] = &self.files[e.file].bytes;
        // Offsets were validated against the file length when it was opened.
        &bytes[e.offset as usize..(e.offset + e.len) as usize]
    }

    /// Convert a tensor to f32 into `out` (which must hold exactly
    /// `numel` values). F32, F16, BF16, U8 and I8 are supported.
    pub fn to_f32_into(&self, name: &str, out: &mut [f32]) -> Result<(), SafetensorsError> {
        let e = self.entry(name)?;
        let path = self.file_of(e);
        let err = |kind| SafetensorsError::new(path, kind);
        if out.len() != e.numel() {
            return Err(err(Kind::OutputLength {
                tensor: e.name.clone(),
                expected: e.numel(),
                got: out.len(),
            }));
        }
        if !convert::decode_f32(e.dtype, self.entry_data(e), out) {
            return Err(err(Kind::UnsupportedDtype {
                tensor: e.name.clone(),
                dtype: e.dtype,
            }));
        }
        Ok(())
    }

    /// Convert a tensor to a new `Vec<f32>`.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, SafetensorsError> {
        let e = self.entry(name)?;
        if !convert::is_f32_convertible(e.dtype) {
            return Err(SafetensorsError::new(
                self.file_of(e),
                Kind::UnsupportedDtype {
                    tensor: e.name.clone(),
                    dtype: e.dtype,
                },
            ));
        }
        let mut out = vec![0f32; e.numel()];
        self.to_f32_into(name, &mut out)?;
        Ok(out)
    }

    /// Fail with `NonFinite` (naming tensor, file and element) if a float
    /// tensor holds NaN or infinity. Integer tensors always pass; dtypes that
    /// cannot be converted to f32 give `UnsupportedDtype`. Reads the mapped
    /// bytes directly without allocating.
    pub fn check_finite(&self, name: &str) -> Result<(), SafetensorsError> {
        let e = self.entry(name)?;
        let path = self.file_of(e);
        match convert::first_non_finite(e.dtype, self.entry_data(e)) {
            None => Err(SafetensorsError::new(
                path,
                Kind::UnsupportedDtype {
                    tensor: e.name.clone(),
                    dtype: e.dtype,
                },
            )),
            Some(None) => Ok(()),
            Some(Some((index, value))) => Err(SafetensorsError::new(
                path,
                Kind::NonFinite {
                    tensor: e.name.clone(),
                    index,
                    value,
                },
            )),
        }
    }

    /// A serializable description for `tern inspect`.
    pub fn summary(&self) -> CheckpointSummary {
        CheckpointSummary {
            root: self.root.display().to_string(),
            index: self.index.as_ref().map(|p| p.display().to_string()),
            metadata: self.metadata.clone(),
            index_metadata: self.index_metadata.clone(),
            files: self
                .files
                .iter()
                .map(|f| FileSummary {
                    path: f.path.display().to_string(),
                    file_len: f.file_len(),
                    header_len: f.header_len,
                    metadata: f.metadata.clone(),
                })
                .collect(),
            tensors: self
                .tensors
                .iter()
                .map(|t| TensorSummary {
                    name: t.name.clone(),
                    dtype: t.dtype.to_string(),
                    shape: t.shape.clone(),
                    bytes: t.len,
                    file: self.files[t.file].path.display().to_string(),
                    offset: t.offset,
                })
                .collect(),
        }
    }
}

/// Serializable description of a checkpoint (what `tern inspect` prints).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckpointSummary {
    /// The file or index that was opened.
    pub root: String,
    /// The index JSON, for sharded checkpoints.
    pub index: Option<String>,
    /// Merged `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    /// The index's `metadata` object.
    pub index_metadata: BTreeMap<String, serde_json::Value>,
    /// One entry per mapped file.
    pub files: Vec<FileSummary>,
    /// One entry per tensor, sorted by name.
    pub tensors: Vec<TensorSummary>,
}

/// One file in a [`CheckpointSummary`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileSummary {
    pub path: String,
    pub file_len: u64,
    pub header_len: u64,
    pub metadata: BTreeMap<String, String>,
}

/// One tensor in a [`CheckpointSummary`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TensorSummary {
    pub name: String,
    /// Header dtype string (`F32`, `BF16`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Data length in bytes.
    pub bytes: u64,
    /// File holding the tensor.
    pub file: String,
    /// Absolute byte offset of the data within `file`.
    pub offset: u64,
}

impl std::fmt::Display for CheckpointSummary {
    /// Metadata lines, then a table: name, type, shape, bytes, offset (and the
    /// file, when there are several).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "checkpoint: {}", self.root)?;
        for file in &self.files {
            writeln!(
                f,
                "file: {} ({} bytes, header {} bytes)",
                file.path, file.file_len, file.header_len
            )?;
        }
        for (k, v) in &self.index_metadata {
            writeln!(f, "index.{k}: {v}")?;
        }
        for (k, v) in &self.metadata {
            writeln!(f, "{k}: {v}")?;
        }
        let sharded = self.files.len() > 1;
        let shapes: Vec<String> = self
            .tensors
            .iter()
            .map(|t| format!("{:?}", t.shape))
            .collect();
        let wn = self
            .tensors
            .iter()
            .map(|t| t.name.len())
            .chain([4])
            .max()
            .unwrap_or(4);
        let wt = self
            .tensors
            .iter()
            .map(|t| t.dtype.len())
            .chain([4])
            .max()
            .unwrap_or(4);
        let ws = shapes.iter().map(|s| s.len()).chain([5]).max().unwrap_or(5);
        write!(
            f,
            "{:<wn$}  {:<wt$}  {:<ws$}  {:>12}  {:>12}",
            "name", "type", "shape", "bytes", "offset"
        )?;
        writeln!(f, "{}", if sharded { "  file" } else { "" })?;
        for (t, shape) in self.tensors.iter().zip(&shapes) {
            write!(
                f,
                "{:<wn$}  {:<wt$}  {:<ws$}  {:>12}  {:>12}",
                t.name, t.dtype, shape, t.bytes, t.offset
            )?;
            if sharded {
                let short = Path::new(&t.file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| t.file.clone());
                write!(f, "  {short}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn map(path: &Path, file: &File) -> Result<Bytes, SafetensorsError> {
    let len = file
        .metadata()
        .map_err(|e| SafetensorsError::io(path, "stat", e))?
        .len();
    if len == 0 {
        // Mapping zero bytes fails on some systems; validation reports EmptyFile.
        return Ok(Bytes::Owned(Vec::new()));
    }
    // SAFETY: the map is read-only. tern does not modify checkpoint files while
    // they are open; a file truncated by another process underneath us is the
    // usual caveat of memory-mapped IO.
    let m = unsafe { Mmap::map(file) }.map_err(|e| SafetensorsError::io(path, "mmap", e))?;
    Ok(Bytes::Mapped(m))
}

fn map_file(path: &Path) -> Result<(ShardFile, Vec<TensorEntry>), SafetensorsError> {
    let file = File::open(path).map_err(|e| SafetensorsError::io(path, "open", e))?;
    let bytes = map(path, &file)?;
    build_shard(path, bytes, 0)
}

fn build_shard(
    path: &Path,
    bytes: Bytes,
    file_index: usize,
) -> Result<(ShardFile, Vec<TensorEntry>), SafetensorsError> {
    let h = header::parse(&bytes).map_err(|k| SafetensorsError::new(path, k))?;
    let data_start = 8 + h.header_len;
    let tensors = h
        .tensors
        .into_iter()
        .map(|t| TensorEntry {
            name: t.name,
            dtype: t.dtype,
            shape: t.shape,
            file: file_index,
            offset: data_start + t.begin,
            len: t.end - t.begin,
        })
        .collect();
    Ok((
        ShardFile {
            path: path.to_path_buf(),
            bytes,
            header_len: h.header_len,
            metadata: h.metadata,
        },
        tensors,
    ))
}
