//! Text that came from the guest (serial console lines, agent error messages) on its way
//! into host logs and containerd's errors: control characters, backslashes and Unicode
//! bidirectional overrides are escaped, so a hostile guest can neither forge log lines
//! (`\r`, terminal escapes) nor disguise them, and the length is bounded.

/// Longer text is cut, with a marker saying so.
pub const MAX_GUEST_TEXT: usize = 2048;

/// `s` with every control character, backslash and bidi override written as an escape
/// (`\n`, `\u{1b}`, `\\`), cut to [`MAX_GUEST_TEXT`] bytes of output.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_GUEST_TEXT));
    for c in s.chars() {
        if out.len() >= MAX_GUEST_TEXT {
            out.push_str("…(cut)");
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that reorder the text around them when displayed.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{61c}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(
            escape("guest reached init after 12 ms: ok"),
            "guest reached init after 12 ms: ok"
        );
        assert_eq!(escape("héllo ✓"), "héllo ✓");
    }

    #[test]
    fn forged_lines_and_terminal_escapes_are_escaped() {
        assert_eq!(
            escape("x\nlevel=error msg=\"forged\"\r\u{1b}[2K\\"),
            "x\\nlevel=error msg=\"forged\"\\r\\u{1b}[2K\\\\"
        );
        assert_eq!(escape("a\u{202e}b\0"), "a\\u{202e}b\\u{0}");
    }

    #[test]
    fn length_is_bounded() {
        let long = "\u{1b}".repeat(10 * MAX_GUEST_TEXT);
        let e = escape(&long);
        assert!(e.len() <= MAX_GUEST_TEXT + 16, "{}", e.len());
        assert!(e.ends_with("…(cut)"));
    }
}
