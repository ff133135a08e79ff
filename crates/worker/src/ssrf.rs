//! The SSRF guard of webhook calls: only `http(s)` URLs; the host's addresses are checked at
//! submission ([`check_url`]) and again at every connection (the deliverer's client resolves
//! through `GuardedResolver`, which refuses a name with any loopback, private, link-local,
//! multicast, unspecified or otherwise reserved address, which covers the cloud metadata
//! address), IP literals likewise ([`forbidden`]); proxies and redirects are not followed.

use reqwest::Url;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Why an address is not called, or `None` when it may be.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("a private (unique local) address")
            } else if s[0] == 0x64 && s[1] == 0xff9b {
                // NAT64: judged by the IPv4 address it embeds.
                forbidden_v4(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ))
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("a documentation address")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("the unspecified address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        // 169.254.169.254 is the cloud metadata service.
        Some("a link-local address (this includes the cloud metadata service)")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("a reserved address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared (carrier-grade NAT) address")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("a reserved address")
    } else {
        None
    }
}

/// Checks a webhook URL as given at submission: parsed, `http(s)`, and every address its host
/// resolves to allowed. The reason is said when it is not.
pub async fn check_url(raw: &str, allow_private: bool) -> Result<Url, String> {
    let raw = raw.trim();
    if raw.len() > 2048 {
        return Err("the webhook URL is longer than 2048 characters".into());
    }
    let url = Url::parse(raw).map_err(|e| format!("the webhook URL is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the webhook URL must be http or https, not {}",
            url.scheme()
        ));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err("the webhook URL has no host".into());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = resolve(host, port).await?;
    if !allow_private {
        for a in &addrs {
            if let Some(why) = forbidden(a.ip()) {
                return Err(format!(
                    "the webhook host {host} resolves to {}, {why}; such addresses are not called",
                    a.ip()
                ));
            }
        }
    }
    Ok(url)
}

/// The addresses of a host (an IP literal is its own address).
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| format!("the webhook host {host} cannot be resolved: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("the webhook host {host} has no address"));
    }
    Ok(addrs)
}

/// The HTTP client's resolver: the SSRF check at connection time, on the very addresses the
/// connection will use (so a name that changes its answer after submission is caught).
pub(crate) struct GuardedResolver {
    pub(crate) allow_private: bool,
}

#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs = resolve(&host, 0).await.map_err(Refused)?;
            if !allow_private {
                for a in &addrs {
                    if let Some(why) = forbidden(a.ip()) {
                        return Err(Box::new(Refused(format!(
                            "refused: {host} resolves to {}, {why}",
                            a.ip()
                        )))
                            as Box<dyn std::error::Error + Send + Sync>);
                    }
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "100.100.100.200",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(forbidden(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["93.184.215.14", "8.8.8.8", "2606:4700::1111"] {
            assert!(forbidden(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_at_submission() {
        let refused = |r: Result<Url, String>| r.unwrap_err();
        assert!(refused(check_url("ftp://example.com/x", false).await).contains("http"));
        assert!(refused(check_url("not a url", false).await).contains("not a URL"));
        assert!(refused(check_url("http://127.0.0.1:9/x", false).await).contains("loopback"));
        assert!(refused(check_url("http://localhost:9/x", false).await).contains("loopback"));
        assert!(refused(check_url("http://[::1]/x", false).await).contains("loopback"));
        assert!(
            refused(check_url("http://169.254.169.254/latest", false).await).contains("metadata")
        );
        assert!(check_url("http://127.0.0.1:9/x", true).await.is_ok());
        assert!(check_url("https://93.184.215.14/hook", false).await.is_ok());
    }
}
