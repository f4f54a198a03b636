//! A record's Avro body walked once, before apache-avro decodes it, so that hostile bytes
//! cannot make the decoder reserve memory the record does not hold.
//!
//! apache-avro takes a string's or bytes' length, and an array's or map's block count, as
//! it finds them, and reserves for them before reading (a count only checked against its
//! 512 MiB default: an array block claiming 500 million items reserves that many values,
//! some 28 GB, from a record of ten bytes; the allocation fails and the process aborts).
//! Here every length must fit in the bytes left, every block count too (an item takes at
//! least a byte, save in schemas nobody writes), and nesting stops at [`MAX_DEPTH`]. What
//! passes reserves at most a small multiple of the record's own size.

use std::collections::HashMap;

use apache_avro::Schema;

/// Named types by full name, as [`super::Names`].
type Names = HashMap<String, Schema>;

/// Deeper nesting than any contract walcast publishes (a recursive record may nest by
/// data): refused rather than recursed into.
const MAX_DEPTH: usize = 64;

/// Checks that `body`, read by `schema`, claims no more than it holds. The error says
/// what claimed too much, where in the body.
pub(super) fn check(schema: &Schema, names: &Names, body: &[u8]) -> Result<(), String> {
    let mut walk = Walk { body, at: 0, names };
    walk.value(schema, 0)
}

struct Walk<'a> {
    body: &'a [u8],
    at: usize,
    names: &'a Names,
}

impl Walk<'_> {
    fn left(&self) -> usize {
        self.body.len() - self.at
    }

    fn skip(&mut self, n: usize, what: &str) -> Result<(), String> {
        if n > self.left() {
            return Err(format!(
                "{what} of {n} bytes at byte {} runs past the record's end ({} bytes left)",
                self.at,
                self.left()
            ));
        }
        self.at += n;
        Ok(())
    }

    /// A zigzag varint `long`.
    fn long(&mut self) -> Result<i64, String> {
        let mut n: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.body.get(self.at) else {
                return Err(format!("a number at byte {} is cut off", self.at));
            };
            self.at += 1;
            n |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((n >> 1) as i64) ^ -((n & 1) as i64));
            }
        }
        Err(format!(
            "a number at byte {} is longer than 10 bytes",
            self.at
        ))
    }

    /// A length (string, bytes) that must fit in what is left.
    fn length(&mut self, what: &str) -> Result<(), String> {
        let at = self.at;
        let n = self.long()?;
        let n = usize::try_from(n)
            .map_err(|_| format!("{what} at byte {at} has a negative length ({n})"))?;
        self.skip(n, what)
    }

    fn value(&mut self, schema: &Schema, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "values nest deeper than {MAX_DEPTH} levels at byte {}",
                self.at
            ));
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => self.skip(1, "a boolean"),
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos
            | Schema::Enum(_) => self.long().map(drop),
            Schema::Float => self.skip(4, "a float"),
            Schema::Double => self.skip(8, "a double"),
            Schema::Duration => self.skip(12, "a duration"),
            Schema::Bytes | Schema::BigDecimal | Schema::Uuid => self.length("bytes"),
            Schema::String => self.length("a string"),
            Schema::Fixed(f) => self.skip(f.size, "a fixed"),
            Schema::Decimal(d) => self.value(&d.inner, depth + 1),
            Schema::Union(u) => {
                // apache-avro reads a union at the record's very end as null.
                if self.left() == 0 {
                    return Ok(());
                }
                let at = self.at;
                let i = self.long()?;
                let variant = usize::try_from(i)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| format!("a union at byte {at} has no branch {i}"))?;
                self.value(variant, depth + 1)
            }
            Schema::Record(r) => r
                .fields
                .iter()
                .try_for_each(|f| self.value(&f.schema, depth + 1)),
            Schema::Array(a) => self.blocks(|w| w.value(&a.items, depth + 1)),
            Schema::Map(m) => self.blocks(|w| {
                w.length("a map key")?;
                w.value(&m.types, depth + 1)
            }),
            Schema::Ref { name } => match self.names.get(&name.fullname(None)) {
                Some(named) => self.value(named, depth + 1),
                None => Err(format!("type {} is not defined", name.fullname(None))),
            },
        }
    }

    /// An array's or map's blocks: each a count (negative: followed by its size in bytes),
    /// then that many items; a count of 0 ends them.
    fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let at = self.at;
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.long()?;
            }
            let count = count.unsigned_abs();
            if count > self.left() as u64 {
                return Err(format!(
                    "a block at byte {at} claims {count} items, more than the {} bytes left",
                    self.left()
                ));
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> (Schema, Names) {
        let schema = Schema::parse_str(text).unwrap();
        let mut names = Names::new();
        super::super::named_types(&schema, &mut names);
        (schema, names)
    }

    #[test]
    fn a_block_claiming_more_items_than_bytes_is_refused_before_decoding() {
        let (s, names) = schema(r#"{"type": "array", "items": "long"}"#);
        // 500,000,000 items (zigzag varint), then nothing.
        let mut body = Vec::new();
        let mut n: u64 = 1_000_000_000;
        while n >= 0x80 {
            body.push((n as u8) | 0x80);
            n >>= 7;
        }
        body.push(n as u8);
        assert_eq!(
            check(&s, &names, &body).unwrap_err(),
            "a block at byte 0 claims 500000000 items, more than the 0 bytes left"
        );
        // What is there passes: two items, then the end.
        assert_eq!(check(&s, &names, &[4, 2, 4, 0]), Ok(()));
    }

    /// Property: hostile record bodies (random, or a valid one mutated) never panic the
    /// sink's decoder; whatever passes the bounds, apache-avro decodes without reserving
    /// more than the body holds.
    #[test]
    fn hostile_bodies_never_panic_the_sink_decoder() {
        use crate::source::hostile::{cases, seed, Rng};
        use apache_avro::types::Value as Avro;
        let text = r#"{"type": "record", "name": "E", "namespace": "shop", "fields": [
            {"name": "id", "type": "long"},
            {"name": "tags", "type": ["null", {"type": "array", "items": "string"}]},
            {"name": "prices", "type": {"type": "array", "items": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}]}},
            {"name": "attrs", "type": {"type": "map", "values": "long"}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["ON", "OFF"]}},
            {"name": "next", "type": ["null", "E"]}
        ]}"#;
        let schema = Schema::parse_str(text).unwrap();
        let valid = apache_avro::to_avro_datum(
            &schema,
            Avro::Record(vec![
                ("id".into(), Avro::Long(7)),
                (
                    "tags".into(),
                    Avro::Union(1, Box::new(Avro::Array(vec![Avro::String("a".into())]))),
                ),
                (
                    "prices".into(),
                    Avro::Array(vec![Avro::Union(0, Box::new(Avro::Null))]),
                ),
                (
                    "attrs".into(),
                    Avro::Map([("k".to_string(), Avro::Long(1))].into()),
                ),
                ("at".into(), Avro::TimestampMillis(1)),
                ("state".into(), Avro::Enum(1, "OFF".into())),
                ("next".into(), Avro::Union(0, Box::new(Avro::Null))),
            ]),
        )
        .unwrap();
        let resolution = super::super::Resolution::new(schema, text, None).unwrap();
        assert!(resolution.read(1, &valid).is_ok());
        let seed = seed("WALCAST_HOSTILE_SEED");
        let mut rng = Rng::new(seed);
        for _ in 0..cases("WALCAST_HOSTILE_CASES") {
            let body = if rng.below(2) == 0 {
                rng.bytes(48)
            } else {
                rng.mutated(&valid)
            };
            // Ok or a poison reason: never a panic, an abort or a huge reservation.
            let _ = resolution.read(1, &body);
        }
    }

    #[test]
    fn lengths_past_the_end_and_deep_nesting_are_refused() {
        let (s, names) = schema(
            r#"{"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]}"#,
        );
        assert_eq!(
            check(&s, &names, &[200, 1, b'a']).unwrap_err(),
            "a string of 100 bytes at byte 2 runs past the record's end (1 bytes left)"
        );
        let (list, names) = schema(
            r#"{"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}"#,
        );
        let deep = vec![2u8; 1000];
        assert!(check(&list, &names, &deep)
            .unwrap_err()
            .starts_with("values nest deeper than 64 levels"));
    }
}
