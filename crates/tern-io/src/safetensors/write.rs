//! Writing safetensors files, laid out as the `safetensors` Python package
//! lays them out: tensors ordered by dtype (widest alignment first, in the
//! format's dtype order) then by name, a compact JSON header with
//! `__metadata__` first, padded with spaces to a multiple of 8 bytes.
//! `__metadata__` keys are written in sorted order.

use crate::atomic::AtomicFile;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use ::safetensors::Dtype;

use super::error::{SafetensorsError, SafetensorsErrorKind as Kind};
use super::header::{MAX_DIMS, MAX_HEADER_LEN};

/// One tensor handed to the writer.
pub trait WriteTensor {
    /// Name in the header.
    fn name(&self) -> &str;
    /// Element type.
    fn dtype(&self) -> Dtype;
    /// Shape, outermost first.
    fn shape(&self) -> &[usize];
    /// Little-endian, C-order bytes; must be exactly `numel * bitsize / 8` long.
    fn data(&self) -> &[u8];
}

impl<N: AsRef<str>, S: AsRef<[usize]>, D: AsRef<[u8]>> WriteTensor for (N, Dtype, S, D) {
    fn name(&self) -> &str {
        self.0.as_ref()
    }
    fn dtype(&self) -> Dtype {
        self.1
    }
    fn shape(&self) -> &[usize] {
        self.2.as_ref()
    }
    fn data(&self) -> &[u8] {
        self.3.as_ref()
    }
}

impl<T: WriteTensor + ?Sized> WriteTensor for &T {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn dtype(&self) -> Dtype {
        (**self).dtype()
    }
    fn shape(&self) -> &[usize] {
        (**self).shape()
    }
    fn data(&self) -> &[u8] {
        (**self).data()
    }
}

/// Check the tensors, order them, and build the padded header.
fn plan<T: WriteTensor>(
    tensors: &mut [T],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>, Kind> {
    let invalid = |t: &T, reason: String| Kind::WriteInvalid {
        tensor: t.name().to_string(),
        reason,
    };
    for t in tensors.iter() {
        if t.name() == "__metadata__" {
            return Err(invalid(t, "`__metadata__` is reserved".into()));
        }
        if t.shape().len() > MAX_DIMS {
            return Err(invalid(t, format!("more than {MAX_DIMS} dimensions")));
        }
        let bits = t
            .shape()
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(t.dtype().bitsize()))
            .ok_or_else(|| invalid(t, format!("shape {:?} overflows", t.shape())))?;
        if bits % 8 != 0 {
            return Err(invalid(
                t,
                format!(
                    "{} elements of {} do not fill whole bytes",
                    bits / t.dtype().bitsize(),
                    t.dtype()
                ),
            ));
        }
        if t.data().len() != bits / 8 {
            return Err(invalid(
                t,
                format!(
                    "dtype {} and shape {:?} need {} bytes, got {}",
                    t.dtype(),
                    t.shape(),
                    bits / 8,
                    t.data().len()
                ),
            ));
        }
    }
    tensors.sort_by(|a, b| {
        b.dtype()
            .cmp(&a.dtype())
            .then_with(|| a.name().cmp(b.name()))
    });
    for w in tensors.windows(2) {
        if w[0].name() == w[1].name() {
            return Err(invalid(&w[0], "name given twice".into()));
        }
    }

    let json = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let mut h = String::from("{");
    if let Some(meta) = metadata {
        h.push_str("\"__metadata__\":{");
        for (i, (k, v)) in meta.iter().enumerate() {
            if i > 0 {
                h.push(',');
            }
            h.push_str(&json(k));
            h.push(':');
            h.push_str(&json(v));
        }
        h.push('}');
    }
    let mut offset = 0usize;
    for (i, t) in tensors.iter().enumerate() {
        if i > 0 || metadata.is_some() {
            h.push(',');
        }
        let end = offset + t.data().len();
        let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
        h.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            json(t.name()),
            t.dtype(),
            shape.join(",")
        ));
        offset = end;
    }
    h.push('}');
    let mut bytes = h.into_bytes();
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    if bytes.len() as u64 > MAX_HEADER_LEN {
        return Err(Kind::WriteInvalid {
            tensor: String::new(),
            reason: format!(
                "header of {} bytes exceeds the {MAX_HEADER_LEN}-byte limit",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// Serialize to an in-memory safetensors image (same bytes as
/// [`write_safetensors`] writes).
pub fn serialize_safetensors<I, T>(
    tensors: I,
    metadata: Option<BTreeMap<String, String>>,
) -> Result<Vec<u8>, SafetensorsError>
where
    I: IntoIterator<Item = T>,
    T: WriteTensor,
{
    let mut tensors: Vec<T> = tensors.into_iter().collect();
    let header = plan(&mut tensors, metadata.as_ref())
        .map_err(|k| SafetensorsError::new(Path::new("<memory>"), k))?;
    let total = 8 + header.len() + tensors.iter().map(|t| t.data().len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for t in &tensors {
        out.extend_from_slice(t.data());
    }
    Ok(out)
}

/// Write a safetensors file atomically: the bytes go to a temporary file in
/// the target's directory, which is flushed, fsynced and then renamed over
/// `path`. On any error the temporary file is removed and `path` is left as
/// it was.
pub fn write_safetensors<I, T>(
    path: impl AsRef<Path>,
    tensors: I,
    metadata: Option<BTreeMap<String, String>>,
) -> Result<(), SafetensorsError>
where
    I: IntoIterator<Item = T>,
    T: WriteTensor,
{
    let path = path.as_ref();
    let mut tensors: Vec<T> = tensors.into_iter().collect();
    let header =
        plan(&mut tensors, metadata.as_ref()).map_err(|k| SafetensorsError::new(path, k))?;

    let mut f = AtomicFile::create(path)
        .map_err(|e| SafetensorsError::io(path, "create temporary file", e))?;
    let tmp = f.temp_path().to_path_buf();
    let io = |e| SafetensorsError::io(&tmp, "write temporary file", e);
    f.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    f.write_all(&header).map_err(io)?;
    for t in &tensors {
        f.write_all(t.data()).map_err(io)?;
    }
    f.commit()
        .map_err(|e| SafetensorsError::io(path, "fsync and rename into place", e))?;
    Ok(())
}
