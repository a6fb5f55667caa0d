//! Header parsing: the `safetensors` crate's `read_metadata` is the authority
//! on what a valid file is; a cheap pre-pass over the same JSON adds the checks
//! it lacks (duplicate names, a bound on dimensions, typed unknown-dtype errors)
//! and, when the crate rejects a file, names the tensor at fault.
//!
//! Memory: everything allocated here is proportional to the header, and the
//! header length is checked against the file length before any of it is read,
//! so a hostile length field never turns into an allocation.

use std::collections::BTreeMap;
use std::fmt;

use ::safetensors::tensor::SafeTensorError;
use ::safetensors::{Dtype, SafeTensors};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::error::SafetensorsErrorKind as Kind;

/// Largest header the `safetensors` crate accepts (its `MAX_HEADER_SIZE`).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Most dimensions a tensor may have (numpy's limit). Bounding it keeps the
/// shape vectors the parser allocates proportional to the header's size.
pub const MAX_DIMS: usize = 64;

/// One tensor as validated by the header parser; offsets relative to the data section.
#[derive(Debug, Clone)]
pub(crate) struct HeaderTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub begin: u64,
    pub end: u64,
}

/// A validated header.
#[derive(Debug)]
pub(crate) struct Header {
    /// Length of the JSON header (bytes after the 8-byte prefix).
    pub header_len: u64,
    /// The `__metadata__` map (empty when absent).
    pub metadata: BTreeMap<String, String>,
    /// Tensors in data-offset order.
    pub tensors: Vec<HeaderTensor>,
}

/// Validate the whole file image `buf` (prefix, header and data).
pub(crate) fn parse(buf: &[u8]) -> Result<Header, Kind> {
    let file_len = buf.len() as u64;
    if buf.is_empty() {
        return Err(Kind::EmptyFile);
    }
    let Some(prefix) = buf.get(..8) else {
        return Err(Kind::TruncatedPrefix { len: file_len });
    };
    let header_len = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_LEN {
        return Err(Kind::HeaderTooLarge {
            header_len,
            limit: MAX_HEADER_LEN,
        });
    }
    let available = file_len - 8;
    if header_len > available {
        return Err(Kind::HeaderPastEnd {
            header_len,
            available,
        });
    }
    // Both bounds above hold, so this fits in usize and in the buffer.
    let header_bytes = &buf[8..8 + header_len as usize];
    let data_len = available - header_len;

    let raw = pre_pass(header_bytes)?;

    let (n, meta) = SafeTensors::read_metadata(buf)
        .map_err(|e| diagnose(e, &raw, data_len, header_len, available))?;
    debug_assert_eq!(n as u64, header_len);

    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let mut tensors: Vec<HeaderTensor> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| HeaderTensor {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            begin: info.data_offsets.0 as u64,
            end: info.data_offsets.1 as u64,
        })
        .collect();
    tensors.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
    Ok(Header {
        header_len,
        metadata,
        tensors,
    })
}

/// A header entry as written, before the crate's validation.
#[derive(Debug)]
struct RawEntry {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    dims: usize,
    begin: u64,
    end: u64,
}

#[derive(Deserialize)]
struct RawInfo {
    dtype: String,
    shape: BoundedShape,
    data_offsets: (u64, u64),
}

/// A shape that stores at most [`MAX_DIMS`] dimensions but counts them all.
struct BoundedShape {
    dims: Vec<u64>,
    count: usize,
}

impl<'de> Deserialize<'de> for BoundedShape {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BoundedShape;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of non-negative integers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BoundedShape, A::Error> {
                let mut dims = Vec::new();
                let mut count = 0usize;
                loop {
                    if count < MAX_DIMS {
                        match seq.next_element::<u64>()? {
                            Some(d) => dims.push(d),
                            None => break,
                        }
                    } else if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                    count += 1;
                }
                Ok(BoundedShape { dims, count })
            }
        }
        d.deserialize_seq(V)
    }
}

struct RawHeader {
    entries: Vec<RawEntry>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object mapping tensor names to {dtype, shape, data_offsets}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
                let mut entries = Vec::new();
                let mut seen_metadata = false;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "__metadata__" {
                        if seen_metadata {
                            return Err(de::Error::custom("`__metadata__` appears twice"));
                        }
                        seen_metadata = true;
                        map.next_value::<Option<BTreeMap<String, String>>>()
                            .map_err(|e| de::Error::custom(format!("in `__metadata__`: {e}")))?;
                        continue;
                    }
                    let info = map.next_value_seed(Named(&key))?;
                    entries.push(RawEntry {
                        name: key,
                        dtype: info.dtype,
                        shape: info.shape.dims,
                        dims: info.shape.count,
                        begin: info.data_offsets.0,
                        end: info.data_offsets.1,
                    });
                }
                Ok(RawHeader { entries })
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses one tensor entry, prefixing any error with the tensor's name.
struct Named<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for Named<'_> {
    type Value = RawInfo;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawInfo, D::Error> {
        RawInfo::deserialize(d)
            .map_err(|e| de::Error::custom(format!("in entry of tensor `{}`: {e}", self.0)))
    }
}

fn pre_pass(header: &[u8]) -> Result<Vec<RawEntry>, Kind> {
    let text = std::str::from_utf8(header).map_err(|e| Kind::HeaderNotUtf8(e.to_string()))?;
    let raw: RawHeader =
        serde_json::from_str(text).map_err(|e| Kind::InvalidHeaderJson(e.to_string()))?;
    let mut entries = raw.entries;

    // Duplicates: the crate's map silently keeps one of them.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| entries[a].name.cmp(&entries[b].name));
    for w in order.windows(2) {
        if entries[w[0]].name == entries[w[1]].name {
            return Err(Kind::DuplicateTensor {
                tensor: entries[w[0]].name.clone(),
            });
        }
    }
    drop(order);

    entries.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
    for e in &entries {
        if e.dims > MAX_DIMS {
            return Err(Kind::TooManyDims {
                tensor: e.name.clone(),
                dims: e.dims,
                max: MAX_DIMS,
            });
        }
        if parse_dtype(&e.dtype).is_none() {
            return Err(Kind::UnknownDtype {
                tensor: e.name.clone(),
                dtype: e.dtype.clone(),
            });
        }
    }
    Ok(entries)
}

/// The crate's dtype for a header dtype string, if it knows it.
pub(crate) fn parse_dtype(s: &str) -> Option<Dtype> {
    Dtype::deserialize(de::value::StrDeserializer::<de::value::Error>::new(s)).ok()
}

/// Bits an entry's data needs, or `None` on overflow.
fn entry_bits(e: &RawEntry, dtype: Dtype) -> Option<u64> {
    e.shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| n.checked_mul(dtype.bitsize()))
        .map(|b| b as u64)
}

fn typed(e: &RawEntry) -> Option<(&RawEntry, Dtype)> {
    parse_dtype(&e.dtype).map(|d| (e, d))
}

/// Turn the crate's rejection into a typed error naming the tensor at fault.
fn diagnose(
    err: SafeTensorError,
    raw: &[RawEntry],
    data_len: u64,
    header_len: u64,
    available: u64,
) -> Kind {
    match err {
        SafeTensorError::ValidationOverflow => {
            if let Some(e) = raw
                .iter()
                .find(|e| typed(e).is_some_and(|(e, d)| entry_bits(e, d).is_none()))
            {
                return Kind::ShapeOverflow {
                    tensor: e.name.clone(),
                    shape: e.shape.clone(),
                };
            }
        }
        SafeTensorError::MisalignedSlice => {
            if let Some((e, d)) = raw
                .iter()
                .filter_map(typed)
                .find(|(e, d)| entry_bits(e, *d).is_some_and(|b| b % 8 != 0))
            {
                return Kind::MisalignedSubByte {
                    tensor: e.name.clone(),
                    dtype: d.to_string(),
                    shape: e.shape.clone(),
                };
            }
        }
        SafeTensorError::TensorInvalidInfo => {
            if let Some((e, d, bits)) = raw.iter().filter_map(typed).find_map(|(e, d)| {
                let bits = entry_bits(e, d)?;
                (e.end.checked_sub(e.begin) != Some(bits / 8)).then_some((e, d, bits))
            }) {
                return Kind::ByteCountMismatch {
                    tensor: e.name.clone(),
                    dtype: d.to_string(),
                    shape: e.shape.clone(),
                    expected: bits / 8,
                    begin: e.begin,
                    end: e.end,
                };
            }
        }
        SafeTensorError::InvalidOffset(_) => {
            let mut expected_begin = 0u64;
            for e in raw {
                if e.begin != expected_begin || e.end < e.begin {
                    return Kind::BadOffsets {
                        tensor: e.name.clone(),
                        begin: e.begin,
                        end: e.end,
                        expected_begin,
                    };
                }
                expected_begin = e.end;
            }
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            let end = raw.last().map_or(0, |e| e.end);
            if end > data_len {
                let first_past = raw.iter().find(|e| e.end > data_len).expect("one exists");
                return Kind::OffsetsPastEnd {
                    tensor: first_past.name.clone(),
                    end: first_past.end,
                    data_len,
                };
            }
            return Kind::TrailingBytes {
                count: data_len - end,
            };
        }
        SafeTensorError::HeaderTooLarge => {
            return Kind::HeaderTooLarge {
                header_len,
                limit: MAX_HEADER_LEN,
            }
        }
        SafeTensorError::InvalidHeaderLength => {
            return Kind::HeaderPastEnd {
                header_len,
                available,
            }
        }
        SafeTensorError::InvalidHeader(e) => return Kind::HeaderNotUtf8(e.to_string()),
        SafeTensorError::InvalidHeaderDeserialization(e) | SafeTensorError::JsonError(e) => {
            return Kind::InvalidHeaderJson(e.to_string())
        }
        _ => {}
    }
    Kind::Invalid(err.to_string())
}
