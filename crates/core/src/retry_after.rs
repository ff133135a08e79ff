//! The HTTP `Retry-After` header (RFC 9110 §10.2.3): how long a server asked us to wait, given
//! either as seconds or as a date.

use std::time::{Duration, SystemTime};

/// The longest wait a `Retry-After` is taken to ask for; longer asks are read as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How long from `now` a `Retry-After` value asks to wait: `120` (seconds) or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`; a date in the past means no wait). `None` when the value
/// is neither.
pub fn parse(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse("99999999999999999999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse("-5", now), None);
        assert_eq!(parse("soon", now), None);
        assert_eq!(parse("", now), None);
    }
}
