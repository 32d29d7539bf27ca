//! Validation of user, device, conversation and client message ids, and the
//! quoting of untrusted values inside rejection messages.
//!
//! A valid id is 1 to `Limits::id_bytes_max` bytes of ASCII letters, digits,
//! '-', '_', '.' and ':'.

use crate::limits::Limits;
use crate::proto::{Rejection, RejectionCode};
use crate::rejection::reject;

/// Maximum number of bytes of an untrusted value that a message quotes.
const QUOTED_BYTES_MAX: usize = 64;

/// Returns whether `value` is a valid id under `limits`.
pub(crate) fn is_valid_id(value: &str, limits: &Limits) -> bool {
    !value.is_empty() && value.len() <= limits.id_bytes_max && value.bytes().all(is_id_byte)
}

fn is_id_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':')
}

/// Rejects `value` with REJECTION_CODE_INVALID_ID unless it is a valid id.
/// `field` names the command field, such as `append.sender_device`.
pub(crate) fn check_id(field: &str, value: &str, limits: &Limits) -> Result<(), Rejection> {
    if is_valid_id(value, limits) {
        return Ok(());
    }

    Err(reject(
        RejectionCode::InvalidId,
        format!(
            "invalid {field} {}: an id must be 1 to {} bytes of ASCII letters, digits, \
             '-', '_', '.' or ':'",
            quote(value),
            limits.id_bytes_max
        ),
    ))
}

/// Rejects the first invalid id in `values`.
pub(crate) fn check_ids(field: &str, values: &[String], limits: &Limits) -> Result<(), Rejection> {
    values
        .iter()
        .try_for_each(|value| check_id(field, value, limits))
}

/// Quotes an untrusted value for a message: escaped like a Rust string
/// literal and cut to its first 64 bytes, with the full length appended when
/// it was cut.
pub(crate) fn quote(value: &str) -> String {
    if value.len() <= QUOTED_BYTES_MAX {
        return format!("{value:?}");
    }

    let mut end = QUOTED_BYTES_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &value[..end], value.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_accepts_allowed_characters() {
        let limits = Limits::default();

        assert!(is_valid_id("user-1_a.b:c", &limits));
        assert!(is_valid_id("Z", &limits));
    }

    #[test]
    fn id_rejects_empty_long_and_other_characters() {
        let limits = Limits {
            id_bytes_max: 4,
            ..Limits::default()
        };

        assert!(!is_valid_id("", &limits));
        assert!(!is_valid_id("abcde", &limits));
        assert!(!is_valid_id("a b", &limits));
        assert!(!is_valid_id("a/b", &limits));
        assert!(!is_valid_id("é", &limits));
    }

    #[test]
    fn quote_cuts_long_values_on_char_boundary() {
        let value = format!("{}é", "a".repeat(63));

        let quoted = quote(&value);

        assert_eq!(quoted, format!("{:?}... (65 bytes)", "a".repeat(63)));
    }

    #[test]
    fn check_id_message_names_field_and_value() {
        let rejection = match check_id("append.sender_device", "bad id", &Limits::default()) {
            Err(rejection) => rejection,
            Ok(()) => panic!("an id with a space must be rejected"),
        };

        assert_eq!(rejection.code(), RejectionCode::InvalidId);
        assert!(rejection.message.contains("append.sender_device"));
        assert!(rejection.message.contains("\"bad id\""));
    }
}
