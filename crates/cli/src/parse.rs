//! The parsers of flag values that are more than a number or a word: durations, rates,
//! `--retain`, `--scope`, CORS origins and the webhook secret; and database URLs made fit to
//! print.

use imgclass_worker::webhooks::WebhookSecret;
use std::time::Duration;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write durations like 500ms, 30s, 5m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// `--retain`: a duration, or 0 for "keep forever".
#[derive(Debug, Clone, Copy)]
pub struct RetainArg(pub Option<Duration>);

pub fn parse_retain(s: &str) -> Result<RetainArg, String> {
    if s.trim() == "0" {
        return Ok(RetainArg(None));
    }
    parse_duration(s).map(|d| RetainArg(Some(d)))
}

pub fn parse_rate_limit(s: &str) -> Result<imgclass_store::RateLimit, String> {
    let (jobs, per) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: write JOBS/PERIOD, e.g. 1/10s"))?;
    let jobs: u32 = jobs
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: JOBS must be a whole number above 0"))?;
    let per = per.trim();
    // "1/s" means one per second.
    let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
        per.to_string()
    } else {
        format!("1{per}")
    };
    Ok(imgclass_store::RateLimit {
        jobs,
        per: parse_duration(&per)?,
    })
}

/// `--scope submit,read`: one value holding a list (clap would take a bare `Vec` as repeats).
#[derive(Debug, Clone)]
pub struct ScopeList(pub Vec<imgclass_core::Scope>);

pub fn parse_scopes(s: &str) -> Result<ScopeList, String> {
    imgclass_core::Scope::parse_list(s).map(ScopeList)
}

pub fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err("must be between 0.0 and 1.0".into());
    }
    Ok(v)
}

pub fn parse_origin(s: &str) -> Result<axum::http::HeaderValue, String> {
    let s = s.trim().trim_end_matches('/');
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("{s:?}: write an origin like https://app.example.com"))?;
    if !["http", "https"].contains(&scheme) || rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "{s:?}: an origin is scheme://host[:port], e.g. https://app.example.com"
        ));
    }
    axum::http::HeaderValue::from_str(s).map_err(|e| format!("{s:?}: {e}"))
}

pub fn parse_webhook_secret(s: &str) -> Result<WebhookSecret, String> {
    WebhookSecret::parse(s)
}

/// A database URL fit to print: a password, in the user information
/// (`postgres://user:PASSWORD@host/db`) or as the `password` query parameter, is replaced by
/// `***`. A password written without percent-encoding (with `@`, `/`, `?` or `#` in it) is
/// hidden whole too.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // SQLite URLs name a file (whose path may hold `@` and `:`), never a password.
    if scheme.eq_ignore_ascii_case("sqlite") {
        return url.to_string();
    }
    // The user information ends at the last `@` before the query: a password's own `@`, `/`
    // or `#` stay inside it.
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    match before_query.rsplit_once('@') {
        Some((user_info, host)) => {
            match user_info.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***")),
                None => out.push_str(user_info),
            }
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_lose_their_password() {
        for (url, shown) in [
            ("sqlite://data/imgclass.db", "sqlite://data/imgclass.db"),
            ("sqlite:///tmp/a:b@c/x.db", "sqlite:///tmp/a:b@c/x.db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h:5432/db", "postgres://h:5432/db"),
            (
                "postgres://u:s3cret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            (
                "postgresql://u:p%40ss@h/db?sslmode=require",
                "postgresql://u:***@h/db?sslmode=require",
            ),
            ("postgres://u:p@s/s#x@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?sslmode=disable&password=s3cret",
                "postgres://u@h/db?sslmode=disable&password=***",
            ),
            ("postgres://u:@h/db", "postgres://u:***@h/db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn rate_limits_parse() {
        let r = parse_rate_limit("1/10s").unwrap();
        assert_eq!((r.jobs, r.per), (1, Duration::from_secs(10)));
        let r = parse_rate_limit("5/m").unwrap();
        assert_eq!((r.jobs, r.per), (5, Duration::from_secs(60)));
        assert!(parse_rate_limit("0/1s").is_err());
        assert!(parse_rate_limit("10s").is_err());
        assert!(parse_rate_limit("1/0s").is_err());
    }

    #[test]
    fn retention_parses() {
        assert_eq!(parse_retain("0").unwrap().0, None);
        assert_eq!(
            parse_retain("7d").unwrap().0,
            Some(Duration::from_secs(7 * 86400))
        );
        assert!(parse_retain("-1").is_err());
    }

    #[test]
    fn failure_rates_are_shares() {
        assert_eq!(parse_rate("0.4").unwrap(), 0.4);
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("x").is_err());
    }
}
