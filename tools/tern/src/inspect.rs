//! `tern inspect`: one report shape for GGUF and safetensors files.

use anyhow::Result;
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// Everything `tern inspect` prints.
#[derive(Serialize)]
pub struct Report {
    pub path: String,
    /// "gguf" or "safetensors".
    pub format: &'static str,
    /// Format details: version, alignment, data offset, shard files.
    pub details: Vec<(String, String)>,
    /// Which order `shape` lists dimensions in.
    pub shape_order: &'static str,
    pub metadata: Vec<MetaEntry>,
    pub tensors: Vec<TensorRow>,
}

#[derive(Serialize)]
pub struct MetaEntry {
    pub key: String,
    /// The value type as the file names it (`u32`, `string`, `array[string]`...).
    #[serde(rename = "type")]
    pub ty: String,
    /// Full value as JSON (arrays complete), for scripts.
    pub value: serde_json::Value,
    /// Short human rendering (long arrays and strings truncated).
    #[serde(skip)]
    pub display: String,
}

#[derive(Serialize)]
pub struct TensorRow {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub shape: Vec<u64>,
    pub bytes: u64,
    /// Offset of the data: relative to the data section for GGUF, to the
    /// byte buffer after the header for safetensors.
    pub offset: u64,
    /// The shard file holding the tensor (sharded safetensors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl Report {
    pub fn write_json(&self, out: &mut impl Write) -> Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)?;
        Ok(())
    }

    pub fn write_text(&self, out: &mut impl Write) -> Result<()> {
        writeln!(out, "file: {}", self.path)?;
        writeln!(out, "format: {}", self.format)?;
        for (k, v) in &self.details {
            writeln!(out, "{k}: {v}")?;
        }
        writeln!(out)?;
        writeln!(out, "metadata ({} keys):", self.metadata.len())?;
        let kw = self.metadata.iter().map(|m| m.key.len()).max().unwrap_or(0);
        let tw = self.metadata.iter().map(|m| m.ty.len()).max().unwrap_or(0);
        for m in &self.metadata {
            writeln!(out, "  {:kw$}  {:tw$}  {}", m.key, m.ty, m.display)?;
        }
        writeln!(out)?;
        let total: u64 = self.tensors.iter().map(|t| t.bytes).sum();
        writeln!(
            out,
            "tensors ({}, {} bytes; shape {}):",
            self.tensors.len(),
            total,
            self.shape_order
        )?;
        let shapes: Vec<String> = self
            .tensors
            .iter()
            .map(|t| {
                let dims: Vec<String> = t.shape.iter().map(u64::to_string).collect();
                format!("[{}]", dims.join(", "))
            })
            .collect();
        let head = ["name", "type", "shape", "bytes", "offset"];
        let w = |f: &dyn Fn(usize) -> usize, h: &str| {
            (0..self.tensors.len())
                .map(f)
                .max()
                .unwrap_or(0)
                .max(h.len())
        };
        let nw = w(&|i| self.tensors[i].name.len(), head[0]);
        let tyw = w(&|i| self.tensors[i].ty.len(), head[1]);
        let sw = w(&|i| shapes[i].len(), head[2]);
        let bw = w(&|i| self.tensors[i].bytes.to_string().len(), head[3]);
        let ow = w(&|i| self.tensors[i].offset.to_string().len(), head[4]);
        let with_file = self.tensors.iter().any(|t| t.file.is_some());
        write!(
            out,
            "  {:nw$}  {:tyw$}  {:sw$}  {:>bw$}  {:>ow$}",
            head[0], head[1], head[2], head[3], head[4]
        )?;
        writeln!(out, "{}", if with_file { "  file" } else { "" })?;
        for (t, shape) in self.tensors.iter().zip(&shapes) {
            write!(
                out,
                "  {:nw$}  {:tyw$}  {:sw$}  {:>bw$}  {:>ow$}",
                t.name, t.ty, shape, t.bytes, t.offset
            )?;
            match &t.file {
                Some(f) => writeln!(out, "  {f}")?,
                None => writeln!(out)?,
            }
        }
        Ok(())
    }
}

/// Shorten a rendering to at most `max` characters, marking the cut.
pub fn truncate(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

impl Report {
    /// Open `path` as GGUF (by magic or `.gguf` extension) or as a safetensors
    /// checkpoint (file, index JSON or folder).
    pub fn open(path: &Path) -> Result<Report> {
        if is_gguf(path) {
            Ok(Self::from_gguf(&tern_io::gguf::GgufFile::open(path)?))
        } else {
            Ok(Self::from_safetensors(
                &tern_io::safetensors::Checkpoint::open(path)?,
            ))
        }
    }

    pub fn from_gguf(f: &tern_io::gguf::GgufFile) -> Report {
        const ITEMS: usize = 8;
        const CHARS: usize = 80;
        Report {
            path: f.path().display().to_string(),
            format: "gguf",
            details: vec![
                ("version".into(), f.version().to_string()),
                ("alignment".into(), f.alignment().to_string()),
                ("data offset".into(), f.data_offset().to_string()),
                ("file bytes".into(), f.file_len().to_string()),
            ],
            shape_order: "ne, innermost first",
            metadata: f
                .metadata()
                .iter()
                .map(|(k, v)| MetaEntry {
                    key: k.to_owned(),
                    ty: v.type_name(),
                    value: v.to_json(None),
                    display: v.render(ITEMS, CHARS),
                })
                .collect(),
            tensors: f
                .tensors()
                .iter()
                .map(|t| TensorRow {
                    name: t.name.clone(),
                    ty: t.ty.name().to_owned(),
                    shape: t.ne.clone(),
                    bytes: t.n_bytes,
                    offset: t.offset,
                    file: None,
                })
                .collect(),
        }
    }

    pub fn from_safetensors(c: &tern_io::safetensors::Checkpoint) -> Report {
        let sharded = c.index_path().is_some();
        let mut details = vec![("files".into(), c.files().len().to_string())];
        if let Some(index) = c.index_path() {
            details.push(("index".into(), index.display().to_string()));
        }
        let file_name = |i: usize| {
            c.files()[i]
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let data_start = |i: usize| 8 + c.files()[i].header_len();
        let mut metadata: Vec<MetaEntry> = c
            .metadata()
            .iter()
            .map(|(k, v)| MetaEntry {
                key: k.clone(),
                ty: "string".into(),
                value: serde_json::Value::String(v.clone()),
                display: truncate(format!("{v:?}"), 80),
            })
            .collect();
        metadata.extend(c.index_metadata().iter().map(|(k, v)| MetaEntry {
            key: format!("index.{k}"),
            ty: "json".into(),
            value: v.clone(),
            display: truncate(v.to_string(), 80),
        }));
        Report {
            path: c.root().display().to_string(),
            format: "safetensors",
            details,
            shape_order: "outermost first",
            metadata,
            tensors: c
                .tensors()
                .iter()
                .map(|t| TensorRow {
                    name: t.name.clone(),
                    ty: format!("{:?}", t.dtype),
                    shape: t.shape.iter().map(|&d| d as u64).collect(),
                    bytes: t.len,
                    offset: t.offset - data_start(t.file),
                    file: sharded.then(|| file_name(t.file)),
                })
                .collect(),
        }
    }
}

fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| &magic == b"GGUF")
}
