//! The frame decoder over arbitrary bytes: it never panics, and whatever it accepts is exactly
//! what the encoder would write for the fields it decoded (no second way to spell a frame).
#![no_main]

use annals::log::format::{
    Body, EventRef, FileHeader, GAP_HEADER_LEN, decode_frame, encode_event,
    encode_gap, encode_seal,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = FileHeader::decode(data);
    if data.len() < 8 {
        return;
    }
    let position = u64::from_le_bytes(data[..8].try_into().unwrap());
    let bytes = &data[8..];
    let key = u64::from_le_bytes(data[..8].try_into().unwrap()).rotate_left(17);
    let Ok(frame) = decode_frame(bytes, position, key) else {
        return;
    };
    let len = frame.len as usize;
    let mut again = Vec::new();
    if let Body::Gap { last_inner } = frame.body {
        // A gap's own bytes are its header and body; what it covers is not read.
        assert!(len % 8 == 0 && len as u64 >= GAP_HEADER_LEN);
        encode_gap(&mut again, frame.link, key, frame.len, last_inner);
        assert_eq!(again, bytes[..GAP_HEADER_LEN as usize], "a gap re-encodes the same");
        return;
    }
    assert!(len <= bytes.len() && len % 8 == 0);
    let frame_bytes = &bytes[..len];
    match frame.body {
        Body::Seal { next } => {
            encode_seal(&mut again, frame.link, key, next);
        }
        Body::Event => {
            let e = EventRef::new(frame_bytes);
            let (meta, payload) = (e.metadata_range(), e.payload_range());
            assert!(meta.end <= len && payload.end <= len);
            if e.check_names().is_err() {
                return;
            }
            let record = e.to_record();
            encode_event(&mut again, frame.link, key, &record);
        }
        Body::Gap { .. } => unreachable!("handled above"),
    }
    assert_eq!(
        again, frame_bytes,
        "a decoded frame re-encodes to the same bytes"
    );
});
