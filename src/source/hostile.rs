//! Property: hostile bytes from the server (or whatever answers on its port) never panic
//! the frame parser or the pgoutput decoder, and never make them reserve memory the bytes
//! do not hold. Random and mutated input from a seeded xorshift generator; a failure
//! prints the seed (`WALCAST_HOSTILE_SEED` replays it, `WALCAST_HOSTILE_CASES` runs more).

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{parse_copy_data, split_frame, stream_frame, Split};
use super::pgoutput::Decoder;

/// xorshift64*: small, fast, and good enough to pick test bytes.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Up to `max` random bytes, often fewer.
    pub(crate) fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max as u64 + 1) as usize;
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `valid` with a few bytes changed, cut short, or grown.
    pub(crate) fn mutated(&mut self, valid: &[u8]) -> Vec<u8> {
        let mut out = valid.to_vec();
        for _ in 0..=self.below(4) {
            match self.below(4) {
                0 if !out.is_empty() => {
                    let at = self.below(out.len() as u64) as usize;
                    out[at] = self.next() as u8;
                }
                1 if !out.is_empty() => {
                    let at = self.below(out.len() as u64) as usize;
                    out.truncate(at);
                }
                2 if !out.is_empty() => {
                    // A length or count field set to its largest values.
                    let at = self.below(out.len() as u64) as usize;
                    out[at] = 0xff;
                }
                _ => out.extend(self.bytes(8)),
            }
        }
        out
    }
}

pub(crate) fn seed(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

pub(crate) fn cases(var: &str) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// Valid pgoutput messages to mutate: begin, relation, insert, update, delete, commit,
/// stream start.
fn pgoutput_samples() -> Vec<Vec<u8>> {
    let mut relation = vec![b'R'];
    relation.put_u32(16_384);
    relation.extend_from_slice(b"public\0users\0");
    relation.push(b'd');
    relation.put_u16(2);
    relation.push(1);
    relation.extend_from_slice(b"id\0");
    relation.put_u32(20);
    relation.put_i32(-1);
    relation.push(0);
    relation.extend_from_slice(b"name\0");
    relation.put_u32(25);
    relation.put_i32(-1);
    let tuple = |out: &mut Vec<u8>| {
        out.put_u16(2);
        out.push(b't');
        out.put_u32(1);
        out.push(b'7');
        out.push(b'n');
    };
    let mut insert = vec![b'I'];
    insert.put_u32(16_384);
    insert.push(b'N');
    tuple(&mut insert);
    let mut update = vec![b'U'];
    update.put_u32(16_384);
    update.push(b'K');
    tuple(&mut update);
    update.push(b'N');
    tuple(&mut update);
    let mut delete = vec![b'D'];
    delete.put_u32(16_384);
    delete.push(b'K');
    tuple(&mut delete);
    let mut begin = vec![b'B'];
    begin.put_u64(0x16_B3_74_D8);
    begin.put_i64(1);
    begin.put_u32(770);
    let mut commit = vec![b'C', 0];
    commit.put_u64(0x16_B3_74_D8);
    commit.put_u64(0x16_B3_75_00);
    commit.put_i64(1);
    let mut stream_start = vec![b'S'];
    stream_start.put_u32(770);
    stream_start.push(1);
    let mut truncate = vec![b'T'];
    truncate.put_u32(1);
    truncate.push(0);
    truncate.put_u32(16_384);
    vec![
        begin,
        relation,
        insert,
        update,
        delete,
        truncate,
        commit,
        stream_start,
    ]
}

#[test]
fn hostile_bytes_never_panic_the_frame_parser_and_never_reserve_past_a_frame_limit() {
    let seed = seed("WALCAST_HOSTILE_SEED");
    let mut rng = Rng::new(seed);
    let mut frame = BytesMut::new();
    frame.put_u8(b'd');
    frame.put_u32(4 + 25);
    frame.put_u8(b'w');
    frame.put_slice(&[0; 24]);
    let samples = [
        frame.to_vec(),
        vec![b'k', 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 1],
    ];
    for _ in 0..cases("WALCAST_HOSTILE_CASES") {
        let input = match rng.below(3) {
            0 => rng.bytes(64),
            1 => rng.mutated(&samples[0]),
            _ => {
                let mut b = vec![*[b'd', b'W', b'E', b'N', b'Z', b'c', b'C']
                    .get(rng.below(7) as usize)
                    .unwrap()];
                b.extend(rng.bytes(32));
                b
            }
        };
        let mut read = BytesMut::from(&input[..]);
        // Frame after frame, as the stream reads them, until one is cut off or refused.
        for _ in 0..input.len() + 1 {
            match split_frame(&mut read) {
                Ok(Split::Frame(f)) => {
                    let _ = stream_frame(f);
                }
                Ok(Split::Incomplete { frame_len }) => {
                    assert!(
                        frame_len.is_none_or(|n| n <= (1 << 30) + 1),
                        "seed {seed}: waits for a frame of {frame_len:?} bytes from {input:?}"
                    );
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = parse_copy_data(Bytes::from(rng.mutated(&samples[1])));
        let _ = parse_copy_data(Bytes::from(input));
    }
}

#[test]
fn hostile_bytes_never_panic_the_pgoutput_decoder() {
    let seed = seed("WALCAST_HOSTILE_SEED");
    let mut rng = Rng::new(seed);
    let samples = pgoutput_samples();
    let mut decoder = Decoder::new();
    for sample in &samples {
        decoder
            .decode(Bytes::from(sample.clone()))
            .unwrap_or_else(|e| panic!("a valid sample does not decode: {e}: {sample:?}"));
    }
    for _ in 0..cases("WALCAST_HOSTILE_CASES") {
        let input = match rng.below(3) {
            0 => rng.bytes(64),
            _ => {
                let sample = &samples[rng.below(samples.len() as u64) as usize];
                rng.mutated(sample)
            }
        };
        // One decoder for the whole run: its stream state is hostile too.
        let _ = decoder.streamed_xid(&input);
        let _ = decoder.decode(Bytes::from(input));
    }
}

#[test]
fn hostile_bytes_never_panic_the_value_decoder() {
    use super::value::{decode_binary, decode_text, PgType};
    let seed = seed("WALCAST_HOSTILE_SEED");
    let mut rng = Rng::new(seed);
    let types: Vec<PgType> = (0..4_000).filter_map(PgType::builtin).collect();
    assert!(types.len() > 40, "{} builtin types", types.len());
    // An int4 array header of one dimension, to mutate into hostile dimensions and counts.
    let mut array = Vec::new();
    array.put_i32(1);
    array.put_i32(0);
    array.put_u32(23);
    array.put_i32(2);
    array.put_i32(1);
    for n in [7i32, 8] {
        array.put_i32(4);
        array.put_i32(n);
    }
    for _ in 0..cases("WALCAST_HOSTILE_CASES") {
        let ty = &types[rng.below(types.len() as u64) as usize];
        let raw = Bytes::from(match rng.below(3) {
            0 => rng.bytes(40),
            1 => rng.mutated(&array),
            _ => rng.mutated(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
        });
        let _ = decode_binary(ty, &raw);
        let _ = decode_text(ty, &raw);
    }
}
