//! Universal Binary JSON (UBJSON, draft 12), as XGBoost writes its models (`save_model("m.ubj")`,
//! its default format since 2.1): decoded into a `serde_json::Value` for the JSON model parser.
//!
//! Numbers are big-endian; containers may be plain (`[` … `]`, `{` … `}`) or optimized with a count
//! (`#`) and a value type (`$`), which XGBoost uses for its float, int and byte arrays. Float NaN (a
//! categorical split's condition) becomes `null`, as XGBoost's JSON `NaN` does in `xgboost.rs`.
//!
//! The input is untrusted: every length and count is checked against the bytes that remain before
//! anything is allocated, nesting is at most [`MAX_NESTING`] deep, and errors name the byte offset.

use serde_json::{Map, Number, Value};

/// Deepest nesting of arrays and objects accepted (XGBoost models nest about 6 deep).
pub const MAX_NESTING: usize = 64;

/// Whether `bytes` look like a UBJSON object (`{` then a key length, a count or a type marker).
pub fn detect(bytes: &[u8]) -> bool {
    matches!(bytes, [b'{', b'i' | b'U' | b'I' | b'l' | b'L' | b'#' | b'$' | b'}', ..])
}

/// Decodes one UBJSON value that fills `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader { bytes, pos: 0 };
    let v = r.value(0)?;
    if r.pos != bytes.len() {
        return Err(format!("UBJSON: {} bytes after the value at offset {}", bytes.len() - r.pos, r.pos));
    }
    Ok(v)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn err<T>(&self, what: impl std::fmt::Display) -> Result<T, String> {
        Err(format!("UBJSON at offset {}: {what}", self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        match self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()) {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => self.err(format!("{n} bytes wanted, {} left", self.bytes.len() - self.pos)),
        }
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    /// An integer of the type `marker`.
    fn int(&mut self, marker: u8) -> Result<i64, String> {
        Ok(match marker {
            b'i' => i64::from(i8::from_be_bytes(self.array()?)),
            b'U' => i64::from(self.byte()?),
            b'I' => i64::from(i16::from_be_bytes(self.array()?)),
            b'l' => i64::from(i32::from_be_bytes(self.array()?)),
            b'L' => i64::from_be_bytes(self.array()?),
            other => return self.err(format!("an integer type marker wanted, found {:?}", other as char)),
        })
    }

    /// A length or count: an integer marker and a value in `0..=left bytes` (each element or byte
    /// takes at least one byte, so a larger count cannot be honest).
    fn length(&mut self) -> Result<usize, String> {
        let marker = self.byte()?;
        let n = self.int(marker)?;
        let left = self.bytes.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= left => Ok(n),
            _ => self.err(format!("length {n} with {left} bytes left")),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.length()?;
        let at = self.pos;
        let s = self.take(n)?;
        match std::str::from_utf8(s) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(format!("UBJSON at offset {at}: a string that is not UTF-8: {e}")),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        let marker = self.byte()?;
        self.typed(marker, depth)
    }

    fn typed(&mut self, marker: u8, depth: usize) -> Result<Value, String> {
        Ok(match marker {
            b'Z' => Value::Null,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' | b'U' | b'I' | b'l' | b'L' => Value::from(self.int(marker)?),
            b'd' => float(f64::from(f32::from_be_bytes(self.array()?))),
            b'D' => float(f64::from_be_bytes(self.array()?)),
            b'C' => Value::String(char::from(self.byte()?).to_string()),
            b'S' => Value::String(self.string()?),
            b'H' => {
                let at = self.pos;
                let text = self.string()?;
                match text.parse::<f64>() {
                    Ok(x) => float(x),
                    Err(_) => return Err(format!("UBJSON at offset {at}: high-precision number {text:?}")),
                }
            }
            b'[' | b'{' if depth >= MAX_NESTING => {
                return self.err(format!("nested deeper than {MAX_NESTING}"));
            }
            b'[' => self.container(depth, false)?,
            b'{' => self.container(depth, true)?,
            b'N' => return self.err("a no-op where a value belongs"),
            other => return self.err(format!("unknown type marker {other:#04x}")),
        })
    }

    /// The rest of an array or object after its opening marker.
    fn container(&mut self, depth: usize, object: bool) -> Result<Value, String> {
        let mut element_type = None;
        if self.peek() == Some(b'$') {
            self.pos += 1;
            let t = self.byte()?;
            if matches!(t, b'N' | b'Z' | b'T' | b'F' | b'[' | b'{') {
                // Zero-byte or nested element types are legal UBJSON that no model uses; a count of
                // them would not be bounded by the bytes left.
                return self.err(format!("container element type {:?} is not supported", t as char));
            }
            element_type = Some(t);
            if self.peek() != Some(b'#') {
                return self.err("a typed container without a count");
            }
        }
        let count = if self.peek() == Some(b'#') {
            self.pos += 1;
            Some(self.length()?)
        } else {
            None
        };
        let element = |r: &mut Self| match element_type {
            Some(t) => r.typed(t, depth + 1),
            None => {
                while r.peek() == Some(b'N') {
                    r.pos += 1;
                }
                r.value(depth + 1)
            }
        };
        let end = if object { b'}' } else { b']' };
        let mut items = Vec::new();
        let mut fields = Map::new();
        let mut i = 0usize;
        loop {
            match count {
                Some(n) if i == n => break,
                None => {
                    while self.peek() == Some(b'N') {
                        self.pos += 1;
                    }
                    if self.peek() == Some(end) {
                        self.pos += 1;
                        break;
                    }
                }
                _ => {}
            }
            if object {
                let key = self.string()?;
                let v = element(self)?;
                fields.insert(key, v);
            } else {
                items.push(element(self)?);
            }
            i += 1;
        }
        Ok(if object { Value::Object(fields) } else { Value::Array(items) })
    }
}

/// A JSON number, or null for NaN and infinities (which JSON cannot hold).
fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(s: &str) -> Vec<u8> {
        let mut v = vec![b'U', s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn plain_and_optimized_containers_decode() {
        // {"a": [1, -2.5f32, "x"], "b": [$d #U 2 1.0 NaN], "c": [$U #i 3 0 1 255], "d": {#U 1 "e": T}}
        let mut b = vec![b'{'];
        b.extend(key("a"));
        b.extend([b'[', b'i', 1, b'd']);
        b.extend((-2.5f32).to_be_bytes());
        b.extend([b'S', b'U', 1, b'x', b']']);
        b.extend(key("b"));
        b.extend([b'[', b'$', b'd', b'#', b'U', 2]);
        b.extend(1.0f32.to_be_bytes());
        b.extend(f32::NAN.to_be_bytes());
        b.extend(key("c"));
        b.extend([b'[', b'$', b'U', b'#', b'i', 3, 0, 1, 255]);
        b.extend(key("d"));
        b.extend([b'{', b'#', b'U', 1]);
        b.extend(key("e"));
        b.extend([b'T', b'N', b'}']);
        assert!(detect(&b));
        let v = decode(&b).unwrap();
        assert_eq!(v, json!({"a": [1, -2.5, "x"], "b": [1.0, null], "c": [0, 1, 255], "d": {"e": true}}));
        assert_eq!(decode(&[b'L', 0, 0, 0, 0, 0, 0, 0, 7]).unwrap(), json!(7));
        assert_eq!(decode(&[b'I', 0xff, 0xfe]).unwrap(), json!(-2));
    }

    #[test]
    fn hostile_input_is_an_error_naming_the_offset() {
        // A count far beyond the bytes left allocates nothing.
        let e = decode(&[b'[', b'$', b'd', b'#', b'L', 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
            .unwrap_err();
        assert!(e.contains("length 9223372036854775807 with 0 bytes left"), "{e}");
        let e = decode(&[b'[', b'#', b'i', 0xff]).unwrap_err();
        assert!(e.contains("length -1"), "{e}");
        let e = decode(&[b'[', b'$', b'Z', b'#', b'i', 100]).unwrap_err();
        assert!(e.contains("element type 'Z'"), "{e}");
        let deep = vec![b'['; 10_000];
        let e = decode(&deep).unwrap_err();
        assert!(e.contains("nested deeper than 64"), "{e}");
        let e = decode(&[b'S', b'U', 5, b'a']).unwrap_err();
        assert!(e.contains("length 5 with 1 bytes left"), "{e}");
        let e = decode(&[b'S', b'U', 1, 0xff]).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
        let e = decode(&[b'[', b'i', 1]).unwrap_err();
        assert!(e.contains("1 bytes wanted, 0 left"), "{e}");
        let e = decode(b"TT").unwrap_err();
        assert!(e.contains("1 bytes after the value"), "{e}");
        let e = decode(b"?").unwrap_err();
        assert!(e.contains("unknown type marker 0x3f"), "{e}");
        // Every prefix of a valid document is an error, never a panic.
        let mut b = vec![b'{'];
        b.extend(key("k"));
        b.extend([b'[', b'$', b'l', b'#', b'U', 2, 0, 0, 0, 1, 0, 0, 0, 2, b'}']);
        assert_eq!(decode(&b).unwrap(), json!({"k": [1, 2]}));
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "prefix {n}");
        }
    }
}
