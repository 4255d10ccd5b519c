//! IP allow-lists of secret keys (`allowed_ips`): address blocks in CIDR
//! notation, parsed strictly, and the match against the client's address
//! (`CF-Connecting-IP`, which Cloudflare sets and clients cannot; never a
//! client's own `X-Forwarded-For`).
//!
//! Strict: an address (`198.51.100.7`, a /32 or /128) or `address/prefix`
//! with the prefix in range, no leading zeros, and no bits set past the
//! prefix (`203.0.113.7/24` is a typo for either `203.0.113.0/24` or
//! `203.0.113.7`: refused rather than guessed). An IPv4-mapped IPv6 entry
//! (`::ffff:192.0.2.0/120`) is refused: write it as IPv4. A client address
//! in IPv4-mapped form (`::ffff:192.0.2.7`) is matched as the IPv4 address
//! it is. `0.0.0.0/0` and `::/0` are accepted only as written: a list
//! allowing every address says so.

use std::net::IpAddr;

/// Most entries in one key's `allowed_ips`.
pub const MAX_ENTRIES: usize = 100;

/// An address block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses an entry of `allowed_ips`; the error says why it is refused.
    pub fn parse(s: &str) -> Result<Cidr, &'static str> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| "must be an IPv4 or IPv6 address, optionally /prefix")?;
        if let IpAddr::V6(v6) = addr {
            if v6.to_ipv4_mapped().is_some() {
                return Err("must not be an IPv4-mapped IPv6 address: write the IPv4 address");
            }
        }
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                let digits = (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
                if !digits || (p.len() > 1 && p.starts_with('0')) {
                    return Err("the prefix length must be a number without leading zeros");
                }
                p.parse::<u8>().ok().filter(|&n| n <= max).ok_or("the prefix length is out of range")?
            }
        };
        let c = Cidr { addr, prefix };
        if c.network_bits() != bits(addr) {
            return Err("has bits set past its prefix length (write the block's first address)");
        }
        Ok(c)
    }

    fn network_bits(&self) -> u128 {
        mask(bits(self.addr), self.prefix, self.addr.is_ipv4())
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address as its
    /// IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && mask(bits(ip), self.prefix, ip.is_ipv4()) == self.network_bits()
    }
}

impl Cidr {
    /// Whether every address of this block is in `outer`.
    pub fn within(&self, outer: &Cidr) -> bool {
        self.addr.is_ipv4() == outer.addr.is_ipv4() && self.prefix >= outer.prefix && outer.contains(self.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(bits: u128, prefix: u8, v4: bool) -> u128 {
    let width = if v4 { 32 } else { 128 };
    let host = width - u32::from(prefix);
    if host >= 128 {
        0
    } else {
        bits >> host << host
    }
}

/// Whether a key with `allowed` (none: every address) admits a client at
/// `client_ip` (the canonical text of [`crate::cors::client_ip`], or
/// `unknown`: then only a list that allows every address admits it).
pub fn allows(allowed: &[Cidr], client_ip: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match client_ip.parse::<IpAddr>() {
        Ok(ip) => allowed.iter().any(|c| c.contains(ip)),
        Err(_) => allowed.iter().any(|c| c.prefix == 0),
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn entries_are_parsed_strictly() {
        for ok in [
            "203.0.113.0/24",
            "198.51.100.7",
            "198.51.100.7/32",
            "2001:db8::/48",
            "2001:db8::1",
            "0.0.0.0/0",
            "::/0",
            "10.0.0.0/8",
        ] {
            c(ok);
        }
        assert_eq!(c("198.51.100.7").to_string(), "198.51.100.7/32");
        assert_eq!(c("2001:DB8::/48").to_string(), "2001:db8::/48");
        for bad in [
            "203.0.113.7/24",
            "2001:db8::1/48",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/08",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "010.0.0.0/8",
            "10.0.0/8",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "::ffff:192.0.2.0/120",
            "::ffff:192.0.2.7",
            "",
            "/0",
            "example.com",
            "0.0.0.0/0/0",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn matching() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c("203.0.113.0/24").contains(ip("203.0.113.255")));
        assert!(!c("203.0.113.0/24").contains(ip("203.0.114.0")));
        assert!(c("198.51.100.7").contains(ip("198.51.100.7")));
        assert!(!c("198.51.100.7").contains(ip("198.51.100.8")));
        assert!(c("2001:db8::/48").contains(ip("2001:db8:0:ffff::1")));
        assert!(!c("2001:db8::/48").contains(ip("2001:db8:1::1")));
        // An IPv4-mapped client is its IPv4 address; v4 and v6 never mix.
        assert!(c("203.0.113.0/24").contains(ip("::ffff:203.0.113.9")));
        assert!(!c("::/0").contains(ip("203.0.113.9")));
        assert!(!c("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(c("0.0.0.0/0").contains(ip("::ffff:203.0.113.9")));
        let list = [c("203.0.113.0/24"), c("2001:db8::/48")];
        assert!(allows(&list, "203.0.113.4"));
        assert!(allows(&list, "2001:db8::7"));
        assert!(!allows(&list, "198.51.100.1"));
        assert!(!allows(&list, "unknown"), "an unknown client is not in a list");
        assert!(allows(&[c("0.0.0.0/0")], "unknown"), "unless the list allows every address");
        assert!(allows(&[], "unknown"), "no list: every address");
    }

    #[test]
    fn blocks_within_blocks() {
        assert!(c("203.0.113.0/25").within(&c("203.0.113.0/24")));
        assert!(c("203.0.113.7").within(&c("203.0.113.0/24")));
        assert!(!c("203.0.112.0/23").within(&c("203.0.113.0/24")));
        assert!(!c("198.51.100.0/24").within(&c("203.0.113.0/24")));
        assert!(c("2001:db8:1::/48").within(&c("2001:db8::/32")));
        assert!(!c("::/0").within(&c("0.0.0.0/0")));
    }

    #[test]
    fn records_round_trip_and_refuse_what_parse_refuses() {
        let v: Vec<Cidr> = serde_json::from_str(r#"["203.0.113.0/24","2001:db8::1"]"#).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"["203.0.113.0/24","2001:db8::1/128"]"#);
        assert!(serde_json::from_str::<Vec<Cidr>>(r#"["203.0.113.7/24"]"#).is_err());
    }
}
