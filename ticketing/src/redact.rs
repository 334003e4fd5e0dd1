//! Masking what must not leave Andon: emails, payment card numbers, IP
//! addresses, phone numbers, bearer tokens, API keys, and the values of
//! attributes on the deny-list. Tickets,
//! webhook payloads and (later) LLM prompts all pass through here.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde_json::Value;

/// The mask for a value of a denied attribute, or one that looks like a secret.
pub const MASK: &str = "[redacted]";

struct Pattern {
    re: Regex,
    mask: &'static str,
}

fn pattern(re: &str, mask: &'static str) -> Pattern {
    // The patterns are constants, checked by the tests.
    #[allow(clippy::expect_used)]
    Pattern { re: Regex::new(re).expect("redaction pattern compiles"), mask }
}

static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        // `key=value` for keys that name a secret, whatever the value looks like.
        pattern(
            r#"(?i)\b((?:x-)?api[_-]?key|apikey|access[_-]?token|auth[_-]?token|refresh[_-]?token|client[_-]?secret|secret|password|passwd|pwd|token)(\s*[=:]\s*"?)[^\s"'&,;)}\]\[][^\s"'&,;)}\]]*"#,
            "$1$2[redacted]",
        ),
        // Authorization header values next, so the token inside is not left for
        // the narrower patterns to half-mask.
        pattern(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9\-._~+/]{8,}=*", "$1 [token]"),
        pattern(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*", "[token]"),
        pattern(r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}", "[api-key]"),
        pattern(r"\bsk-[A-Za-z0-9_-]{16,}", "[api-key]"),
        pattern(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})", "[api-key]"),
        pattern(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", "[api-key]"),
        pattern(r"\bxox[abposr]-[A-Za-z0-9-]{10,}", "[api-key]"),
        pattern(r"\bAIza[0-9A-Za-z_-]{30,}", "[api-key]"),
        pattern(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", "[email]"),
        // IP addresses: a client's address is personal data.
        pattern(r"\b(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}\b", "[ip]"),
        pattern(r"(?i)\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b", "[ip]"),
        pattern(r"(?i)\b(?:[0-9a-f]{1,4}:){1,6}:(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,5})?\b", "[ip]"),
        // Phone numbers: international (+ and a country code), or grouped
        // 3-3-4 as North American numbers are written.
        pattern(r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}\b", "[phone]"),
        pattern(r"(?:\(\d{3}\)\s?|\b\d{3}[-.])\d{3}[-.]\d{4}\b", "[phone]"),
    ]
});

/// 13 to 19 digits, optionally grouped by single spaces or dashes.
static CARD: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").expect("card pattern compiles")
});

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Masks secrets and personal data in text and JSON.
#[derive(Debug, Clone)]
pub struct Redactor {
    deny: Vec<String>,
    /// `key=value` and `key: value` for every denied key.
    deny_pairs: Option<Regex>,
}

impl Redactor {
    pub fn new(deny: &[String]) -> Self {
        let deny: Vec<String> = deny.iter().map(|d| d.trim().to_owned()).filter(|d| !d.is_empty()).collect();
        let deny_pairs = (!deny.is_empty())
            .then(|| {
                let keys: Vec<String> = deny.iter().map(|k| regex::escape(k)).collect();
                // A value never starts with `[`: a mask (`[redacted]`) is not masked again.
                Regex::new(&format!(
                    r#"(?i)(^|[^\w.])({})(\s*[=:]\s*"?)[^\s"'`&,;)}}\]\[][^\s"'`&,;)}}\]]*"#,
                    keys.join("|")
                ))
                .ok()
            })
            .flatten();
        Self { deny, deny_pairs }
    }

    /// Whether values of attribute `key` are always masked.
    pub fn denies(&self, key: &str) -> bool {
        self.deny.iter().any(|d| d.eq_ignore_ascii_case(key))
    }

    /// `s` with everything that looks like a secret or personal data masked.
    pub fn text<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(s);
        if let Some(re) = &self.deny_pairs
            && re.is_match(&out)
        {
            out = Cow::Owned(re.replace_all(&out, "$1$2$3[redacted]").into_owned());
        }
        for p in PATTERNS.iter() {
            if p.re.is_match(&out) {
                out = Cow::Owned(p.re.replace_all(&out, p.mask).into_owned());
            }
        }
        if CARD.is_match(&out) {
            let replaced = CARD.replace_all(&out, |c: &Captures<'_>| {
                let digits: Vec<u8> = c[0].bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
                if luhn(&digits) { "[card]".to_owned() } else { c[0].to_owned() }
            });
            if let Cow::Owned(o) = replaced {
                out = Cow::Owned(o);
            }
        }
        out
    }

    /// The value of attribute `key`: masked whole when the key is denied.
    pub fn attribute<'a>(&self, key: &str, value: &'a str) -> Cow<'a, str> {
        if self.denies(key) { Cow::Borrowed(MASK) } else { self.text(value) }
    }

    /// A JSON value with every string masked and every denied key's value
    /// replaced.
    pub fn json(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(s).into_owned()),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.json(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| {
                        let k2 = self.text(k).into_owned();
                        if self.denies(k) { (k2, Value::String(MASK.into())) } else { (k2, self.json(x)) }
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::new(&["user.id".to_owned(), "client.address".to_owned()])
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn cases() -> u32 {
            std::env::var("ANDON_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

            /// Planted personal data never survives, whatever text surrounds
            /// it, and masking what was masked changes nothing.
            #[test]
            fn planted_data_never_survives_and_masking_is_idempotent(
                before in "\\PC{0,40}",
                after in "\\PC{0,40}",
                user in "[a-z][a-z0-9.]{0,10}[a-z]",
                host in "[a-z]{2,10}",
                ip in (1u8..=254, any::<u8>(), any::<u8>(), 1u8..=254),
                value in "[A-Za-z0-9]{1,12}",
            ) {
                let r = r();
                let email = format!("{user}@{host}.org");
                let ip = format!("{}.{}.{}.{}", ip.0, ip.1, ip.2, ip.3);
                let text = format!("{before} {email} ; {ip} ; user.id={value} {after}");
                let once = r.text(&text).into_owned();
                prop_assert!(!once.contains(&email), "{once}");
                prop_assert!(!once.contains(&format!(" {ip} ")), "{once}");
                prop_assert!(!once.contains(&format!("user.id={value}")), "{once}");
                prop_assert_eq!(r.text(&once).into_owned(), once.clone());
                let json = r.json(&serde_json::json!({"note": text, "user.id": value}));
                prop_assert!(!json.to_string().contains(&email));
            }
        }
    }

    #[test]
    fn personal_data_and_secrets_are_masked() {
        let r = r();
        let cases = [
            ("mail alice.smith+x@example.co.uk now", "mail [email] now"),
            ("card 4111 1111 1111 1111 paid", "card [card] paid"),
            ("card 4111-1111-1111-1111", "card [card]"),
            ("Authorization: Bearer abc.DEF-123_xyz", "Authorization: Bearer [token]"),
            ("key sk_live_4eC39HqLyjWDarjtT1zdp7dc", "key [api-key]"),
            ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "[api-key]"),
            ("AKIAIOSFODNN7EXAMPLE", "[api-key]"),
            ("GET /v1/items?api_key=s3cr3t&page=2", "GET /v1/items?api_key=[redacted]&page=2"),
            ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "jwt [token]"),
            ("user.id=8812 on checkout", "user.id=[redacted] on checkout"),
            ("`client.address=10.0.0.7`", "`client.address=[redacted]`"),
            ("from 203.0.113.42 again", "from [ip] again"),
            ("peer 2001:db8:85a3::8a2e:370:7334 closed", "peer [ip] closed"),
            ("peer fe80:0:0:0:202:b3ff:fe1e:8329", "peer [ip]"),
            ("call +44 20 7946 0958 back", "call [phone] back"),
            ("call +1 (415) 555-0100", "call [phone]"),
            ("or (415) 555-0100 or 415-555-0100", "or [phone] or [phone]"),
        ];
        for (input, want) in cases {
            assert_eq!(r.text(input), want, "{input}");
        }
    }

    #[test]
    fn ordinary_values_are_left_alone() {
        let r = r();
        for s in [
            "GET /v1/products/{id}",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "order 1234567890123 (not a card: the check digit is wrong)",
            "p95 rose from 16.0 ms to 112 ms; 1,204 sessions affected",
            "tokens=5",
            "service.version=7.4.0",
            "since 01:15 UTC, onset 00:59:12",
            "p95 +388% since 2026-11-30",
            "12 of 300 requests (4.0%)",
        ] {
            assert_eq!(r.text(s), s);
        }
    }

    #[test]
    fn denied_keys_are_masked_in_json() {
        let v = serde_json::json!({"user.id": "u-17", "os.type": "android", "note": ["write to bob@example.com"]});
        let out = r().json(&v);
        assert_eq!(out, serde_json::json!({"user.id": MASK, "os.type": "android", "note": ["write to [email]"]}));
        assert_eq!(r().attribute("USER.ID", "42"), MASK);
    }
}
