//! The rules of the human gate that hold whoever calls it (the API, the UI, a
//! test): who may be named as the reviewer, and what a decision must carry.

use crate::TicketError;

/// The longest note or reason a decision may carry, in bytes.
pub const MAX_NOTE_BYTES: usize = 4096;

/// The reviewer's name, trimmed: 1 to 100 printable characters.
pub fn reviewer(name: &str) -> Result<&str, TicketError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(TicketError::Invalid("reviewer must be a name of 1 to 100 printable characters".into()));
    }
    Ok(name)
}

/// An approval's optional note.
pub fn note(note: Option<&str>) -> Result<(), TicketError> {
    if note.is_some_and(|n| n.len() > MAX_NOTE_BYTES) {
        return Err(TicketError::Invalid(format!("the note is longer than {MAX_NOTE_BYTES} bytes")));
    }
    Ok(())
}

/// A rejection's reason: required, and no longer than a note.
pub fn reason(reason: &str) -> Result<(), TicketError> {
    if reason.trim().is_empty() {
        return Err(TicketError::Invalid("a rejection needs a reason".into()));
    }
    note(Some(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(reviewer("  ana  ").unwrap(), "ana");
        assert!(reviewer("   ").is_err());
        assert!(reviewer(&"x".repeat(101)).is_err());
        assert!(reviewer("ana\u{7}").is_err());
        assert!(note(Some(&"n".repeat(MAX_NOTE_BYTES + 1))).is_err());
        assert!(note(None).is_ok());
        assert!(reason(" ").is_err());
        assert!(reason("duplicate of #12").is_ok());
    }
}
