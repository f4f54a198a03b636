use super::*;

fn bytes(slot: &Slot, v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode(slot, v, &mut out).unwrap();
    out
}
fn plain(enc: Enc) -> Slot {
    Slot {
        enc,
        nullable: None,
    }
}

#[test]
fn avro_binary_matches_apache_avro() {
    use apache_avro::{to_avro_datum, types::Value as A, Schema};
    let long = Schema::parse_str(r#""long""#).unwrap();
    for n in [0i64, -1, 1, 63, -64, 64, i64::MAX, i64::MIN] {
        assert_eq!(
            bytes(&plain(Enc::Long), &Value::Int8(n)),
            to_avro_datum(&long, A::Long(n)).unwrap()
        );
    }
    let nullable = Slot {
        enc: Enc::String,
        nullable: Some((0, 1)),
    };
    let schema = Schema::parse_str(r#"["null","string"]"#).unwrap();
    assert_eq!(
        bytes(&nullable, &Value::Text("hé".into())),
        to_avro_datum(&schema, A::Union(1, Box::new(A::String("hé".into())))).unwrap()
    );
    assert_eq!(bytes(&nullable, &Value::Null), [0]);
}

#[test]
fn decimals_are_rescaled_never_truncated() {
    let numeric = |digits: &str, scale: u16, negative: bool| {
        Value::Numeric(Numeric::Finite {
            negative,
            digits: digits.into(),
            scale,
        })
    };
    let dec = plain(Enc::Decimal {
        scale: 2,
        fixed: None,
    });
    // 12.5 at scale 2 = 1250 = 0x04E2
    assert_eq!(bytes(&dec, &numeric("125", 1, false)), [4, 0x04, 0xE2]);
    assert_eq!(bytes(&dec, &numeric("125", 1, true)), [4, 0xFB, 0x1E]);
    assert_eq!(
        bytes(&dec, &numeric("12500", 3, false)),
        [4, 0x04, 0xE2],
        "trailing zeros drop"
    );
    let err = encode(&dec, &numeric("12345", 3, false), &mut vec![]).unwrap_err();
    assert!(err.0.contains("more than 2 decimal places"), "{err}");
    assert!(encode(&dec, &Value::Numeric(Numeric::NaN), &mut vec![]).is_err());
}

#[test]
fn times_move_to_the_unix_epoch() {
    assert_eq!(
        bytes(&plain(Enc::Date), &Value::Date(Infinite::Finite(0))),
        {
            let mut v = vec![];
            write_long(&mut v, 10_957);
            v
        }
    );
    let ts = Value::TimestampTz(Infinite::Finite(1));
    let mut want = vec![];
    write_long(&mut want, PG_EPOCH_MICROS + 1);
    assert_eq!(bytes(&plain(Enc::TimestampMicros), &ts), want);
    assert!(encode(
        &plain(Enc::TimestampMicros),
        &Value::TimestampTz(Infinite::Infinity),
        &mut vec![]
    )
    .is_err());
}

#[test]
fn timestamps_past_the_last_unix_epoch_long_are_refused_naming_the_value() {
    // PostgreSQL's last timestamp, 294276-12-31 23:59:59.999999, in microseconds since
    // 2000-01-01; a Unix-epoch long ends in 294247.
    let last = 9_223_371_331_200_000_000 - 1;
    let first_beyond = i64::MAX - PG_EPOCH_MICROS + 1;
    for (enc, value) in [
        (
            Enc::TimestampMicros,
            Value::TimestampTz(Infinite::Finite(last)),
        ),
        (
            Enc::TimestampMillis,
            Value::TimestampTz(Infinite::Finite(first_beyond)),
        ),
        (
            Enc::LocalTimestampMicros,
            Value::Timestamp(Infinite::Finite(last)),
        ),
        (
            Enc::LocalTimestampMillis,
            Value::Timestamp(Infinite::Finite(last)),
        ),
    ] {
        let e = encode(&plain(enc.clone()), &value, &mut vec![]).unwrap_err();
        assert!(
            e.0.contains(&format!(" is beyond the range of {}", enc_name(&enc))),
            "{e}"
        );
        assert!(e.0.starts_with(&render(&value)), "{e}");
    }
    assert!(encode(
        &plain(Enc::TimestampMicros),
        &Value::TimestampTz(Infinite::Finite(first_beyond - 1)),
        &mut vec![]
    )
    .is_ok());
    assert_eq!(
        render(&Value::TimestampTz(Infinite::Finite(last))),
        "294276-12-31T23:59:59.999999Z"
    );
}

#[test]
fn text_forms_follow_postgresql() {
    assert_eq!(render(&Value::Date(Infinite::Finite(0))), "2000-01-01");
    assert_eq!(
        render(&Value::Date(Infinite::Finite(-10_957))),
        "1970-01-01"
    );
    assert_eq!(
        render(&Value::TimestampTz(Infinite::Finite(90_061_000_001))),
        "2000-01-02T01:01:01.000001Z"
    );
    assert_eq!(
        render(&Value::Uuid([0xab; 16])),
        "abababab-abab-abab-abab-abababababab"
    );
    let money = |units, digits| Value::Money { units, digits };
    assert_eq!(render(&money(-1234, 2)), "-12.34");
    // A currency without minor units (yen) is not read 100 times too small.
    assert_eq!(render(&money(1234, 0)), "1234");
    assert_eq!(render(&money(-5, 3)), "-0.005");
    assert_eq!(render(&money(i64::MIN, 2)), "-92233720368547758.08");
    assert_eq!(
        render(&Value::Interval {
            months: 14,
            days: 3,
            micros: 3_723_000_000
        }),
        "P1Y2M3DT1H2M3S"
    );
    assert_eq!(render(&Value::Float8(f64::NEG_INFINITY)), "-Infinity");
}

#[test]
fn text_forms_postgresql_reads_back_keep_signs_and_eras() {
    // -00:00:00.5 has no whole second to carry its sign.
    assert_eq!(
        render(&Value::Interval {
            months: -14,
            days: 3,
            micros: -500_000
        }),
        "P-1Y-2M3DT0H0M-0.500000S"
    );
    // 4713-01-01 BC, PostgreSQL's first day: the era follows the zone.
    let first = -2_451_507 * 86_400_000_000;
    assert_eq!(
        render(&Value::TimestampTz(Infinite::Finite(first))),
        "4713-01-01T00:00:00Z BC"
    );
    assert_eq!(
        render(&Value::Timestamp(Infinite::Finite(first + 1))),
        "4713-01-01T00:00:00.000001 BC"
    );
}

#[test]
fn conversions_are_decided_by_type() {
    let pg = |s| PgType::Scalar(s);
    assert!(convertible(&pg(ScalarType::Int4), &Enc::Long).is_ok());
    assert!(convertible(&pg(ScalarType::Int8), &Enc::Int)
        .unwrap_err()
        .contains("bigint needs long"));
    assert!(
        convertible(&pg(ScalarType::Timestamp), &Enc::TimestampMicros)
            .unwrap_err()
            .contains("local-timestamp-micros")
    );
    assert!(convertible(&pg(ScalarType::Uuid), &Enc::String).is_ok());
    assert!(convertible(
        &PgType::Array(ScalarType::Int4),
        &Enc::Array(Box::new(plain(Enc::Long)))
    )
    .is_ok());
}

#[test]
fn an_array_as_a_string_is_written_as_postgresql_writes_it() {
    let text = |t: &str| Value::Text(t.into());
    let items = vec![
        text("a,b"),
        text("c"),
        Value::Null,
        text("NULL"),
        text("null"),
        text(""),
        text("two words"),
        text(r#"q"uote\slash"#),
        text("{brace}"),
        text("\x0Bvtab"),
    ];
    assert_eq!(
        render(&Value::Array(items)),
        "{\"a,b\",c,NULL,\"NULL\",\"null\",\"\",\"two words\",\"q\\\"uote\\\\slash\",\"{brace}\",\"\x0Bvtab\"}"
    );
    assert_eq!(
        render(&Value::Array(vec![Value::Bytea(
            bytes::Bytes::from_static(&[1, 2])
        )])),
        r#"{"\\x0102"}"#
    );
    assert_eq!(render(&Value::Array(vec![])), "{}");
}

#[test]
fn a_time_zone_offset_keeps_its_seconds() {
    let at = |offset_secs| Value::TimeTz {
        micros: 12 * 3_600_000_000,
        offset_secs,
    };
    assert_eq!(render(&at(19_815)), "12:00:00+05:30:15");
    assert_eq!(render(&at(19_800)), "12:00:00+05:30");
    assert_eq!(render(&at(-3_600)), "12:00:00-01:00");
}

#[test]
fn a_char_byte_beyond_ascii_is_written_in_octal_as_postgresql_does() {
    assert_eq!(render(&Value::Char(b'a')), "a");
    assert_eq!(render(&Value::Char(0xc3)), r"\303");
}
