//! Where webhooks may not go (SSRF guard): addresses inside the deployment's
//! network. The api checks a webhook URL's host when an endpoint is created;
//! the webhook-dispatcher checks every address again when it connects (its DNS
//! resolver refuses them), so a name that later resolves inside (DNS
//! rebinding) is still refused. Dev mode skips both.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The rule an address breaks, or None when it is a public address.
pub fn forbidden_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        // 169.254.0.0/16 holds the cloud metadata services (169.254.169.254).
        Some("link-local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("CGNAT")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || a >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) reach IPv4 hosts.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let segments = ip.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return forbidden_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if segments[0] & 0xfe00 == 0xfc00 {
        Some("private")
    } else if segments[0] & 0xffc0 == 0xfe80 || segments[0] & 0xffc0 == 0xfec0 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

/// Why a host is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostRefused {
    #[error("{host} is a {rule} address; webhooks go only to public addresses")]
    Literal { host: String, rule: &'static str },
    #[error("{host} resolves to {ip}, a {rule} address; webhooks go only to public addresses")]
    Resolved {
        host: String,
        ip: IpAddr,
        rule: &'static str,
    },
    #[error("{host} does not resolve: {reason}")]
    Unresolvable { host: String, reason: String },
}

/// Parses a URL host as an IP literal (`[::1]` included).
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Checks a host that is an IP literal, without DNS; None when it is a name.
pub fn check_literal(host: &str) -> Option<Result<(), HostRefused>> {
    let ip = ip_literal(host)?;
    Some(match forbidden_ip(ip) {
        Some(rule) => Err(HostRefused::Literal {
            host: host.to_owned(),
            rule,
        }),
        None => Ok(()),
    })
}

/// Refuses a host that is, or resolves to, any non-public address.
pub async fn check_host(host: &str, port: u16) -> Result<(), HostRefused> {
    if let Some(checked) = check_literal(host) {
        return checked;
    }
    let addresses = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| HostRefused::Unresolvable {
            host: host.to_owned(),
            reason: error.to_string(),
        })?;
    check_resolved(host, addresses.map(|address| address.ip()))
}

/// Refuses when any of `addresses` is non-public (or there are none).
pub fn check_resolved(
    host: &str,
    addresses: impl IntoIterator<Item = IpAddr>,
) -> Result<(), HostRefused> {
    let mut any = false;
    for ip in addresses {
        any = true;
        if let Some(rule) = forbidden_ip(ip) {
            return Err(HostRefused::Resolved {
                host: host.to_owned(),
                ip,
                rule,
            });
        }
    }
    if any {
        Ok(())
    } else {
        Err(HostRefused::Unresolvable {
            host: host.to_owned(),
            reason: "no addresses".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(ip: &str) -> Option<&'static str> {
        forbidden_ip(ip.parse().expect("valid ip"))
    }

    #[test]
    fn internal_addresses_are_refused_with_their_rule() {
        for (ip, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "private"),
            ("fd00:ec2::254", "private"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            assert_eq!(rule(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(rule(ip), None, "{ip}");
        }
    }

    #[tokio::test]
    async fn hosts_are_checked_literally_and_after_resolution() {
        let refused = check_host("127.0.0.1", 443).await.unwrap_err();
        assert!(refused.to_string().contains("loopback"), "{refused}");
        assert!(matches!(
            check_host("[::1]", 443).await,
            Err(HostRefused::Literal {
                rule: "loopback",
                ..
            })
        ));
        assert!(check_host("93.184.215.14", 443).await.is_ok());
        let refused = check_host("localhost", 443).await.unwrap_err();
        assert!(
            matches!(
                refused,
                HostRefused::Resolved {
                    rule: "loopback",
                    ..
                }
            ),
            "{refused:?}"
        );
        let ips: [IpAddr; 2] = ["8.8.8.8".parse().unwrap(), "10.0.0.1".parse().unwrap()];
        assert!(matches!(
            check_resolved("mixed.example", ips),
            Err(HostRefused::Resolved {
                rule: "private",
                ..
            })
        ));
    }
}
