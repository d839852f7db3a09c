//! How typed events become payload bytes and back.
//!
//! Two codecs: JSON (the default: people read stored events for years, and a field added with
//! `#[serde(default)]` reads old events with no upcaster) and bincode 2 (standard
//! configuration; compact and faster, a per-store choice). A store picks one for the events it
//! writes ([`crate::store::StoreBuilder::codec`]); every event records which encoding its
//! payload has, so a store can hold both and reads never guess.
//!
//! JSON is written the way Python's `json.dumps` writes it by default (`", "` between items,
//! `": "` after keys), so payloads and outbox envelopes read the same as those of the Python
//! libraries annals follows.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::log::format::PayloadEncoding;

/// The codec of a store's typed events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Codec {
    /// bincode 2, standard configuration: compact and fast, but unreadable to people, and a
    /// change to an event struct needs an upcaster for the old events.
    Bincode,
    /// JSON (serde_json), Python-style separators (the default).
    #[default]
    Json,
}

impl Codec {
    /// The payload encoding events written with this codec record.
    pub fn encoding(self) -> PayloadEncoding {
        match self {
            Codec::Bincode => PayloadEncoding::Bincode,
            Codec::Json => PayloadEncoding::Json,
        }
    }
}

/// Why a value could not be encoded or decoded (a message; the caller adds where).
pub(crate) type CodecError = String;

/// Encodes `value` in `encoding` (raw bytes cannot hold a typed value).
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    encoding: PayloadEncoding,
) -> Result<Vec<u8>, CodecError> {
    match encoding {
        PayloadEncoding::Bincode => {
            bincode::serde::encode_to_vec(value, bincode::config::standard())
                .map_err(|e| e.to_string())
        }
        PayloadEncoding::Json => crate::json::to_json_vec(value).map_err(|e| e.to_string()),
        PayloadEncoding::Raw => Err("a typed event cannot be stored as raw bytes".into()),
    }
}

/// Decodes `bytes` written in `encoding`; every byte must be used.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    encoding: PayloadEncoding,
) -> Result<T, CodecError> {
    match encoding {
        PayloadEncoding::Bincode => {
            let (value, used) =
                bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                    .map_err(|e| e.to_string())?;
            if used != bytes.len() {
                return Err(format!(
                    "{} bytes left over after the value",
                    bytes.len() - used
                ));
            }
            Ok(value)
        }
        PayloadEncoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        PayloadEncoding::Raw => Err("the payload is raw bytes, not an encoded value".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::to_json_string;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Book {
        id: String,
        isbn: String,
        pages: u32,
        tags: Vec<String>,
    }

    fn book() -> Book {
        Book {
            id: "x".into(),
            isbn: "0-321-12521-5".into(),
            pages: 560,
            tags: vec!["ddd".into(), "classic".into()],
        }
    }

    #[test]
    fn both_codecs_round_trip() {
        for enc in [PayloadEncoding::Bincode, PayloadEncoding::Json] {
            let bytes = encode(&book(), enc).unwrap();
            assert_eq!(decode::<Book>(&bytes, enc).unwrap(), book());
        }
    }

    #[test]
    fn json_is_written_like_python() {
        assert_eq!(
            to_json_string(&book()).unwrap(),
            r#"{"id": "x", "isbn": "0-321-12521-5", "pages": 560, "tags": ["ddd", "classic"]}"#
        );
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let mut bytes = encode(&book(), PayloadEncoding::Bincode).unwrap();
        bytes.push(0);
        assert!(
            decode::<Book>(&bytes, PayloadEncoding::Bincode)
                .unwrap_err()
                .contains("left over")
        );
        assert!(decode::<Book>(&[0xff; 3], PayloadEncoding::Bincode).is_err());
        assert!(decode::<Book>(b"{\"id\": 1}", PayloadEncoding::Json).is_err());
        assert!(decode::<Book>(b"anything", PayloadEncoding::Raw).is_err());
        assert!(encode(&book(), PayloadEncoding::Raw).is_err());
    }
}
