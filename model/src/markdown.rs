//! Putting untrusted strings into Markdown so they stay text.
//!
//! Span names, routes and attribute values come from whoever sends traffic.
//! In a ticket they must not become Markdown, HTML, links, images or
//! `@mentions`. Values go into code spans, where GitHub renders nothing; prose
//! that mixes our words with theirs is backslash-escaped, and the sequences
//! GitHub links on plain text (`@name`, `#123`, `https://`, `www.`) are broken
//! with a word joiner, which reads the same but matches nothing.

/// U+2060 WORD JOINER: invisible, and breaks GitHub's mention, reference and
/// autolink patterns.
const JOINER: char = '\u{2060}';

/// Characters that reorder or hide text (bidi overrides, zero-width marks) and
/// control characters are dropped; line breaks become spaces.
fn clean(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' => Some(' '),
            c if c.is_control() => None,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}' => None,
            c => Some(c),
        })
        .collect()
}

/// An inline code span holding `s` literally.
pub fn code(s: &str) -> String {
    let s = clean(s);
    if s.trim().is_empty() {
        return "` `".to_owned();
    }
    let longest = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    // A span that starts or ends with a backtick (or a space) needs a space of
    // padding on both sides, which the renderer strips.
    if s.starts_with('`') || s.ends_with('`') || s.starts_with(' ') || s.ends_with(' ') {
        format!("{fence} {s} {fence}")
    } else {
        format!("{fence}{s}{fence}")
    }
}

/// A code span for a table cell: pipes would end the cell even inside code.
pub fn cell_code(s: &str) -> String {
    code(s).replace('|', "\\|")
}

/// Plain prose: every character Markdown or HTML could act on is escaped.
pub fn text(s: &str) -> String {
    let s = clean(s);
    let mut out = String::with_capacity(s.len() + 8);
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '\\' | '`' | '*' | '_' | '{' | '}' | '[' | ']' | '(' | ')' | '#' | '+' | '-' | '!' | '|' | '<' | '>'
            | '~' | '&' | '"' | '=' | '$' | '^' => {
                out.push('\\');
                out.push(c);
            }
            // `1.` at the start would make an ordered list.
            '.' if i > 0 && chars[..i].iter().all(char::is_ascii_digit) => {
                out.push('\\');
                out.push(c);
            }
            '@' | ':' | '.' => {
                out.push(c);
                // `@name`, `://` and `www.`-style autolinks: break the pattern.
                let next = chars.get(i + 1).copied();
                let breaks = match c {
                    '@' => next.is_some_and(|n| n.is_alphanumeric()),
                    ':' => next == Some('/'),
                    _ => i >= 3 && chars[i - 3..i].iter().collect::<String>().eq_ignore_ascii_case("www"),
                };
                if breaks {
                    out.push(JOINER);
                }
            }
            c => out.push(c),
        }
        // `#123` links an issue even when the `#` is escaped.
        if c == '#' && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit()) {
            out.push(JOINER);
        }
    }
    out
}

/// A sentence whose backticked parts are code: each part is either escaped
/// prose or a code span, so an unpaired backtick in a value cannot open a
/// span that swallows the rest.
pub fn sentence(s: &str) -> String {
    let parts: Vec<&str> = s.split('`').collect();
    let paired = parts.len() % 2 == 1;
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        let is_code = i % 2 == 1 && (paired || i + 1 < parts.len());
        if is_code {
            out.push_str(&code(part));
        } else {
            if i % 2 == 1 {
                out.push_str("\\`");
            }
            out.push_str(&text(part));
        }
    }
    out
}

/// A fenced code block that no line of `body` can close.
pub fn fenced(lang: &str, body: &str) -> String {
    let longest = body.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let body: String = body.chars().filter(|c| !c.is_control() || *c == '\n' || *c == '\t').collect();
    format!("{fence}{lang}\n{}\n{fence}", body.trim_end())
}

/// A title for a tracker that shows it as plain text: one line, no control
/// characters, at most `max` characters.
pub fn title(s: &str, max: usize) -> String {
    let s = clean(s);
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= max {
        return s;
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_hold_anything() {
        assert_eq!(code("GET /v1/quote"), "`GET /v1/quote`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
        assert_eq!(code("line\nbreak"), "`line break`");
        assert_eq!(cell_code("a|b"), "`a\\|b`");
        assert_eq!(code(""), "` `");
    }

    #[test]
    fn prose_cannot_become_markup() {
        let t = text("<img src=x> [click](http://evil.example) @octocat #12 **bold** www.evil.example");
        // Every character Markdown or HTML acts on is escaped.
        let chars: Vec<char> = t.chars().collect();
        for (i, c) in chars.iter().enumerate() {
            if "<>[]()*".contains(*c) {
                assert!(i > 0 && chars[i - 1] == '\\', "unescaped {c} in {t}");
            }
        }
        assert!(!t.contains("@octocat"), "{t}");
        assert!(!t.contains("#12"), "{t}");
        assert!(!t.contains("www.evil"), "{t}");
        assert!(!t.contains("http://"), "{t}");
        assert_eq!(text("a\u{202e}b"), "ab");
    }

    #[test]
    fn sentences_keep_their_code_and_escape_the_rest() {
        assert_eq!(sentence("p95 of `GET /q` rose"), "p95 of `GET /q` rose");
        assert_eq!(sentence("see `[x](y)` <b>"), "see `[x](y)` \\<b\\>");
        // An unpaired backtick from a value does not open a span.
        assert_eq!(sentence("a `b` c `d"), "a `b` c \\`d");
    }

    #[test]
    fn fences_outlast_the_body() {
        assert_eq!(fenced("sql", "SELECT 1"), "```sql\nSELECT 1\n```");
        assert_eq!(fenced("sql", "x ``` y"), "````sql\nx ``` y\n````");
    }
}
