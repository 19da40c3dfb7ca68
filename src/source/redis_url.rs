//! A broker address that never shows its password.
//!
//! `redis://user:password@host:6379/0` is what a client needs to connect, and what must
//! never reach a log: every error ([`FlowError::Broker`](crate::FlowError::Broker)) and
//! every `Debug` of a Redis source or sink shows [`RedisUrl::redacted`] instead, with the
//! password (in the user part, or a `password=`/`pass=` query parameter) replaced by `***`.

use std::fmt;
use std::ops::Range;

/// What stands in for a password wherever an address is shown.
const MASK: &str = "***";

/// A broker address: the full text to connect with, and the redacted text to show.
#[derive(Clone)]
pub(crate) struct RedisUrl {
    full: String,
    redacted: String,
}

impl RedisUrl {
    pub(crate) fn new(url: &str) -> Self {
        RedisUrl {
            full: url.to_string(),
            redacted: redact(url),
        }
    }

    /// The address with its password, to connect with: never shown.
    pub(crate) fn full(&self) -> &str {
        &self.full
    }

    /// The address to show: its password masked.
    pub(crate) fn redacted(&self) -> &str {
        &self.redacted
    }

    /// `text` (a client library's error message, which may quote the address) with every
    /// occurrence of the password masked too.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.replace(&self.full, &self.redacted);
        for span in secret_spans(&self.full) {
            text = text.replace(&self.full[span], MASK);
        }
        text
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted, f)
    }
}

/// Where the secrets of `url` are: the password of the user part
/// (`scheme://user:password@host`) and the values of `password=`/`pass=` query
/// parameters (as `redis+unix:///path?pass=...` takes it); in order, never empty.
fn secret_spans(url: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    if let Some(scheme_end) = url.find("://") {
        let start = scheme_end + "://".len();
        let rest = &url[start..];
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        // The host follows the last `@`: a password may contain `@` itself.
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some(colon) = userinfo.find(':')
            && colon + 1 < userinfo.len()
        {
            spans.push(start + colon + 1..start + userinfo.len());
        }
    }
    if let Some(question) = url.find('?') {
        let query_end = url[question..]
            .find('#')
            .map_or(url.len(), |i| question + i);
        let mut pair_start = question + 1;
        for pair in url[question + 1..query_end].split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && matches!(name, "password" | "pass")
                && !value.is_empty()
            {
                let value_start = pair_start + name.len() + 1;
                spans.push(value_start..value_start + value.len());
            }
            pair_start += pair.len() + 1;
        }
    }
    spans
}

/// `url` with its secrets masked, by position: a password that also appears elsewhere in
/// the address (as the host name, say) does not give itself away.
fn redact(url: &str) -> String {
    let mut redacted = String::with_capacity(url.len());
    let mut shown = 0;
    for span in secret_spans(url) {
        redacted.push_str(&url[shown..span.start]);
        redacted.push_str(MASK);
        shown = span.end;
    }
    redacted.push_str(&url[shown..]);
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_of_the_user_part_is_masked() {
        let cases = [
            (
                "redis://alice:s3cret@host:6379/0",
                "redis://alice:***@host:6379/0",
            ),
            ("redis://:s3cret@host", "redis://:***@host"),
            (
                "rediss://alice:p@ss:w@rd@host/1",
                "rediss://alice:***@host/1",
            ),
            ("redis://alice@host", "redis://alice@host"),
            ("redis://host:6379", "redis://host:6379"),
            ("redis://alice:@host", "redis://alice:@host"),
            ("not a url", "not a url"),
        ];
        for (url, shown) in cases {
            assert_eq!(RedisUrl::new(url).redacted(), shown, "{url}");
            assert_eq!(RedisUrl::new(url).full(), url);
        }
    }

    #[test]
    fn password_query_parameters_are_masked() {
        let url = RedisUrl::new("redis+unix:///run/redis.sock?db=1&pass=s3cret&x=1");
        assert_eq!(
            url.redacted(),
            "redis+unix:///run/redis.sock?db=1&pass=***&x=1"
        );
        let url = RedisUrl::new("redis://host/?password=s3cret#frag");
        assert_eq!(url.redacted(), "redis://host/?password=***#frag");
    }

    #[test]
    fn debug_and_scrubbed_messages_never_show_the_password() {
        let url = RedisUrl::new("redis://alice:s3cret@host:6379");
        assert_eq!(format!("{url:?}"), "\"redis://alice:***@host:6379\"");
        let message = url.scrub("cannot connect to redis://alice:s3cret@host:6379 (s3cret)");
        assert_eq!(
            message,
            "cannot connect to redis://alice:***@host:6379 (***)"
        );
    }
}
