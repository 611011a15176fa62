//! Reading the consistent-hash key of a call from its encoded request.
//!
//! A method's policy may name a top-level field of its request message as
//! its hash key. The channel keeps each unary request's encoded bytes (to
//! send them again on a retry), so it reads the field straight from the
//! protobuf wire format: no decoding of the message, no generated code per
//! message type.

use crate::descriptor::HashKeyKind;

/// The bytes the key is hashed from: the value of field `number` in the
/// gRPC-framed message `frame`, or `None` if it is absent (the proto3
/// default), the frame is compressed, or the bytes are malformed. For a
/// string this is its UTF-8 bytes, so `HashKey::new(id)` in code and a
/// `hash_key` on the same field route alike.
pub(crate) fn key_bytes(frame: &[u8], number: u32, kind: HashKeyKind) -> Option<Vec<u8>> {
    // The gRPC frame: a compressed flag, a 4-byte big-endian length, the message.
    let (&compressed, rest) = frame.split_first()?;
    if compressed != 0 || rest.len() < 4 {
        return None;
    }
    let (len, message) = rest.split_at(4);
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    let mut message = message.get(..len)?;
    let mut found = None;
    while !message.is_empty() {
        let tag = varint(&mut message)?;
        let (field, wire) = (tag >> 3, tag & 7);
        let value = match wire {
            0 => varint(&mut message)?.to_le_bytes().to_vec(),
            1 => take(&mut message, 8)?.to_vec(),
            2 => {
                let len = usize::try_from(varint(&mut message)?).ok()?;
                take(&mut message, len)?.to_vec()
            }
            5 => take(&mut message, 4)?.to_vec(),
            _ => return None,
        };
        // The last occurrence wins, as when decoding.
        if field == u64::from(number) && wire == u64::from(kind.wire_type()) {
            found = Some(value);
        }
    }
    found
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Some(head)
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Sample {
        #[prost(string, tag = "1")]
        order_id: String,
        #[prost(int64, tag = "2")]
        amount: i64,
        #[prost(fixed32, tag = "3")]
        shard: u32,
        #[prost(bytes = "vec", tag = "4")]
        blob: Vec<u8>,
    }

    fn frame(message: &Sample) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn reads_each_kind_of_field() {
        let sample = Sample { order_id: "order-42".into(), amount: 300, shard: 7, blob: vec![1, 2] };
        let frame = frame(&sample);
        assert_eq!(key_bytes(&frame, 1, HashKeyKind::Bytes).as_deref(), Some(&b"order-42"[..]));
        assert_eq!(
            key_bytes(&frame, 2, HashKeyKind::Varint { zigzag: false }),
            Some(300u64.to_le_bytes().to_vec())
        );
        assert_eq!(key_bytes(&frame, 3, HashKeyKind::Fixed32), Some(7u32.to_le_bytes().to_vec()));
        assert_eq!(key_bytes(&frame, 4, HashKeyKind::Bytes), Some(vec![1, 2]));
        assert_eq!(key_bytes(&frame, 9, HashKeyKind::Bytes), None, "absent field");
        assert_eq!(key_bytes(&frame, 1, HashKeyKind::Varint { zigzag: false }), None, "wrong wire type");
    }

    #[test]
    fn refuses_compressed_truncated_and_garbage_frames() {
        let good = frame(&Sample { order_id: "x".into(), ..Sample::default() });
        let mut compressed = good.clone();
        compressed[0] = 1;
        assert_eq!(key_bytes(&compressed, 1, HashKeyKind::Bytes), None);
        assert_eq!(key_bytes(&good[..good.len() - 1], 1, HashKeyKind::Bytes), None);
        assert_eq!(key_bytes(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff], 1, HashKeyKind::Bytes), None);
        assert_eq!(key_bytes(&[], 1, HashKeyKind::Bytes), None);
    }
}
