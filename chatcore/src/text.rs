//! The rules for text people type: message bodies.

use crate::{Error, Result};

/// Characters that show nothing: a body made only of these (and whitespace) is empty. The
/// zero-width and joiner characters, the word joiner family, the byte-order mark, the Hangul
/// fillers, the soft hyphen, the combining grapheme joiner, the Mongolian vowel separator, the
/// Khmer inherent vowels, the braille blank and the Arabic letter mark.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
    )
}

/// A message body as stored: line breaks as `\n`, whitespace trimmed at both ends, checked.
///
/// Errors ([`Error::Invalid`]): empty once whitespace and invisible characters are set
/// aside; control characters other than newline and tab (NUL included); more than
/// `max_chars` characters. Bidirectional overrides are kept: clients isolate each body when
/// they display it.
///
/// ```
/// use chatcore::message_body;
/// assert_eq!(message_body(" hi\r\nthere ", 100).unwrap(), "hi\nthere");
/// assert!(message_body("\u{200B}\u{3164} ", 100).is_err());
/// assert!(message_body("nul\0", 100).is_err());
/// ```
pub fn message_body(raw: &str, max_chars: usize) -> Result<String> {
    let trimmed = raw.trim();
    let body = if trimmed.contains('\r') {
        trimmed.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        trimmed.to_owned()
    };
    if body.chars().all(|c| c.is_whitespace() || is_invisible(c)) {
        return Err(Error::invalid("message body must not be empty"));
    }
    if let Some(bad) = body
        .chars()
        .find(|&c| c.is_control() && c != '\n' && c != '\t' && (c as u32) < 0x80)
    {
        return Err(Error::invalid(format!(
            "message body must not contain control characters (found U+{:04X})",
            bad as u32
        )));
    }
    // Counting chars is linear; a byte length within the limit cannot exceed it in chars.
    if body.len() > max_chars && body.chars().count() > max_chars {
        return Err(Error::invalid(format!(
            "message body must be at most {max_chars} characters"
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(message_body("  aaa ", 10).unwrap(), "aaa");
        assert_eq!(message_body("a\tb\nc", 10).unwrap(), "a\tb\nc");
        assert_eq!(message_body("a\r\nb\rc", 10).unwrap(), "a\nb\nc");
        for empty in [
            "",
            "   ",
            "\n\t ",
            "\u{200B}",
            "\u{3164}",
            " \u{FFA0}\u{2060} ",
            "\u{FEFF}",
        ] {
            assert!(message_body(empty, 10).is_err(), "{empty:?}");
        }
        for control in ["a\0b", "\u{7}", "x\u{1B}[31m", "a\u{7F}"] {
            assert!(message_body(control, 10).is_err(), "{control:?}");
        }
        // Invisible characters inside a real body stay; bidi overrides are kept.
        assert_eq!(message_body("a\u{200D}b", 10).unwrap(), "a\u{200D}b");
        assert_eq!(message_body("\u{202E}abc", 10).unwrap(), "\u{202E}abc");
        assert!(message_body(&"😀".repeat(10), 10).is_ok());
        assert!(message_body(&"😀".repeat(11), 10).is_err());
    }
}
