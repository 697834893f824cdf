//! Strings that come from other machines (a peer chooses its own name), made safe to print
//! to a terminal or a log.

/// `s` as it may go to a terminal: names, addresses and errors come from other machines
/// (a peer chooses its own name), so control characters are escaped (`\u{1b}`), never
/// interpreted, and overlong strings are cut.
pub fn shown(s: &str) -> String {
    shown_max(s, 64)
}

/// [`shown`] for longer text (an error that quotes a peer): cut at `max` characters.
pub fn shown_max(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 3));
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn strings_from_peers_cannot_drive_the_terminal() {
        assert_eq!(shown("host-1"), "host-1");
        assert_eq!(shown("evil\u{1b}[2J\u{7}"), "evil\\u{1b}[2J\\u{7}");
        assert_eq!(shown("a\nb\rc"), "a\\nb\\rc");
        let long = "x".repeat(200);
        assert_eq!(shown(&long), format!("{}...", "x".repeat(64)));
        assert!(!shown("\u{9b}31m").contains('\u{9b}'), "C1 CSI too");
    }
}
