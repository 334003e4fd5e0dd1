//! Numbers the way people read them, shared by finding summaries, ticket
//! bodies and reports so they agree to the digit.

/// `1,204` for 1204.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A share as a percentage with two significant digits for small values:
/// `34%`, `9.1%`, `0.12%`.
pub fn pct(v: f64) -> String {
    let p = v * 100.0;
    if p.abs() >= 10.0 {
        format!("{p:.0}%")
    } else if p.abs() >= 1.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.2}%")
    }
}

/// Milliseconds: `112 ms`, `16.0 ms`.
pub fn ms(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0} ms") } else { format!("{v:.1} ms") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentages_read_well() {
        assert_eq!(count(1204), "1,204");
        assert_eq!(count(12), "12");
        assert_eq!(count(1_000_000), "1,000,000");
        assert_eq!(pct(0.34), "34%");
        assert_eq!(pct(0.091), "9.1%");
        assert_eq!(pct(0.0012), "0.12%");
        assert_eq!(ms(112.4), "112 ms");
        assert_eq!(ms(16.04), "16.0 ms");
    }
}
