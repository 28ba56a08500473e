//! The round-trip property the fuzz targets assert for every parser that has an encoder.

use std::fmt::Debug;

/// Whether the format keeps every input byte: `Bytes` when the encoder must reproduce the
/// parsed bytes exactly, `Value` when the format has bytes a parser ignores (reserved fields,
/// padding) that the encoder writes as zeros; the comment at each call names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exact {
    Bytes,
    Value,
}

/// If `input` parses: its encoding parses to the same value, encoding that again gives the
/// same bytes (a fixed point), and with [`Exact::Bytes`] the encoding equals the bytes it came
/// from (`encode(parse(x)) == x` over the structure's length).
pub fn round_trip<T, E>(
    input: &[u8],
    exact: Exact,
    parse: impl Fn(&[u8]) -> Result<T, E>,
    encode: impl Fn(&T) -> Vec<u8>,
) where
    T: PartialEq + Debug,
{
    let Ok(value) = parse(input) else { return };
    let bytes = encode(&value);
    if exact == Exact::Bytes {
        assert_eq!(
            input.get(..bytes.len()),
            Some(&bytes[..]),
            "encode(parse(x)) != x for {value:?}"
        );
    }
    let again = parse(&bytes).unwrap_or_else(|_| panic!("the encoding of {value:?} does not parse"));
    assert_eq!(again, value, "parse(encode(v)) != v");
    assert_eq!(encode(&again), bytes, "encoding is not a fixed point");
}
