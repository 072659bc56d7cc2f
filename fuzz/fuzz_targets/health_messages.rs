//! grpc.health.v1 responses from a backend, as arbitrary bytes arriving in two pieces:
//! decoding never panics, never holds more than one capped message, and says the same
//! whichever way the bytes were split.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sockeye::health::messages::{MAX_MESSAGE, next_status};

/// Every status decoded from `pieces` fed in order, and how the stream ended.
fn decode(pieces: &[&[u8]]) -> (Vec<bool>, bool) {
    let mut buffer = BytesMut::new();
    let mut statuses = Vec::new();
    for piece in pieces {
        buffer.extend_from_slice(piece);
        loop {
            match next_status(&mut buffer) {
                Ok(Some(status)) => statuses.push(status),
                Ok(None) => break,
                Err(_) => return (statuses, false),
            }
        }
        assert!(buffer.len() <= 5 + MAX_MESSAGE + piece.len(), "held {} bytes", buffer.len());
    }
    (statuses, true)
}

fuzz_target!(|input: (&[u8], u16)| {
    let (bytes, cut) = input;
    let cut = usize::from(cut).min(bytes.len());
    assert_eq!(decode(&[bytes]), decode(&[&bytes[..cut], &bytes[cut..]]));
});
