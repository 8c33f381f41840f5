//! The GGUF header (magic, version, metadata, tensor descriptors), parsed here rather than by
//! candle because a server is handed arbitrary files: every count, length, type, shape and
//! offset is checked before it is used, each error names the key or the tensor, and
//! metadata arrays are not decoded while parsing: only their place in the file is kept, and
//! they are read when asked for, so an array nobody uses costs nothing (candle turned every
//! element into a 32-byte value: an 8 MiB byte array took 256 MiB).
//!
//! The format (GGUF versions 1 to 3, little-endian): `GGUF`, u32 version, the tensor and
//! metadata counts, the metadata (key, u32 type, value), the tensor descriptors (name, u32
//! number of dimensions, the dimensions innermost first, u32 ggml type, u64 offset), then the
//! tensor data from the next multiple of `general.alignment` (32 unless set). Version 1 writes
//! lengths and counts as u32, later versions as u64.

use std::borrow::Cow;
use std::collections::HashMap;

use candle_core::quantized::GgmlDType;

/// Most metadata entries, and most tensors, a file may declare (real files hold tens of
/// entries and at most a few thousand tensors; the bound keeps a crafted count from filling
/// the maps).
const MAX_ENTRIES: u64 = 1 << 16;
/// Deepest nesting of arrays in arrays.
const MAX_ARRAY_DEPTH: usize = 8;
/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// The alignment of the tensor data when `general.alignment` is not set.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Most elements of an array decoded at once: 4 Mi, four times the largest vocabulary a
/// model may have here (its merges are fewer than its tokens).
pub const MAX_DECODED_ITEMS: usize = 1 << 22;

/// The type of a metadata value (GGUF's `gguf_metadata_value_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    fn from_u32(v: u32) -> Option<Self> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Bytes of one value, for the fixed-size types.
    fn size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

/// A metadata value: scalars and strings decoded, arrays located.
#[derive(Debug, Clone)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(ArrayRef),
}

/// Where an array's elements are in the file; they were walked once while parsing, so they
/// lie inside it.
#[derive(Debug, Clone, Copy)]
pub struct ArrayRef {
    pub elem: ValueType,
    pub len: usize,
    /// Offset of the first element.
    start: usize,
    /// Lengths are u64 (GGUF 2 and 3) rather than u32 (GGUF 1).
    wide: bool,
}

/// A number from an array of integers or floats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i128),
    Float(f64),
}

impl ArrayRef {
    fn cursor<'a>(&self, bytes: &'a [u8]) -> Cursor<'a> {
        Cursor {
            bytes,
            pos: self.start,
            wide: self.wide,
        }
    }

    fn check_decodable(&self) -> Result<(), String> {
        if self.len > MAX_DECODED_ITEMS {
            return Err(format!(
                "holds {} items; this server reads arrays of at most {MAX_DECODED_ITEMS}",
                self.len
            ));
        }
        Ok(())
    }

    /// The elements of an array of strings, borrowed from `bytes` (the file) when they are
    /// valid UTF-8; trailing NUL bytes (which some writers add) are dropped.
    pub fn strings<'a>(&self, bytes: &'a [u8]) -> Result<Vec<Cow<'a, str>>, String> {
        // An empty array's type is whatever the writer put (candle's writes u32).
        if self.len == 0 {
            return Ok(Vec::new());
        }
        if self.elem != ValueType::String {
            return Err("holds a value that is not a string".into());
        }
        self.check_decodable()?;
        let mut cur = self.cursor(bytes);
        (0..self.len).map(|_| Ok(text(cur.string()?))).collect()
    }

    /// The elements of an array of integers or floats.
    pub fn numbers(&self, bytes: &[u8]) -> Result<Vec<Number>, String> {
        if self.len == 0 {
            return Ok(Vec::new());
        }
        if self.elem.size().is_none() || self.elem == ValueType::Bool {
            return Err("holds a value that is not a number".into());
        }
        self.check_decodable()?;
        let mut cur = self.cursor(bytes);
        (0..self.len)
            .map(|_| {
                Ok(match cur.scalar(self.elem)? {
                    MetaValue::U8(x) => Number::Int(x.into()),
                    MetaValue::I8(x) => Number::Int(x.into()),
                    MetaValue::U16(x) => Number::Int(x.into()),
                    MetaValue::I16(x) => Number::Int(x.into()),
                    MetaValue::U32(x) => Number::Int(x.into()),
                    MetaValue::I32(x) => Number::Int(x.into()),
                    MetaValue::U64(x) => Number::Int(x.into()),
                    MetaValue::I64(x) => Number::Int(x.into()),
                    MetaValue::F32(x) => Number::Float(x.into()),
                    MetaValue::F64(x) => Number::Float(x),
                    _ => return Err("holds a value that is not a number".to_string()),
                })
            })
            .collect()
    }
}

/// A string's bytes as text: trailing NULs dropped, invalid UTF-8 replaced.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    String::from_utf8_lossy(&bytes[..end])
}

/// A tensor as its descriptor and the checks place it.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: GgmlDType,
    /// Outermost first (PyTorch order).
    pub dims: Vec<usize>,
    /// Offset of its data in the file, and its length in bytes.
    pub start: usize,
    pub len: usize,
}

/// A parsed header.
#[derive(Debug)]
pub struct Header {
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: HashMap<String, TensorInfo>,
}

/// What is wrong with a header (the caller adds the file's path).
#[derive(Debug)]
pub enum HeaderError {
    Format(String),
    Metadata { key: String, problem: String },
    Tensor { name: String, problem: String },
}

/// Reads little-endian values from the file's bytes, never past their end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    wide: bool,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "runs past the end of the file ({n} bytes wanted at offset {}, the file has {})",
                    self.pos,
                    self.bytes.len()
                )
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A length or count: u32 in GGUF 1, u64 later.
    fn length(&mut self) -> Result<u64, String> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    /// A length that must fit in memory.
    fn size(&mut self) -> Result<usize, String> {
        let n = self.length()?;
        usize::try_from(n).map_err(|_| format!("declares a length of {n}"))
    }

    /// A string's bytes.
    fn string(&mut self) -> Result<&'a [u8], String> {
        let n = self.size()?;
        self.take(n)
    }

    fn value_type(&mut self) -> Result<ValueType, String> {
        let v = self.u32()?;
        ValueType::from_u32(v).ok_or_else(|| format!("has an unknown value type {v}"))
    }

    /// A value of a fixed-size type.
    fn scalar(&mut self, ty: ValueType) -> Result<MetaValue, String> {
        use ValueType as T;
        Ok(match ty {
            T::U8 => MetaValue::U8(u8::from_le_bytes(self.array()?)),
            T::I8 => MetaValue::I8(i8::from_le_bytes(self.array()?)),
            T::U16 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            T::I16 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            T::U32 => MetaValue::U32(u32::from_le_bytes(self.array()?)),
            T::I32 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            T::U64 => MetaValue::U64(u64::from_le_bytes(self.array()?)),
            T::I64 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            T::F32 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            T::F64 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            T::Bool => match self.array::<1>()?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("is a boolean stored as {b}")),
            },
            T::String | T::Array => return Err("is not a scalar".into()),
        })
    }

    /// A metadata value; an array is walked over, not decoded.
    fn value(&mut self, ty: ValueType) -> Result<MetaValue, String> {
        match ty {
            ValueType::String => Ok(MetaValue::String(text(self.string()?).into_owned())),
            ValueType::Array => {
                let (elem, len) = self.array_header()?;
                let start = self.pos;
                self.skip_elements(elem, len, 1)?;
                Ok(MetaValue::Array(ArrayRef {
                    elem,
                    len,
                    start,
                    wide: self.wide,
                }))
            }
            _ => self.scalar(ty),
        }
    }

    fn array_header(&mut self) -> Result<(ValueType, usize), String> {
        let elem = self.value_type()?;
        let len = self.size()?;
        Ok((elem, len))
    }

    /// Moves past `len` elements of type `elem` (`depth`: arrays around them).
    fn skip_elements(&mut self, elem: ValueType, len: usize, depth: usize) -> Result<(), String> {
        if let Some(size) = elem.size() {
            let bytes = len
                .checked_mul(size)
                .ok_or_else(|| format!("declares {len} elements"))?;
            self.take(bytes)?;
            return Ok(());
        }
        // Each string or nested array takes at least its length field, so these loops end
        // at the end of the file at the latest.
        for _ in 0..len {
            if elem == ValueType::String {
                self.string()?;
            } else {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("nests arrays more than {MAX_ARRAY_DEPTH} deep"));
                }
                let (inner, n) = self.array_header()?;
                self.skip_elements(inner, n, depth + 1)?;
            }
        }
        Ok(())
    }
}

/// The ggml tensor types this server reads (candle's table; the others, e.g. the IQ types,
/// are refused by name).
fn ggml_type(v: u32) -> Option<GgmlDType> {
    use GgmlDType::*;
    Some(match v {
        0 => F32,
        1 => F16,
        2 => Q4_0,
        3 => Q4_1,
        6 => Q5_0,
        7 => Q5_1,
        8 => Q8_0,
        9 => Q8_1,
        10 => Q2K,
        11 => Q3K,
        12 => Q4K,
        13 => Q5K,
        14 => Q6K,
        15 => Q8K,
        30 => BF16,
        _ => return None,
    })
}

/// `general.alignment`, checked: a power of two, as llama.cpp requires.
fn alignment(metadata: &HashMap<String, MetaValue>) -> Result<u64, HeaderError> {
    const KEY: &str = "general.alignment";
    let bad = |problem: String| HeaderError::Metadata {
        key: KEY.into(),
        problem,
    };
    let n: i128 = match metadata.get(KEY) {
        None => return Ok(DEFAULT_ALIGNMENT),
        Some(MetaValue::U8(x)) => (*x).into(),
        Some(MetaValue::U16(x)) => (*x).into(),
        Some(MetaValue::U32(x)) => (*x).into(),
        Some(MetaValue::U64(x)) => (*x).into(),
        Some(MetaValue::I8(x)) => (*x).into(),
        Some(MetaValue::I16(x)) => (*x).into(),
        Some(MetaValue::I32(x)) => (*x).into(),
        Some(MetaValue::I64(x)) => (*x).into(),
        Some(_) => return Err(bad("is not an integer".into())),
    };
    match u64::try_from(n) {
        Ok(a) if a.is_power_of_two() => Ok(a),
        _ => Err(bad(format!(
            "is {n}; it must be a power of two (GGUF writers use 32)"
        ))),
    }
}

/// Parses and checks the header of the GGUF file whose bytes are `bytes`: afterwards every
/// tensor's rows are whole blocks of its type and its data lies inside the file.
pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
    let format = HeaderError::Format;
    let mut cur = Cursor {
        bytes,
        pos: 0,
        wide: true,
    };
    let magic = cur.array::<4>().map_err(format)?;
    if &magic != b"GGUF" {
        return Err(format(format!(
            "it starts with {magic:02x?}, not the GGUF magic"
        )));
    }
    let version = cur.u32().map_err(format)?;
    cur.wide = match version {
        1 => false,
        2 | 3 => true,
        v => {
            return Err(format(format!(
                "it is GGUF version {v}; versions 1 to 3 are read"
            )))
        }
    };
    let tensor_count = cur.length().map_err(format)?;
    let kv_count = cur.length().map_err(format)?;
    for (what, n) in [("tensors", tensor_count), ("metadata entries", kv_count)] {
        if n > MAX_ENTRIES {
            return Err(format(format!(
                "it declares {n} {what}; at most {MAX_ENTRIES} are read"
            )));
        }
    }
    let mut metadata = HashMap::new();
    for i in 0..kv_count {
        let key = cur
            .string()
            .map_err(|e| format(format!("metadata entry {i}: its key {e}")))?;
        let key = text(key).into_owned();
        let bad = |problem: String| HeaderError::Metadata {
            key: key.clone(),
            problem,
        };
        let value = cur.value_type().and_then(|t| cur.value(t)).map_err(bad)?;
        if metadata.contains_key(&key) {
            return Err(bad("appears twice".into()));
        }
        metadata.insert(key, value);
    }
    let alignment = alignment(&metadata)?;
    let mut described = Vec::new();
    for i in 0..tensor_count {
        let name = cur
            .string()
            .map_err(|e| format(format!("tensor descriptor {i}: its name {e}")))?;
        let name = text(name).into_owned();
        let (dtype, dims, offset) =
            tensor_descriptor(&mut cur, alignment).map_err(|problem| HeaderError::Tensor {
                name: name.clone(),
                problem,
            })?;
        described.push((name, dtype, dims, offset));
    }
    let data_start = (cur.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| format("its tensor data starts past any offset".into()))?;
    let mut tensors = HashMap::new();
    for (name, dtype, dims, offset) in described {
        let bad = |problem: String| HeaderError::Tensor {
            name: name.clone(),
            problem,
        };
        let len = tensor_bytes(dtype, &dims).map_err(bad)?;
        let start = data_start
            .checked_add(offset)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|s| s.checked_add(len).is_some_and(|end| end <= bytes.len()))
            .ok_or_else(|| {
                bad(format!(
                    "lies past the end of the file ({len} bytes at offset {offset} of the data, which starts at {data_start}; the file has {})",
                    bytes.len()
                ))
            })?;
        if tensors.contains_key(&name) {
            return Err(bad("appears twice".into()));
        }
        tensors.insert(
            name,
            TensorInfo {
                dtype,
                dims,
                start,
                len,
            },
        );
    }
    Ok(Header { metadata, tensors })
}

/// One tensor descriptor after its name: (type, dims outermost first, data offset).
fn tensor_descriptor(
    cur: &mut Cursor<'_>,
    alignment: u64,
) -> Result<(GgmlDType, Vec<usize>, u64), String> {
    let n_dims = cur.u32()?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(format!("has {n_dims} dimensions; 1 to {MAX_DIMS} are read"));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cur.size()?);
    }
    // Stored innermost first.
    dims.reverse();
    let code = cur.u32()?;
    let dtype = ggml_type(code)
        .ok_or_else(|| format!("has ggml type {code}, which this server does not read"))?;
    let offset = cur.u64()?;
    if !offset.is_multiple_of(alignment) {
        return Err(format!(
            "starts at offset {offset} of the data, not a multiple of the alignment {alignment}"
        ));
    }
    Ok((dtype, dims, offset))
}

/// The bytes of a tensor of `dtype` and `dims`, whose rows must be whole blocks.
fn tensor_bytes(dtype: GgmlDType, dims: &[usize]) -> Result<usize, String> {
    let block = dtype.block_size();
    let row = *dims.last().unwrap_or(&0);
    if !row.is_multiple_of(block) {
        return Err(format!(
            "has rows of {row} values (shape {dims:?}), not a whole number of {dtype:?} blocks of {block}"
        ));
    }
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|count| (count / block).checked_mul(dtype.type_size()))
        .ok_or_else(|| format!("has shape {dims:?}, too large to address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF 3 header with `kv` (already encoded entries) and no tensors.
    fn file(kv: &[Vec<u8>]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend((kv.len() as u64).to_le_bytes());
        for e in kv {
            b.extend(e);
        }
        b
    }

    fn string(s: &str) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s.as_bytes());
        b
    }

    fn entry(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
        let mut b = string(key);
        b.extend(ty.to_le_bytes());
        b.extend(value);
        b
    }

    fn array(elem: u32, len: u64, items: &[u8]) -> Vec<u8> {
        let mut b = elem.to_le_bytes().to_vec();
        b.extend(len.to_le_bytes());
        b.extend(items);
        b
    }

    #[test]
    fn arrays_are_located_then_decoded_on_request() {
        let strings: Vec<u8> = ["a", "bc\0", "d\u{e9}"]
            .iter()
            .flat_map(|s| string(s))
            .collect();
        let ints: Vec<u8> = [-1i32, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let nested = array(9, 2, &[array(0, 1, &[5]), array(8, 0, &[])].concat());
        let bytes = file(&[
            entry("s", 9, &array(8, 3, &strings)),
            entry("i", 9, &array(5, 2, &ints)),
            entry("n", 9, &nested),
            entry("x", 4, &9u32.to_le_bytes()),
        ]);
        let h = parse(&bytes).unwrap();
        let MetaValue::Array(s) = &h.metadata["s"] else {
            panic!()
        };
        assert_eq!(s.strings(&bytes).unwrap(), ["a", "bc", "d\u{e9}"]);
        assert!(s.numbers(&bytes).is_err());
        let MetaValue::Array(i) = &h.metadata["i"] else {
            panic!()
        };
        assert_eq!(
            i.numbers(&bytes).unwrap(),
            [Number::Int(-1), Number::Int(7)]
        );
        assert!(matches!(
            h.metadata["n"],
            MetaValue::Array(ArrayRef { len: 2, .. })
        ));
        assert!(matches!(h.metadata["x"], MetaValue::U32(9)));
    }

    #[test]
    fn an_empty_array_of_any_type_is_an_empty_list() {
        // candle's writer gives an empty array the type u32, whatever it holds.
        let bytes = file(&[entry("e", 9, &array(4, 0, &[]))]);
        let h = parse(&bytes).unwrap();
        let MetaValue::Array(e) = &h.metadata["e"] else {
            panic!()
        };
        assert!(e.strings(&bytes).unwrap().is_empty());
        assert!(e.numbers(&bytes).unwrap().is_empty());
    }

    #[test]
    fn every_truncation_and_bad_count_is_an_error_not_a_panic() {
        let strings: Vec<u8> = ["ab", "c"].iter().flat_map(|s| string(s)).collect();
        let bytes = file(&[
            entry("s", 9, &array(8, 2, &strings)),
            entry("b", 7, &[1]),
            entry("f", 6, &1.5f32.to_le_bytes()),
        ]);
        assert!(parse(&bytes).is_ok());
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // An array that declares more elements than the file holds, a huge count, an
        // unknown type, a bad boolean, a duplicate key.
        for kv in [
            vec![entry("s", 9, &array(0, u64::MAX, &[]))],
            vec![entry("s", 9, &array(8, 1 << 40, &[]))],
            vec![entry("s", 13, &[])],
            vec![entry("b", 7, &[2])],
            vec![entry("b", 7, &[1]), entry("b", 7, &[0])],
        ] {
            assert!(matches!(
                parse(&file(&kv)),
                Err(HeaderError::Metadata { .. })
            ));
        }
        let mut huge = file(&[]);
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&huge), Err(HeaderError::Format(_))));
    }

    #[test]
    fn deeply_nested_arrays_are_refused() {
        let mut value = array(0, 0, &[]);
        for _ in 0..MAX_ARRAY_DEPTH + 1 {
            value = array(9, 1, &value);
        }
        let err = parse(&file(&[entry("deep", 9, &value)])).unwrap_err();
        assert!(
            matches!(&err, HeaderError::Metadata { problem, .. } if problem.contains("deep")),
            "{err:?}"
        );
    }
}
