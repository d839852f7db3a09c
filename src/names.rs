//! Rules for stream names and event type names, and what a stream name means (its category).

use crate::error::{Error, Result};
use crate::log::format::{MAX_EVENT_TYPE_LEN, MAX_STREAM_NAME_LEN};

pub use crate::log::records::RESERVED_PREFIX;

fn common(name: &str, max: usize) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > max {
        return Err(if max == MAX_STREAM_NAME_LEN {
            "longer than 1024 bytes"
        } else {
            "longer than 256 bytes"
        });
    }
    if name.chars().any(char::is_control) {
        return Err("contains control characters");
    }
    if name.trim() != name {
        return Err("starts or ends with whitespace");
    }
    Ok(())
}

/// Checks a stream name: non-empty UTF-8, at most 1024 bytes, no control characters, no
/// leading or trailing whitespace; names starting with `$` only if `allow_reserved`.
pub(crate) fn check_stream_name(name: &str, allow_reserved: bool) -> Result<()> {
    let invalid = |reason| Error::InvalidStreamName {
        name: name.chars().take(64).collect(),
        reason,
    };
    common(name, MAX_STREAM_NAME_LEN).map_err(invalid)?;
    if !allow_reserved && name.starts_with(RESERVED_PREFIX) {
        return Err(invalid(
            "names starting with `$` are reserved for the engine",
        ));
    }
    Ok(())
}

/// Checks an event type name: non-empty UTF-8, at most 256 bytes, no control characters, no
/// leading or trailing whitespace.
pub(crate) fn check_event_type(name: &str) -> Result<()> {
    common(name, MAX_EVENT_TYPE_LEN).map_err(|reason| Error::InvalidEventType {
        name: name.chars().take(64).collect(),
        reason,
    })
}

/// The category of a stream: its name up to the first `-` (the whole name if it has none).
///
/// ```
/// assert_eq!(annals::category_of("order-42"), "order");
/// assert_eq!(annals::category_of("order-42-lines"), "order");
/// assert_eq!(annals::category_of("inventory"), "inventory");
/// ```
pub fn category_of(stream: &str) -> &str {
    stream
        .split_once('-')
        .map_or(stream, |(category, _)| category)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_stream_names_are_refused_with_a_reason() {
        for (name, reason) in [
            ("", "must not be empty"),
            ("a\nb", "contains control characters"),
            ("nul\0", "contains control characters"),
            (" padded", "starts or ends with whitespace"),
            (
                "$system",
                "names starting with `$` are reserved for the engine",
            ),
        ] {
            match check_stream_name(name, false) {
                Err(Error::InvalidStreamName { reason: r, .. }) => {
                    assert_eq!(r, reason, "{name:?}")
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        let long = "x".repeat(MAX_STREAM_NAME_LEN + 1);
        assert!(check_stream_name(&long, false).is_err());
        assert!(check_stream_name(&long[1..], false).is_ok());
        assert!(check_stream_name("$system", true).is_ok());
        assert!(check_stream_name("commande-été-🦀", false).is_ok());
    }

    #[test]
    fn event_types_follow_the_same_rules() {
        assert!(check_event_type("OrderPlaced").is_ok());
        assert!(check_event_type("").is_err());
        assert!(check_event_type(&"t".repeat(MAX_EVENT_TYPE_LEN + 1)).is_err());
        assert!(check_event_type("$ok-for-types").is_ok());
    }
}
