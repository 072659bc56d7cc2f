//! `grpc.health.v1` messages on the wire: tonic-health's prost types in gRPC's
//! length-prefixed framing (a flag byte, a 4-byte big-endian length, the message).
//! Whatever a backend sends is read within a cap: a health response is a few bytes,
//! so a bigger one is an error, not a buffer to grow.

use bytes::{Buf as _, Bytes, BytesMut};
use prost::Message as _;
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
};

/// The largest health response message accepted.
pub const MAX_MESSAGE: usize = 1024;
/// The largest Check response body read (a few messages' worth).
pub const MAX_BODY: usize = 4 * (HEADER + MAX_MESSAGE);
const HEADER: usize = 5;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("a {0}-byte health message, over the {MAX_MESSAGE}-byte cap")]
    TooLarge(usize),
    #[error("a compressed health message, though none was asked for")]
    Compressed,
    #[error("not a HealthCheckResponse")]
    Malformed,
}

/// A framed `HealthCheckRequest` for `service` ("" asks about the whole server).
pub fn request(service: &str) -> Bytes {
    let message = HealthCheckRequest { service: service.to_string() }.encode_to_vec();
    let mut frame = Vec::with_capacity(HEADER + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame.into()
}

/// Takes one whole response off the front of `buffer`: whether it says SERVING, or
/// `None` until the buffer holds a whole message. A message over the cap is refused as
/// soon as its header says so.
pub fn next_status(buffer: &mut BytesMut) -> Result<Option<bool>, MessageError> {
    let Some(header) = buffer.get(..HEADER) else { return Ok(None) };
    if header[0] != 0 {
        return Err(MessageError::Compressed);
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(MessageError::TooLarge(len));
    }
    if buffer.len() < HEADER + len {
        return Ok(None);
    }
    buffer.advance(HEADER);
    let message = buffer.split_to(len);
    let response = HealthCheckResponse::decode(message).map_err(|_| MessageError::Malformed)?;
    Ok(Some(response.status == ServingStatus::Serving as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(response: HealthCheckResponse) -> Vec<u8> {
        let message = response.encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        frame
    }

    #[test]
    fn responses_decode_whole_and_split_anywhere() {
        let serving = framed(HealthCheckResponse { status: ServingStatus::Serving as i32 });
        let not = framed(HealthCheckResponse { status: ServingStatus::NotServing as i32 });
        let both = [serving.clone(), not].concat();
        for cut in 0..=both.len() {
            let mut buffer = BytesMut::from(&both[..cut]);
            let mut seen = Vec::new();
            buffer.extend_from_slice(&both[cut..]);
            while let Some(status) = next_status(&mut buffer).unwrap() {
                seen.push(status);
            }
            assert_eq!(seen, [true, false], "split at {cut}");
        }
        let mut partial = BytesMut::from(&serving[..serving.len() - 1]);
        assert_eq!(next_status(&mut partial), Ok(None), "waits for the rest");
    }

    #[test]
    fn a_message_over_the_cap_is_refused_from_its_header_alone() {
        let mut huge = BytesMut::from(&[0u8, 0x7f, 0xff, 0xff, 0xff][..]);
        assert_eq!(next_status(&mut huge), Err(MessageError::TooLarge(0x7fff_ffff)));
        let mut compressed = BytesMut::from(&[1u8, 0, 0, 0, 0][..]);
        assert_eq!(next_status(&mut compressed), Err(MessageError::Compressed));
        let mut garbage = BytesMut::from(&[0u8, 0, 0, 0, 2, 0xff, 0xff][..]);
        assert_eq!(next_status(&mut garbage), Err(MessageError::Malformed));
    }

    #[test]
    fn requests_name_the_service() {
        let frame = request("greeter");
        let message = HealthCheckRequest::decode(&frame[HEADER..]).unwrap();
        assert_eq!(message.service, "greeter");
        assert_eq!(u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize, frame.len() - 5);
    }
}
