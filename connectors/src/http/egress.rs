//! Outbound requests (webhooks, HTTP service tasks, instance callbacks) may
//! only reach public addresses: loopback, private, link-local, multicast,
//! unspecified and other non-public ranges are refused unless the
//! `[egress] allow` list names them.
//!
//! The check holds where it matters, at connection time: the HTTP client
//! resolves names through [`EgressPolicy`] and connects only to addresses that
//! passed (a name that resolves to a refused address is refused as a whole, so
//! a DNS answer that changes between check and use gains nothing), and every
//! redirect target is checked before it is followed. Registration endpoints
//! check the same way up front ([`EgressPolicy::check_url`]) so a bad URL is a
//! 400 naming the field rather than a failed delivery later.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use url::{Host, Url};

/// `[egress]`: what outbound requests may reach besides public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Addresses (`127.0.0.1`, `::1`), networks (`10.0.0.0/8`, `fd00::/8`) or
    /// host names (`hooks.internal`, exact, case-insensitive) that outbound
    /// requests may reach even though they are not public.
    pub allow: Vec<String>,
}

/// Why an outbound destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// Stable reason code: `non_public_address`, `unresolvable_host`, `invalid_url`.
    pub code: &'static str,
    /// What was refused and why, naming the address.
    pub message: String,
}

impl Refused {
    fn address(host: &str, ip: IpAddr, kind: &str) -> Self {
        let what = if host == ip.to_string() { format!("{ip}") } else { format!("{host} resolves to {ip}, which") };
        Self {
            code: "non_public_address",
            message: format!(
                "{what} is a {kind} address; outbound requests reach only public addresses unless [egress] allow names it"
            ),
        }
    }
}

/// The checked allowlist.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    nets: Vec<(IpAddr, u8)>,
    hosts: Vec<String>,
}

impl EgressPolicy {
    /// Parses the allowlist; an entry that is neither an address, a network
    /// nor a host name is an error naming it.
    pub fn new(cfg: &EgressConfig) -> Result<Self, String> {
        let mut policy = Self::default();
        for entry in &cfg.allow {
            let e = entry.trim();
            if let Some((addr, bits)) = e.split_once('/') {
                let ip: IpAddr = addr.parse().map_err(|_| format!("egress.allow: '{entry}' is not a network"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits: u8 = bits
                    .parse()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("egress.allow: '{entry}' has a prefix length outside 0-{max}"))?;
                policy.nets.push((ip, bits));
            } else if let Ok(ip) = e.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                policy.nets.push((ip, if ip.is_ipv4() { 32 } else { 128 }));
            } else if !e.is_empty()
                && e.len() <= 253
                && e.split('.')
                    .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            {
                policy.hosts.push(e.to_ascii_lowercase());
            } else {
                return Err(format!("egress.allow: '{entry}' is neither an address, a network nor a host name"));
            }
        }
        Ok(policy)
    }

    /// Whether `ip` is in an allowed network.
    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|(net, bits)| in_network(ip, *net, *bits))
    }

    /// Whether `host` (a name) is allowed by name.
    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// `Err` when `ip`, reached as `host`, is refused.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        match non_public(ip) {
            Some(kind) if !self.allows_ip(ip) => Err(Refused::address(host, ip, kind)),
            _ => Ok(()),
        }
    }

    /// Checks what can be checked without DNS: the scheme, and the host when
    /// it is an address. `Ok(Some(name))` when the host is a name still to resolve.
    pub fn check_literal<'u>(&self, url: &'u Url) -> Result<Option<&'u str>, Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused { code: "invalid_url", message: format!("{url}: only http and https are allowed") });
        }
        match url.host() {
            None => Err(Refused { code: "invalid_url", message: format!("{url}: no host") }),
            Some(Host::Ipv4(ip)) => self.check_ip(&ip.to_string(), IpAddr::V4(ip)).map(|()| None),
            Some(Host::Ipv6(ip)) => self.check_ip(&ip.to_string(), IpAddr::V6(ip)).map(|()| None),
            Some(Host::Domain(name)) => Ok(Some(name)),
        }
    }

    /// Resolves `host` and checks every address it resolves to (an allowed
    /// name passes as it resolves). The addresses to connect to.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Refused { code: "unresolvable_host", message: format!("{host} does not resolve: {e}") })?
            .collect();
        if addrs.is_empty() {
            return Err(Refused { code: "unresolvable_host", message: format!("{host} resolves to no address") });
        }
        if !self.allows_host(host) {
            for a in &addrs {
                self.check_ip(host, a.ip())?;
            }
        }
        Ok(addrs)
    }

    /// The registration-time check of a URL someone asks us to call later.
    pub async fn check_url(&self, url: &str) -> Result<(), Refused> {
        let parsed = Url::parse(url)
            .map_err(|e| Refused { code: "invalid_url", message: format!("{url}: not an absolute URL: {e}") })?;
        if let Some(name) = self.check_literal(&parsed)? {
            self.resolve(name, parsed.port_or_known_default().unwrap_or(80)).await?;
        }
        Ok(())
    }

    /// A client builder that resolves through this policy, checks every
    /// redirect (at most 10) and ignores proxy environment variables (a proxy
    /// would make the connection, and its address, not ours to check).
    pub fn client(self: &Arc<Self>) -> reqwest::ClientBuilder {
        let redirects = self.clone();
        reqwest::Client::builder().no_proxy().dns_resolver(Arc::new(Resolver(self.clone()))).redirect(
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 10 {
                    return attempt.error("more than 10 redirects");
                }
                match redirects.check_literal(attempt.url()) {
                    Ok(_) => attempt.follow(),
                    Err(refused) => attempt.error(refused),
                }
            }),
        )
    }
}

/// The client's resolver.
struct Resolver(Arc<EgressPolicy>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs = policy.resolve(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The first refusal in an outbound request error's chain, if that is what
/// made it fail (reqwest wraps the resolver's and redirect policy's errors).
pub fn refusal<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e Refused> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// An error with its causes, `a: b: c` (reqwest's own message leaves them out).
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = err.source();
    }
    out
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        // An IPv4 address written as IPv6 (::ffff:a.b.c.d) matches IPv4 networks.
        (IpAddr::V6(a), IpAddr::V4(_)) => a.to_ipv4_mapped().is_some_and(|v4| in_network(IpAddr::V4(v4), net, bits)),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// What kind of non-public address `ip` is (`None`: public).
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_broadcast() || a >= 240 {
        "reserved"
    } else if a == 100 && (64..128).contains(&b) {
        "shared (carrier-grade NAT)"
    } else if a == 198 && (b == 18 || b == 19) {
        "benchmarking"
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        "IETF protocol assignments"
    } else if ip.is_documentation() {
        "documentation"
    } else {
        return None;
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // IPv4 carried in IPv6: judged as the IPv4 address it reaches.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return non_public_v4(embedded(s[6], s[7])); // NAT64
    }
    if s[0] == 0x2002 {
        return non_public_v4(embedded(s[1], s[2])); // 6to4
    }
    Some(if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if s[..6] == [0, 0, 0, 0, 0, 0] {
        "IPv4-compatible (deprecated)"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_unicast_link_local() || s[0] & 0xffc0 == 0xfec0 {
        "link-local"
    } else if ip.is_unique_local() {
        "private"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "documentation"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> EgressPolicy {
        EgressPolicy::new(&EgressConfig { allow: allow.iter().map(|s| (*s).to_owned()).collect() }).expect("policy")
    }

    #[test]
    fn non_public_ranges_are_named_and_public_ones_pass() {
        let cases = [
            ("127.0.0.1", Some("loopback")),
            ("10.0.0.1", Some("private")),
            ("172.16.5.4", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("224.0.0.1", Some("multicast")),
            ("0.0.0.0", Some("unspecified")),
            ("100.64.0.1", Some("shared (carrier-grade NAT)")),
            ("255.255.255.255", Some("reserved")),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fe80::1", Some("link-local")),
            ("fd00::1", Some("private")),
            ("ff02::1", Some("multicast")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("64:ff9b::a00:1", Some("private")),
            ("2002:a9fe:a9fe::1", Some("link-local")),
            ("93.184.215.14", None),
            ("8.8.8.8", None),
            ("2606:4700:4700::1111", None),
            ("::ffff:8.8.8.8", None),
        ];
        for (ip, want) in cases {
            assert_eq!(non_public(ip.parse().expect(ip)), want, "{ip}");
        }
    }

    #[test]
    fn urls_with_refused_addresses_are_refused_unless_allowlisted() {
        let strict = policy(&[]);
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:9000/x",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
        ] {
            let u = Url::parse(url).expect(url);
            let e = strict.check_literal(&u).expect_err(url);
            assert_eq!(e.code, "non_public_address", "{url}");
        }
        let refused = strict.check_literal(&Url::parse("http://169.254.169.254/").expect("url")).expect_err("refused");
        assert!(refused.message.contains("169.254.169.254 is a link-local address"), "{}", refused.message);
        assert_eq!(strict.check_literal(&Url::parse("https://93.184.215.14/x").expect("url")), Ok(None));
        assert_eq!(
            strict.check_literal(&Url::parse("https://hooks.example.com/x").expect("url")),
            Ok(Some("hooks.example.com"))
        );
        assert_eq!(
            strict.check_literal(&Url::parse("ftp://93.184.215.14/").expect("url")).expect_err("scheme").code,
            "invalid_url"
        );

        let local = policy(&["127.0.0.1", "10.1.0.0/16", "::1", "Hooks.Internal"]);
        assert!(local.check_literal(&Url::parse("http://127.0.0.1:8080/").expect("url")).is_ok());
        assert!(local.check_literal(&Url::parse("http://[::ffff:127.0.0.1]/").expect("url")).is_ok());
        assert!(local.check_literal(&Url::parse("http://[::1]/").expect("url")).is_ok());
        assert!(local.check_literal(&Url::parse("http://10.1.200.3/").expect("url")).is_ok());
        assert!(local.check_literal(&Url::parse("http://10.2.0.1/").expect("url")).is_err(), "outside the network");
        assert!(local.check_literal(&Url::parse("http://127.0.0.2/").expect("url")).is_err(), "only the address named");
        assert!(local.allows_host("hooks.internal.") && !local.allows_host("evil.hooks.internal"));
    }

    #[test]
    fn allowlist_entries_are_checked() {
        for bad in ["10.0.0.0/33", "::/129", "not a host", "a..b", "x/8"] {
            assert!(EgressPolicy::new(&EgressConfig { allow: vec![bad.into()] }).is_err(), "{bad}");
        }
        assert!(EgressPolicy::new(&EgressConfig { allow: vec!["0.0.0.0/0".into(), "[::1]".into()] }).is_ok());
    }

    #[tokio::test]
    async fn the_client_checks_names_when_it_connects_and_every_redirect() {
        use axum::response::Redirect;
        let app = axum::Router::new()
            .route("/ok", axum::routing::get(|| async { "ok" }))
            .route("/to-ok", axum::routing::get(|| async { Redirect::temporary("/ok") }))
            .route(
                "/to-metadata",
                axum::routing::get(|| async { Redirect::temporary("http://169.254.169.254/latest/") }),
            )
            .route("/to-localhost", axum::routing::get(|| async { Redirect::temporary("http://localhost:9/") }));
        // The peer on 127.0.0.2 (all of 127/8 is loopback), allowed alone:
        // localhost (127.0.0.1) is not.
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let allowed = Arc::new(policy(&["127.0.0.2"]));
        let client = allowed.client().build().expect("client");
        let ok = client.get(format!("{base}/to-ok")).send().await.expect("an allowed redirect is followed");
        assert_eq!(ok.text().await.expect("body"), "ok");
        for path in ["/to-metadata", "/to-localhost"] {
            let e = client.get(format!("{base}{path}")).send().await.expect_err(path);
            let r = refusal(&e).unwrap_or_else(|| panic!("{path}: not a refusal: {}", with_causes(&e)));
            assert_eq!(r.code, "non_public_address", "{path}");
        }
        let strict = Arc::new(policy(&[])).client().build().expect("client");
        let e = strict.get("http://localhost:9/").send().await.expect_err("a name resolving to loopback");
        assert!(refusal(&e).is_some_and(|r| r.message.starts_with("localhost resolves to ")), "{}", with_causes(&e));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_unless_allowlisted_by_name_or_address() {
        let e = policy(&[]).check_url("http://localhost:9/hook").await.expect_err("localhost");
        assert_eq!(e.code, "non_public_address");
        assert!(e.message.starts_with("localhost resolves to "), "{}", e.message);
        assert!(policy(&["localhost"]).check_url("http://localhost:9/hook").await.is_ok());
        assert!(policy(&["127.0.0.0/8", "::1"]).check_url("http://localhost:9/hook").await.is_ok());
        let e = policy(&[]).check_url("http://no-such-host.invalid/").await.expect_err("unresolvable");
        assert_eq!(e.code, "unresolvable_host");
    }
}
