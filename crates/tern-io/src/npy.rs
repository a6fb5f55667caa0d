//! NumPy `.npy` (format 1.0/2.0) for the parity hooks: `tern logits` writes
//! f32 arrays; tests read f32/f64/i32/i64 arrays written by numpy.

use std::path::{Path, PathBuf};

/// A `.npy` problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct NpyError {
    pub path: PathBuf,
    pub reason: String,
}

fn err(path: &Path, reason: impl Into<String>) -> NpyError {
    NpyError {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// An array read from a `.npy` file, values widened to f64.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// Write a little-endian f32 C-order array atomically (temp file + rename).
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(err(
            path,
            format!(
                "shape {shape:?} holds {n} values but {} were given",
                data.len()
            ),
        ));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Pad so that magic + version + length + header is a multiple of 64 and ends in '\n'.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::atomic::write_atomic(path, &bytes).map_err(|e| err(path, format!("cannot write: {e}")))
}

/// Read an array of `<f4`, `<f8`, `<i4` or `<i8` in C order.
pub fn read(path: &Path) -> Result<NpyArray, NpyError> {
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err(path, "not a .npy file (bad magic)"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(err(path, format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| err(path, "truncated or non-UTF-8 header"))?;
    let field = |name: &str| -> Option<&str> {
        let i = header.find(&format!("'{name}'"))? + name.len() + 2;
        Some(header[i..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| err(path, "header has no descr"))?;
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(err(path, "Fortran-order arrays are not supported"));
    }
    let shape_txt = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| err(path, "header has no shape"))?;
    let shape = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| err(path, format!("bad dimension {s:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(path, "shape overflows"))?;
    let body = &bytes[start + hlen..];
    let size = match descr {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        other => return Err(err(path, format!("unsupported dtype {other}"))),
    };
    if body.len() != n.saturating_mul(size) {
        return Err(err(
            path,
            format!(
                "data holds {} bytes, shape {shape:?} needs {}",
                body.len(),
                n * size
            ),
        ));
    }
    let data = body
        .chunks_exact(size)
        .map(|c| match descr {
            "<f4" => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
            "<i4" => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
            "<f8" => f64::from_le_bytes(c.try_into().expect("8 bytes")),
            _ => i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64,
        })
        .collect();
    Ok(NpyArray { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        write_f32(&p, &[2, 3], &data).unwrap();
        let a = read(&p).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, data.iter().map(|&v| v as f64).collect::<Vec<_>>());
        let raw = std::fs::read(&p).unwrap();
        assert_eq!((raw.len() - data.len() * 4) % 64, 0, "header padded to 64");
        assert!(write_f32(&p, &[4], &data).is_err());
        std::fs::write(&p, b"nope").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("a.npy"));
    }
}
