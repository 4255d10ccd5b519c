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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
        let addr = parse_ip(addr).ok_or("must be an IPv4 or IPv6 address, optionally /prefix")?;
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
        let mut out = ip_text(self.addr);
        out.push('/');
        push_decimal(&mut out, u32::from(self.prefix));
        f.write_str(&out)
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
    match parse_ip(client_ip) {
        Some(ip) => allowed.iter().any(|c| c.contains(ip)),
        None => allowed.iter().any(|c| c.prefix == 0),
    }
}

// Addresses parsed and written as `std` does (`str::parse::<IpAddr>`,
// `Display`), word for word (the tests below compare them over many
// inputs), in a fraction of the wasm of `core::net`'s parser and formatter.

/// An IPv4 or IPv6 address, as `s.parse::<IpAddr>()` reads it.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let b = s.as_bytes();
    let mut p = 0;
    if let Some(v4) = read_ipv4(b, &mut p) {
        return (p == b.len()).then_some(IpAddr::V4(v4));
    }
    parse_ipv6(s).map(IpAddr::V6)
}

/// An IPv6 address, as `s.parse::<Ipv6Addr>()` reads it.
pub fn parse_ipv6(s: &str) -> Option<Ipv6Addr> {
    let b = s.as_bytes();
    let mut p = 0;
    let mut head = [0u16; 8];
    let (head_size, head_ipv4) = read_groups(b, &mut p, &mut head);
    if head_size < 8 {
        // An IPv4 part only at the end, and `::` for one or more zero groups.
        if head_ipv4 || b.get(p..p + 2) != Some(b"::") {
            return None;
        }
        p += 2;
        let mut tail = [0u16; 7];
        let (tail_size, _) = read_groups(b, &mut p, &mut tail[..7 - head_size]);
        head[8 - tail_size..].copy_from_slice(&tail[..tail_size]);
    }
    (p == b.len()).then(|| Ipv6Addr::from(head))
}

/// A number of at most `max_digits` digits in `radix` (no leading zero in
/// decimal), at most `max`; `p` moves past it only when it is one.
fn read_number(b: &[u8], p: &mut usize, radix: u32, max_digits: usize, max: u32) -> Option<u32> {
    let digits = b[*p..].iter().take_while(|c| char::from(**c).is_digit(radix)).count();
    let run = &b[*p..*p + digits];
    if digits == 0 || digits > max_digits || (radix == 10 && digits > 1 && run[0] == b'0') {
        return None;
    }
    let n = run.iter().fold(0, |n, c| n * radix + char::from(*c).to_digit(radix).unwrap_or(0));
    if n > max {
        return None;
    }
    *p += digits;
    Some(n)
}

/// Four decimal octets separated by dots; `p` moves only past a whole one.
fn read_ipv4(b: &[u8], p: &mut usize) -> Option<Ipv4Addr> {
    let mut at = *p;
    let mut octets = [0u8; 4];
    for (i, o) in octets.iter_mut().enumerate() {
        if i > 0 {
            if b.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
        *o = read_number(b, &mut at, 10, 3, 255)? as u8;
    }
    *p = at;
    Some(Ipv4Addr::from(octets))
}

/// Colon-separated groups into `groups` (an IPv4 address may end them when
/// two groups are left); how many were read and whether an IPv4 address
/// ended them. A separator is consumed only with the group after it.
fn read_groups(b: &[u8], p: &mut usize, groups: &mut [u16]) -> (usize, bool) {
    let limit = groups.len();
    for i in 0..limit {
        let mut at = *p;
        if i > 0 {
            if b.get(at) != Some(&b':') {
                return (i, false);
            }
            at += 1;
        }
        if i + 1 < limit {
            if let Some(v4) = read_ipv4(b, &mut at) {
                let [a, b2, c, d] = v4.octets();
                groups[i] = u16::from_be_bytes([a, b2]);
                groups[i + 1] = u16::from_be_bytes([c, d]);
                *p = at;
                return (i + 2, true);
            }
        }
        match read_number(b, &mut at, 16, 4, 0xffff) {
            Some(g) => groups[i] = g as u16,
            None => return (i, false),
        }
        *p = at;
    }
    (limit, false)
}

/// An address's text, as its `Display` writes it.
pub fn ip_text(ip: IpAddr) -> String {
    let mut out = String::new();
    match ip {
        IpAddr::V4(v4) => push_ipv4(&mut out, v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                out.push_str("::ffff:");
                push_ipv4(&mut out, v4);
            }
            None => {
                // The longest run of two or more zero groups (the first of
                // equals) is written `::`.
                let g = v6.segments();
                let (mut start, mut len, mut run) = (0, 0, 0);
                for (i, &x) in g.iter().enumerate() {
                    run = if x == 0 { run + 1 } else { 0 };
                    if run > len {
                        (start, len) = (i + 1 - run, run);
                    }
                }
                if len > 1 {
                    push_groups(&mut out, &g[..start]);
                    out.push_str("::");
                    push_groups(&mut out, &g[start + len..]);
                } else {
                    push_groups(&mut out, &g);
                }
            }
        },
    }
    out
}

fn push_ipv4(out: &mut String, v4: Ipv4Addr) {
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_decimal(out, u32::from(o));
    }
}

fn push_groups(out: &mut String, groups: &[u16]) {
    for (i, &x) in groups.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let digits = (1..4).take_while(|k| x >> (4 * k) != 0).count() + 1;
        for k in (0..digits).rev() {
            out.push(char::from(b"0123456789abcdef"[usize::from(x >> (4 * k)) & 0xf]));
        }
    }
}

/// `n` in decimal.
pub fn push_decimal(out: &mut String, n: u32) {
    if n >= 10 {
        push_decimal(out, n / 10);
    }
    out.push(char::from(b'0' + (n % 10) as u8));
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

    /// A small deterministic generator for the comparisons with `std`.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn addresses_parse_as_std_parses_them() {
        let fixed = [
            "",
            ".",
            ":",
            "::",
            ":::",
            "::1",
            "1::",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "1::8",
            "1:2:3:4:5:6::8",
            "::ffff:1.2.3.4",
            "::1.2.3.4",
            "1:2:3:4:5:6:1.2.3.4",
            "1:2:3:4:5:6:7:1.2.3.4",
            "1:2:3:4:5::1.2.3.4",
            "1.2.3.4::",
            "1.2.3.4:1::",
            "::1.2.3.4:5",
            "00000::",
            "0000::",
            "12345::",
            "g::",
            "1.2.3.4",
            "01.2.3.4",
            "0.0.0.0",
            "255.255.255.255",
            "256.0.0.0",
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.04",
            "1..2.3",
            "1.2.3.4 ",
            " 1.2.3.4",
            "+1.2.3.4",
            "1.2.3.-4",
            "::FFFF:A.B.C.D",
            "::FfFf:10.0.0.1",
            "2001:DB8::",
            "2001:db8::1:0:0:1",
            "fe80::1%eth0",
            "1:::2",
            "1::2::3",
            ":1::",
            "::1:",
            "1:2:3:4:5:6:7:8::",
            "::1:2:3:4:5:6:7",
            "::1:2:3:4:5:6:7:8",
            "1.2.3.4/24",
            "1:2:3:4:5:6:7:255.255.255.255",
            "::0.0.0.0",
            "::00.0.0.0",
            "::0.0.0.256",
            "١.2.3.4",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"0123456789abcdefABCDEFg:.::..  ";
        let mut random = Vec::new();
        for _ in 0..200_000 {
            let len = (rng(&mut seed) % 24) as usize;
            let s: String =
                (0..len).map(|_| char::from(alphabet[(rng(&mut seed) % alphabet.len() as u64) as usize])).collect();
            random.push(s);
        }
        // Valid addresses written by std, then mutated by one character.
        for _ in 0..50_000 {
            let r = rng(&mut seed);
            let ip = match r % 4 {
                0 => IpAddr::V4(Ipv4Addr::from(rng(&mut seed) as u32)),
                1 => IpAddr::V6(Ipv6Addr::from(u128::from(rng(&mut seed)) << 64 | u128::from(rng(&mut seed)))),
                2 => IpAddr::V6(Ipv6Addr::from(u128::from(rng(&mut seed) & 0xffff_0000_ffff))),
                _ => IpAddr::V6(Ipv4Addr::from(rng(&mut seed) as u32).to_ipv6_mapped()),
            };
            let mut s = ip.to_string().into_bytes();
            if r & 0x30 != 0 && !s.is_empty() {
                let at = (rng(&mut seed) % s.len() as u64) as usize;
                match r >> 8 & 3 {
                    0 => s[at] = alphabet[(rng(&mut seed) % alphabet.len() as u64) as usize],
                    1 => drop(s.remove(at)),
                    _ => s.insert(at, alphabet[(rng(&mut seed) % alphabet.len() as u64) as usize]),
                }
            }
            random.push(String::from_utf8(s).unwrap());
        }
        for s in fixed.iter().map(|s| s.to_string()).chain(random) {
            assert_eq!(parse_ip(&s), s.parse::<IpAddr>().ok(), "{s:?}");
            assert_eq!(parse_ipv6(&s), s.parse::<Ipv6Addr>().ok(), "{s:?}");
        }
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        for i in 0..200_000u32 {
            let r = u128::from(rng(&mut seed)) << 64 | u128::from(rng(&mut seed));
            // Many zero groups, in runs of every length and place.
            let zeros = u128::from(rng(&mut seed) as u8);
            let mask = (0..8).fold(0u128, |m, k| if zeros >> k & 1 == 1 { m } else { m | 0xffff << (16 * k) });
            let v6 = Ipv6Addr::from(if i % 2 == 0 { r & mask } else { r });
            assert_eq!(ip_text(IpAddr::V6(v6)), v6.to_string());
            let v4 = Ipv4Addr::from(rng(&mut seed) as u32);
            assert_eq!(ip_text(IpAddr::V4(v4)), v4.to_string());
            assert_eq!(ip_text(IpAddr::V6(v4.to_ipv6_mapped())), v4.to_ipv6_mapped().to_string());
            assert_eq!(ip_text(IpAddr::V6(v4.to_ipv6_compatible())), v4.to_ipv6_compatible().to_string());
        }
        for s in ["::", "::1", "1::", "1:0:0:1:0:0:0:1", "1:0:1:0:1:0:1:0", "0:1:0:0:1:0:0:1", "::ffff:0.0.0.0"] {
            let v6: Ipv6Addr = s.parse().unwrap();
            assert_eq!(ip_text(IpAddr::V6(v6)), v6.to_string());
        }
        let mut out = String::new();
        for n in [0, 7, 10, 99, 128, 4_294_967_295] {
            out.clear();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn records_round_trip_and_refuse_what_parse_refuses() {
        let v: Vec<Cidr> = serde_json::from_str(r#"["203.0.113.0/24","2001:db8::1"]"#).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"["203.0.113.0/24","2001:db8::1/128"]"#);
        assert!(serde_json::from_str::<Vec<Cidr>>(r#"["203.0.113.7/24"]"#).is_err());
    }
}
