use super::*;

/// A GGUF v3 file built by hand: metadata entries (key, type, encoded value) and tensors
/// (name, dims, type, offset), then `data` bytes of tensor data after alignment.
struct Builder {
    kvs: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    data: usize,
    alignment: u64,
}

fn s(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(x.as_bytes());
    v
}

impl Builder {
    fn new() -> Self {
        let kvs = vec![("general.architecture".into(), T_STRING, s("llama"))];
        let tensors = vec![("a".into(), vec![4, 2], 0, 0), ("b".into(), vec![8], 0, 32)];
        Builder { kvs, tensors, data: 64, alignment: 32 }
    }

    fn kv(mut self, key: &str, ty: u32, v: Vec<u8>) -> Self {
        self.kvs.push((key.into(), ty, v));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kvs {
            b.extend(s(k));
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(v);
        }
        for (name, dims, ty, off) in &self.tensors {
            b.extend(s(name));
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
        }
        let a = self.alignment.max(1) as usize;
        b.resize(b.len().div_ceil(a) * a + self.data, 0);
        b
    }
}

fn err(b: &Builder) -> String {
    prescan(&b.bytes()).expect_err("must be refused").to_string()
}

#[test]
fn a_good_header_passes_and_candle_agrees() {
    let b = Builder::new().kv("general.alignment", T_U32, 64u32.to_le_bytes().to_vec());
    let b = Builder { alignment: 64, tensors: vec![("a".into(), vec![4, 2], 0, 0)], ..b };
    let bytes = b.bytes();
    let h = prescan(&bytes).unwrap();
    assert_eq!((h.alignment, h.tensor_count), (64, 1));
    let c = candle_core::quantized::gguf_file::Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
    assert_eq!(c.tensor_data_offset, h.tensor_data_offset);
}

#[test]
fn alignment_must_be_a_nonzero_power_of_two_of_32_bits() {
    for (a, want) in [(0u32, "general.alignment = 0 must be a nonzero power of two"), (48, "= 48 must")] {
        let b = Builder::new().kv("general.alignment", T_U32, a.to_le_bytes().to_vec());
        assert!(err(&b).contains(want), "{}", err(&b));
    }
    let b = Builder::new().kv("general.alignment", T_I32, (-32i32).to_le_bytes().to_vec());
    assert!(err(&b).contains("general.alignment"), "{}", err(&b));
    let b = Builder::new().kv("general.alignment", T_U64, 32u64.to_le_bytes().to_vec());
    assert!(err(&b).contains("general.alignment must be a 32-bit integer"), "{}", err(&b));
}

#[test]
fn lengths_and_counts_are_bounded_by_the_file() {
    // A string length far past the end.
    let mut v = u64::MAX.to_le_bytes().to_vec();
    v.extend_from_slice(b"x");
    let e = err(&Builder::new().kv("general.name", T_STRING, v));
    assert!(e.contains("general.name") && e.contains("length 18446744073709551615"), "{e}");
    // An array of 2^40 u32s.
    let mut v = T_U32.to_le_bytes().to_vec();
    v.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let e = err(&Builder::new().kv("tokenizer.ggml.token_type", T_ARRAY, v));
    assert!(e.contains("tokenizer.ggml.token_type (array of 1099511627776)"), "{e}");
    // Counts that cannot fit.
    let mut bytes = Builder::new().bytes();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = prescan(&bytes).unwrap_err().to_string();
    assert!(e.starts_with("tensor_count = 18446744073709551615 cannot fit"), "{e}");
    let mut bytes = Builder::new().bytes();
    bytes[16..24].copy_from_slice(&(1u64 << 33).to_le_bytes());
    assert!(prescan(&bytes).unwrap_err().to_string().starts_with("metadata_kv_count = 8589934592"));
}

#[test]
fn metadata_values_are_bounded_in_total_and_in_depth() {
    // MAX_METADATA_VALUES + 1 one-byte values: the file is big enough, the count is not accepted.
    let n = MAX_METADATA_VALUES + 1;
    let mut v = T_U8.to_le_bytes().to_vec();
    v.extend_from_slice(&n.to_le_bytes());
    v.resize(v.len() + n as usize, 0);
    let e = err(&Builder::new().kv("big", T_ARRAY, v));
    assert!(e.contains("big: the metadata holds more than"), "{e}");
    // Arrays of arrays of arrays ...
    let mut v = Vec::new();
    for _ in 0..6 {
        v.extend_from_slice(&T_ARRAY.to_le_bytes());
        v.extend_from_slice(&1u64.to_le_bytes());
    }
    v.extend_from_slice(&T_U8.to_le_bytes());
    v.extend_from_slice(&1u64.to_le_bytes());
    v.push(0);
    let e = err(&Builder::new().kv("deep", T_ARRAY, v));
    assert!(e.contains("deep: arrays nested more than"), "{e}");
}

#[test]
fn tensors_are_checked() {
    let mut b = Builder::new();
    b.tensors[1].3 = 7;
    assert!(err(&b).contains("tensor b: offset 7 is not a multiple of general.alignment 32"));
    b.tensors[1].3 = 1 << 20;
    assert!(err(&b).contains("tensor b: offset 1048576 lies past the end of the file"));
    b.tensors[1].3 = 32;
    b.tensors[1].2 = 99;
    assert!(err(&b).contains("tensor b: unknown ggml type 99"));
    b.tensors[1].2 = 0;
    b.tensors[1].1 = vec![1 << 32, 1 << 32];
    assert!(err(&b).contains("tensor b: shape [4294967296, 4294967296] has too many elements"));
    b.tensors[1].1 = vec![1; 5];
    assert!(err(&b).contains("tensor b: 5 dimensions"));
    b.tensors[1].1 = vec![8];
    b.tensors[1].0 = "a".into();
    assert!(err(&b).contains("tensor a: duplicate tensor name"));
    let b = Builder::new().kv("general.architecture", T_STRING, s("qwen2"));
    assert!(err(&b).contains("general.architecture: duplicate metadata key"));
}

#[test]
fn truncated_and_foreign_files_are_refused() {
    let bytes = Builder::new().bytes();
    for cut in [0, 3, 7, 15, 23, 40, 80] {
        let e = prescan(&bytes[..cut]).unwrap_err();
        assert!(matches!(e, HeaderError::Truncated { .. } | HeaderError::Count { .. }), "{cut}: {e}");
    }
    assert!(matches!(prescan(b"definitely not gguf"), Err(HeaderError::Magic(_))));
    let mut v4 = bytes.clone();
    v4[4..8].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(prescan(&v4), Err(HeaderError::Version(4)));
}
