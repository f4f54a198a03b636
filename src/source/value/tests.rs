use super::*;

fn numeric_bytes(ndigits: u16, weight: i16, sign: u16, dscale: u16, groups: &[u16]) -> Bytes {
    let mut v = Vec::new();
    for x in [ndigits, weight as u16, sign, dscale] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    for g in groups {
        v.extend_from_slice(&g.to_be_bytes());
    }
    Bytes::from(v)
}

#[test]
fn numeric_binary_form_becomes_exact_decimal_text() {
    // 12345.678 = groups [1, 2345, 6780], weight 1, dscale 3
    let n = numeric(numeric_bytes(3, 1, 0, 3, &[1, 2345, 6780])).unwrap();
    assert_eq!(n.to_string(), "12345.678");
    // -0.0042 = groups [42], weight -1, dscale 4
    let n = numeric(numeric_bytes(1, -1, 0x4000, 4, &[42])).unwrap();
    assert_eq!(n.to_string(), "-0.0042");
    // 1e8 = groups [1], weight 2, dscale 0
    assert_eq!(
        numeric(numeric_bytes(1, 2, 0, 0, &[1]))
            .unwrap()
            .to_string(),
        "100000000"
    );
    assert_eq!(
        numeric(numeric_bytes(0, 0, 0, 2, &[])).unwrap().to_string(),
        "0.00"
    );
    assert_eq!(
        numeric(numeric_bytes(0, 0, 0xC000, 0, &[])).unwrap(),
        Numeric::NaN
    );
    assert_eq!(
        numeric(numeric_bytes(0, 0, 0xF000, 0, &[])).unwrap(),
        Numeric::NegInfinity
    );
}

#[test]
fn bit_strings_print_their_bits() {
    let v = decode_scalar(
        ScalarType::VarBit,
        Bytes::from_static(&[0, 0, 0, 5, 0b1011_0000]),
    )
    .unwrap();
    let Value::VarBit(bits) = v else { panic!() };
    assert_eq!(bits.to_string(), "10110");
}

#[test]
fn multi_dimensional_arrays_are_refused() {
    let mut raw = Vec::new();
    for x in [2i32, 0, 23, 1, 1, 1, 1] {
        raw.extend_from_slice(&x.to_be_bytes());
    }
    assert_eq!(
        decode_array(ScalarType::Int4, Bytes::from(raw)),
        Err(ValueError::MultiDimensional { dims: 2 })
    );
}
