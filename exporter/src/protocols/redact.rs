//! Secrets never leave the host: query values are replaced before anything is exported or
//! shown. Headers need no redaction here because only harmless ones are ever parsed.

pub const REDACTED: &str = "REDACTED";

/// `a=1&b=&c` → `a=REDACTED&b=REDACTED&REDACTED`: names stay (they are useful and rarely
/// secret), values go, and so does a part with no `=`, which is all value (`?<token>`).
pub fn redact_query(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) => {
                out.push_str(k);
                out.push('=');
                out.push_str(REDACTED);
            }
            None if pair.is_empty() => {}
            None => out.push_str(REDACTED),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_replaced() {
        assert_eq!(
            redact_query("token=abc&page=2&flag"),
            "token=REDACTED&page=REDACTED&REDACTED"
        );
        assert_eq!(redact_query("eyJhbGciOi.s3cret"), "REDACTED");
        assert_eq!(redact_query("a=1&&b"), "a=REDACTED&&REDACTED");
        assert_eq!(redact_query(""), "");
    }
}
