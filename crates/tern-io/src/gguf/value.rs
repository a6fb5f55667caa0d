//! GGUF metadata values: the 13 value types, scalars, strings and (nested) arrays.
//!
//! Arrays are stored as typed vectors ([`Array`]), so a numeric array takes
//! exactly as much memory as its encoding in the file, and a string array is
//! one contiguous buffer plus one end offset per string ([`StringArray`]).
//! This keeps the reader's largest allocation within the size of the file.

use std::fmt::{self, Write as _};

use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

/// A GGUF metadata value type, with its id as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    /// All value types in id order.
    pub const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    /// The id written in the file (u8 = 0 ... f64 = 12).
    pub fn id(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::String => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    /// The type for a file id, `None` when unknown.
    pub fn from_id(id: u32) -> Option<ValueType> {
        ValueType::ALL.get(usize::try_from(id).ok()?).copied()
    }

    /// Lower-case name (`"u32"`, `"string"`, `"array"`).
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// Size in bytes of a scalar of this type; `None` for string and array.
    pub fn scalar_size(self) -> Option<usize> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    /// The fewest bytes one value of this type can occupy in a file
    /// (a string: its u64 length; an array: its u32 type and u64 count).
    pub fn min_encoded_size(self) -> usize {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            other => other.scalar_size().unwrap_or(1),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A GGUF metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A GGUF array: one element type, stored as a typed vector.
///
/// Nested arrays (`Array::Array`) box their elements so that the element
/// vector costs 8 bytes per element, fewer than the 12 bytes the smallest
/// encoded array takes in a file.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(StringArray),
    Array(Vec<Box<Array>>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// An array of strings kept in one buffer (tokenizer vocabularies have 10^5 entries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StringArray {
    bytes: String,
    ends: Vec<usize>,
}

impl StringArray {
    /// An empty array.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty array with room for `n` strings of `bytes` bytes in total.
    pub fn with_capacity(n: usize, bytes: usize) -> Self {
        StringArray {
            bytes: String::with_capacity(bytes),
            ends: Vec::with_capacity(n),
        }
    }

    /// Append a string.
    pub fn push(&mut self, s: &str) {
        self.bytes.push_str(s);
        self.ends.push(self.bytes.len());
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there are no strings.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total bytes of all strings.
    pub fn total_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The `i`-th string.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = match i.checked_sub(1) {
            Some(p) => *self.ends.get(p)?,
            None => 0,
        };
        self.bytes.get(start..end)
    }

    /// The strings in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(move |i| self.get(i).unwrap_or(""))
    }

    /// Copy into a `Vec<String>`.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

impl<S: AsRef<str>> FromIterator<S> for StringArray {
    fn from_iter<T: IntoIterator<Item = S>>(iter: T) -> Self {
        let mut a = StringArray::new();
        for s in iter {
            a.push(s.as_ref());
        }
        a
    }
}

impl Serialize for StringArray {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl Array {
    /// The element type.
    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a [`Value`] (copies strings and nested arrays).
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(v) => Value::U8(*v.get(i)?),
            Array::I8(v) => Value::I8(*v.get(i)?),
            Array::U16(v) => Value::U16(*v.get(i)?),
            Array::I16(v) => Value::I16(*v.get(i)?),
            Array::U32(v) => Value::U32(*v.get(i)?),
            Array::I32(v) => Value::I32(*v.get(i)?),
            Array::F32(v) => Value::F32(*v.get(i)?),
            Array::Bool(v) => Value::Bool(*v.get(i)?),
            Array::String(v) => Value::String(v.get(i)?.to_owned()),
            Array::Array(v) => Value::Array((**v.get(i)?).clone()),
            Array::U64(v) => Value::U64(*v.get(i)?),
            Array::I64(v) => Value::I64(*v.get(i)?),
            Array::F64(v) => Value::F64(*v.get(i)?),
        })
    }

    /// The string elements, if this is an array of strings.
    pub fn as_strings(&self) -> Option<&StringArray> {
        match self {
            Array::String(s) => Some(s),
            _ => None,
        }
    }

    /// Type name such as `"array[string]"` or `"array[array[i32]]"` (the
    /// inner type of a nested array is taken from its first element).
    pub fn type_name(&self) -> String {
        match self {
            Array::Array(v) => match v.first() {
                Some(inner) => format!("array[{}]", inner.type_name()),
                None => "array[array]".to_owned(),
            },
            other => format!("array[{}]", other.elem_type()),
        }
    }

    /// Render element `i` into `out` (strings quoted).
    fn render_elem(&self, i: usize, out: &mut String, max_items: usize, max_str: usize) {
        match self {
            Array::String(v) => render_str(v.get(i).unwrap_or(""), out, max_str),
            Array::Array(v) => {
                if let Some(a) = v.get(i) {
                    a.render_into(out, max_items, max_str)
                }
            }
            other => {
                if let Some(v) = other.get(i) {
                    v.render_into(out, max_items, max_str)
                }
            }
        }
    }

    fn render_into(&self, out: &mut String, max_items: usize, max_str: usize) {
        out.push('[');
        let n = self.len();
        for i in 0..n.min(max_items) {
            if i > 0 {
                out.push_str(", ");
            }
            self.render_elem(i, out, max_items, max_str);
        }
        if n > max_items {
            if max_items > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "… ({n} items)");
        }
        out.push(']');
    }

    /// JSON of at most `max_items` elements per array level; a longer array
    /// gets a final string element `"… (N items)"`.
    fn to_json(&self, max_items: Option<usize>) -> serde_json::Value {
        let n = self.len();
        let take = max_items.map_or(n, |m| m.min(n));
        let mut items: Vec<serde_json::Value> = (0..take)
            .map(|i| match self {
                Array::Array(v) => v
                    .get(i)
                    .map_or(serde_json::Value::Null, |a| a.to_json(max_items)),
                other => other
                    .get(i)
                    .map_or(serde_json::Value::Null, |v| v.to_json(max_items)),
            })
            .collect();
        if take < n {
            items.push(serde_json::Value::String(format!("… ({n} items)")));
        }
        serde_json::Value::Array(items)
    }
}

impl Serialize for Array {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Array::U8(v) => v.serialize(serializer),
            Array::I8(v) => v.serialize(serializer),
            Array::U16(v) => v.serialize(serializer),
            Array::I16(v) => v.serialize(serializer),
            Array::U32(v) => v.serialize(serializer),
            Array::I32(v) => v.serialize(serializer),
            Array::F32(v) => v.serialize(serializer),
            Array::Bool(v) => v.serialize(serializer),
            Array::String(v) => v.serialize(serializer),
            Array::Array(v) => {
                let mut seq = serializer.serialize_seq(Some(v.len()))?;
                for a in v {
                    seq.serialize_element(&**a)?;
                }
                seq.end()
            }
            Array::U64(v) => v.serialize(serializer),
            Array::I64(v) => v.serialize(serializer),
            Array::F64(v) => v.serialize(serializer),
        }
    }
}

/// Serializes as the plain JSON value: numbers, booleans, strings, arrays.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::U8(v) => serializer.serialize_u8(*v),
            Value::I8(v) => serializer.serialize_i8(*v),
            Value::U16(v) => serializer.serialize_u16(*v),
            Value::I16(v) => serializer.serialize_i16(*v),
            Value::U32(v) => serializer.serialize_u32(*v),
            Value::I32(v) => serializer.serialize_i32(*v),
            Value::F32(v) => serializer.serialize_f32(*v),
            Value::Bool(v) => serializer.serialize_bool(*v),
            Value::String(v) => serializer.serialize_str(v),
            Value::Array(v) => v.serialize(serializer),
            Value::U64(v) => serializer.serialize_u64(*v),
            Value::I64(v) => serializer.serialize_i64(*v),
            Value::F64(v) => serializer.serialize_f64(*v),
        }
    }
}

fn render_str(s: &str, out: &mut String, max_chars: usize) {
    let n_chars = s.chars().count();
    if n_chars <= max_chars {
        let _ = write!(out, "{s:?}");
    } else {
        let head: String = s.chars().take(max_chars).collect();
        let _ = write!(out, "{head:?}… ({} bytes)", s.len());
    }
}

impl Value {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Type name such as `"u32"` or `"array[string]"`.
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(a) => a.type_name(),
            other => other.value_type().name().to_owned(),
        }
    }

    /// Any integer type widened to u64, if it is non-negative.
    pub fn to_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type widened to i64, if it fits.
    pub fn to_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any float type widened to f64.
    pub fn to_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array, if this is an array.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A one-line rendering: arrays show at most `max_items` elements per
    /// level followed by `… (N items)`, strings at most `max_str` characters
    /// followed by `… (N bytes)`.
    pub fn render(&self, max_items: usize, max_str: usize) -> String {
        let mut out = String::new();
        self.render_into(&mut out, max_items, max_str);
        out
    }

    /// [`Value::render`] with 8 array items and 80 string characters.
    pub fn short(&self) -> String {
        self.render(8, 80)
    }

    fn render_into(&self, out: &mut String, max_items: usize, max_str: usize) {
        let _ = match self {
            Value::U8(v) => write!(out, "{v}"),
            Value::I8(v) => write!(out, "{v}"),
            Value::U16(v) => write!(out, "{v}"),
            Value::I16(v) => write!(out, "{v}"),
            Value::U32(v) => write!(out, "{v}"),
            Value::I32(v) => write!(out, "{v}"),
            Value::F32(v) => write_float(out, *v, f64::from(v.abs())),
            Value::Bool(v) => write!(out, "{v}"),
            Value::String(s) => {
                render_str(s, out, max_str);
                Ok(())
            }
            Value::Array(a) => {
                a.render_into(out, max_items, max_str);
                Ok(())
            }
            Value::U64(v) => write!(out, "{v}"),
            Value::I64(v) => write!(out, "{v}"),
            Value::F64(v) => write_float(out, *v, v.abs()),
        };
    }

    /// JSON of the value; with `Some(max_items)`, arrays keep at most that many
    /// elements per level and end with a string `"… (N items)"` when cut.
    /// Non-finite floats become `null` (JSON has no NaN).
    pub fn to_json(&self, max_items: Option<usize>) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::U8(v) => J::from(*v),
            Value::I8(v) => J::from(*v),
            Value::U16(v) => J::from(*v),
            Value::I16(v) => J::from(*v),
            Value::U32(v) => J::from(*v),
            Value::I32(v) => J::from(*v),
            Value::F32(v) => serde_json::Number::from_f64(f64::from(*v)).map_or(J::Null, J::Number),
            Value::Bool(v) => J::Bool(*v),
            Value::String(s) => J::String(s.clone()),
            Value::Array(a) => a.to_json(max_items),
            Value::U64(v) => J::from(*v),
            Value::I64(v) => J::from(*v),
            Value::F64(v) => serde_json::Number::from_f64(*v).map_or(J::Null, J::Number),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

macro_rules! conversions {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::$variant(v) }
        }
        impl From<Vec<$t>> for Array {
            fn from(v: Vec<$t>) -> Self { Array::$variant(v) }
        }
        impl From<Vec<$t>> for Value {
            fn from(v: Vec<$t>) -> Self { Value::Array(Array::$variant(v)) }
        }
    )*};
}

conversions!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, u64 => U64, i64 => I64, f64 => F64);

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_owned())
    }
}

impl From<Array> for Value {
    fn from(v: Array) -> Self {
        Value::Array(v)
    }
}

impl From<StringArray> for Array {
    fn from(v: StringArray) -> Self {
        Array::String(v)
    }
}

impl From<StringArray> for Value {
    fn from(v: StringArray) -> Self {
        Value::Array(Array::String(v))
    }
}

impl From<Vec<Array>> for Array {
    fn from(v: Vec<Array>) -> Self {
        Array::Array(v.into_iter().map(Box::new).collect())
    }
}

impl From<Vec<Array>> for Value {
    fn from(v: Vec<Array>) -> Self {
        Value::Array(Array::from(v))
    }
}

impl From<Vec<String>> for Array {
    fn from(v: Vec<String>) -> Self {
        Array::String(v.into_iter().collect())
    }
}

impl From<Vec<&str>> for Array {
    fn from(v: Vec<&str>) -> Self {
        Array::String(v.into_iter().collect())
    }
}

impl From<Vec<String>> for Value {
    fn from(v: Vec<String>) -> Self {
        Value::Array(Array::String(v.into_iter().collect()))
    }
}

impl From<Vec<&str>> for Value {
    fn from(v: Vec<&str>) -> Self {
        Value::Array(Array::String(v.into_iter().collect()))
    }
}

/// Shortest round-trip decimal, switching to exponent notation for very large
/// or very small magnitudes (Rust's `Display` for floats never does).
fn write_float<F: fmt::Display + fmt::LowerExp>(out: &mut String, v: F, a: f64) -> fmt::Result {
    if a != 0.0 && a.is_finite() && !(1e-5..1e16).contains(&a) {
        write!(out, "{v:e}")
    } else {
        write!(out, "{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for (i, t) in ValueType::ALL.iter().enumerate() {
            assert_eq!(t.id() as usize, i);
            assert_eq!(ValueType::from_id(t.id()), Some(*t));
        }
        assert_eq!(ValueType::from_id(13), None);
        assert_eq!(ValueType::from_id(u32::MAX), None);
    }

    #[test]
    fn string_array_indexing() {
        let a: StringArray = ["", "ab", "é", ""].into_iter().collect();
        assert_eq!(a.len(), 4);
        assert_eq!(a.to_vec(), vec!["", "ab", "é", ""]);
        assert_eq!(a.get(2), Some("é"));
        assert_eq!(a.get(4), None);
    }

    #[test]
    fn render_truncates() {
        let v = Value::from((0..1000u32).collect::<Vec<_>>());
        assert_eq!(v.render(3, 10), "[0, 1, 2, … (1000 items)]");
        let s = Value::from("x".repeat(100));
        assert_eq!(s.render(3, 4), "\"xxxx\"… (100 bytes)");
        let nested = Value::from(vec![Array::from(vec![1i32, 2]), Array::from(vec!["a"])]);
        assert_eq!(nested.short(), "[[1, 2], [\"a\"]]");
        assert_eq!(nested.type_name(), "array[array[i32]]");
        let j = v.to_json(Some(2));
        assert_eq!(j, serde_json::json!([0, 1, "… (1000 items)"]));
        assert_eq!(
            serde_json::to_value(&nested).unwrap(),
            serde_json::json!([[1, 2], ["a"]])
        );
    }
}
