//! Secrets never leave the host: query values are replaced before anything is exported or
//! shown. Headers need no redaction here because only harmless ones are ever parsed.

pub const REDACTED: &str = "REDACTED";

/// `a=1&b=&c` → `a=REDACTED&b=REDACTED&c`: names stay (they are useful and rarely secret),
/// values go.
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
            None => out.push_str(pair),
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
            "token=REDACTED&page=REDACTED&flag"
        );
        assert_eq!(redact_query(""), "");
    }
}
