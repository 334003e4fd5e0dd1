//! A borrowing reader of the protobuf wire format, for OTLP trace requests.
//!
//! The receivers convert a request to Arrow straight from its bytes: ids,
//! names and attribute strings are read as slices of the request and copied
//! once, into the column builders, with no per-span structs, maps or strings
//! in between. It follows what prost (the decoder it replaces) accepts and
//! rejects: a known field with the wrong wire type, a string that is not
//! UTF-8, a truncated or over-long varint, or a length past the end is an
//! error; unknown fields (groups included) are skipped; a scalar given twice
//! keeps its last value; a message given twice is merged.

use std::fmt;

/// Why a request's bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

fn err(what: impl Into<String>) -> WireError {
    WireError(what.into())
}

/// Nesting of unknown groups skipped, at most (prost's recursion limit).
const MAX_DEPTH: u32 = 100;

/// One field's value as it is on the wire.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    /// A group, skipped whole (no OTLP field is one).
    Group,
}

impl<'a> Value<'a> {
    fn kind(&self) -> &'static str {
        match self {
            Value::Varint(_) => "varint",
            Value::Fixed64(_) => "64-bit",
            Value::Bytes(_) => "length-delimited",
            Value::Fixed32(_) => "32-bit",
            Value::Group => "group",
        }
    }

    fn mismatch(&self, field: &str, want: &str) -> WireError {
        err(format!("invalid wire type for {field}: {} where {want} belongs", self.kind()))
    }

    /// The bytes of a length-delimited field (bytes, string or message).
    #[inline]
    pub fn bytes(self, field: &str) -> Result<&'a [u8], WireError> {
        match self {
            Value::Bytes(b) => Ok(b),
            v => Err(v.mismatch(field, "length-delimited")),
        }
    }

    /// A string field, checked to be UTF-8.
    #[inline]
    pub fn str(self, field: &str) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.bytes(field)?)
            .map_err(|_| err(format!("invalid string value for {field}: data is not UTF-8 encoded")))
    }

    #[inline]
    pub fn varint(self, field: &str) -> Result<u64, WireError> {
        match self {
            Value::Varint(v) => Ok(v),
            v => Err(v.mismatch(field, "varint")),
        }
    }

    /// An `int32` or enum field: the varint's low 32 bits, as prost reads it.
    #[inline]
    pub fn int32(self, field: &str) -> Result<i32, WireError> {
        Ok(self.varint(field)? as i32)
    }

    #[inline]
    pub fn fixed64(self, field: &str) -> Result<u64, WireError> {
        match self {
            Value::Fixed64(v) => Ok(v),
            v => Err(v.mismatch(field, "64-bit")),
        }
    }

    #[inline]
    pub fn fixed32(self, field: &str) -> Result<u32, WireError> {
        match self {
            Value::Fixed32(v) => Ok(v),
            v => Err(v.mismatch(field, "32-bit")),
        }
    }
}

/// The fields of one message, in wire order.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, WireError> {
        // Most varints on the wire (tags, lengths of short strings) are one byte.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        self.varint_long()
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(err("buffer underflow: a varint runs past the end"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(err("invalid varint: longer than 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(err("invalid varint: longer than 64 bits"))
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end =
            self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(|| {
                err(format!("buffer underflow: a field of {n} bytes runs past the end of its message"))
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Skips a group whose start tag was just read, through its end tag.
    fn skip_group(&mut self, number: u32, depth: u32) -> Result<(), WireError> {
        if depth > MAX_DEPTH {
            return Err(err("recursion limit reached"));
        }
        loop {
            let (n, wire) = self.key()?.ok_or_else(|| err("a group has no end"))?;
            match wire {
                4 if n == number => return Ok(()),
                4 => return Err(err("unexpected end group tag")),
                3 => self.skip_group(n, depth + 1)?,
                _ => {
                    self.value(wire)?;
                }
            }
        }
    }

    #[inline(always)]
    fn key(&mut self) -> Result<Option<(u32, u8)>, WireError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| err(format!("invalid key value: {key}")))?;
        let (number, wire) = (key >> 3, (key & 7) as u8);
        if number == 0 {
            return Err(err("invalid tag value: 0"));
        }
        Ok(Some((number, wire)))
    }

    #[inline(always)]
    fn value(&mut self, wire: u8) -> Result<Value<'a>, WireError> {
        Ok(match wire {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default())),
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| err("a length does not fit in memory"))?;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default())),
            w => return Err(err(format!("invalid wire type value: {w}"))),
        })
    }

    /// The next field: its number and value.
    #[allow(clippy::should_implement_trait)]
    #[inline]
    pub fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, WireError> {
        let Some((number, wire)) = self.key()? else {
            return Ok(None);
        };
        let value = match wire {
            3 => {
                self.skip_group(number, 1)?;
                Value::Group
            }
            4 => return Err(err("unexpected end group tag")),
            w => self.value(w)?,
        };
        Ok(Some((number, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(buf: &[u8]) -> Result<Vec<(u32, String)>, WireError> {
        let mut f = Fields::new(buf);
        let mut out = Vec::new();
        while let Some((n, v)) = f.next()? {
            out.push((n, format!("{v:?}")));
        }
        Ok(out)
    }

    #[test]
    fn reads_each_wire_type_and_skips_groups() {
        // 1: varint 300; 2: bytes "hi"; 3: fixed64 7; 4: fixed32 9; 5: a group holding 1: varint 1.
        let buf = [
            0x08, 0xac, 0x02, 0x12, 0x02, b'h', b'i', 0x19, 7, 0, 0, 0, 0, 0, 0, 0, 0x25, 9, 0, 0, 0, 0x2b, 0x08, 0x01,
            0x2c,
        ];
        let got = all(&buf).unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], (1, "Varint(300)".into()));
        assert_eq!(got[1], (2, "Bytes([104, 105])".into()));
        assert_eq!(got[2], (3, "Fixed64(7)".into()));
        assert_eq!(got[3], (4, "Fixed32(9)".into()));
        assert_eq!(got[4], (5, "Group".into()));
    }

    #[test]
    fn truncated_and_invalid_input_is_an_error() {
        assert!(all(&[0x12, 0x05, b'a']).is_err(), "length past the end");
        assert!(all(&[0x08]).is_err(), "varint missing");
        assert!(all(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err(), "over 64 bits");
        assert!(all(&[0x00, 0x01]).is_err(), "field number 0");
        assert!(all(&[0x0e]).is_err(), "wire type 6");
        assert!(all(&[0x0c]).is_err(), "an end group with no start");
        assert!(all(&[0x0b, 0x08, 0x01]).is_err(), "a group with no end");
        let mut f = Fields::new(&[0x0a, 0x02, 0xff, 0xfe]);
        let (_, v) = f.next().unwrap().unwrap();
        assert!(v.str("name").is_err(), "not UTF-8");
        assert!(v.varint("kind").is_err(), "wrong wire type");
    }
}
