//! API key format: generate, parse (format and checksum only), hash.
//!
//! A key is `<prefix><30 base62 random chars><6 base62 checksum chars>`, e.g.
//! `kw_live_4pQ…`. The checksum is the CRC32 of the random part (GitHub's
//! scheme): a typo or a truncated key is rejected without any storage read.
//! The random part carries ~178 bits of entropy, drawn by the shell from the
//! platform CSPRNG and passed in.
//!
//! Parsing checks, in order of cost: total length, prefix (bytewise, so
//! unicode look-alikes fail), exact length of the body, charset, checksum.

use sha2::{Digest, Sha256};

/// Length of the random part, in base62 characters.
pub const RANDOM_LEN: usize = 30;
/// Length of the checksum part, in base62 characters (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// Longest prefix a deployment may configure.
pub const MAX_PREFIX_LEN: usize = 32;
/// Random bytes the shell must supply to [`generate`].
pub const RANDOM_BYTES: usize = 32;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// What a key is for. Secret keys are server-to-server only; widget keys are
/// public, for browsers, and origin-restricted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// A server-side secret key.
    Secret,
    /// A public browser widget key.
    Widget,
}

impl KeyKind {
    /// The wire name (`secret` / `widget`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Secret => "secret",
            KeyKind::Widget => "widget",
        }
    }
}

/// The configured key prefixes. They must differ and neither may be a prefix
/// of the other, so a key's kind follows from its prefix alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFormat {
    secret_prefix: String,
    widget_prefix: String,
}

/// Why a prefix configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadPrefix(pub &'static str);

impl TokenFormat {
    /// Validates the prefixes: 1–32 chars of `[a-z0-9_]`, ending in `_`,
    /// neither a prefix of the other.
    pub fn new(secret_prefix: &str, widget_prefix: &str) -> Result<Self, BadPrefix> {
        for p in [secret_prefix, widget_prefix] {
            if p.is_empty() || p.len() > MAX_PREFIX_LEN {
                return Err(BadPrefix("prefix must be 1-32 characters"));
            }
            if !p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                return Err(BadPrefix("prefix may contain only a-z, 0-9 and _"));
            }
            if !p.ends_with('_') {
                return Err(BadPrefix("prefix must end with _"));
            }
        }
        if secret_prefix.starts_with(widget_prefix) || widget_prefix.starts_with(secret_prefix) {
            return Err(BadPrefix("secret and widget prefixes must not overlap"));
        }
        Ok(Self { secret_prefix: secret_prefix.to_owned(), widget_prefix: widget_prefix.to_owned() })
    }

    /// The prefix for keys of `kind`.
    pub fn prefix(&self, kind: KeyKind) -> &str {
        match kind {
            KeyKind::Secret => &self.secret_prefix,
            KeyKind::Widget => &self.widget_prefix,
        }
    }

    /// Longest possible key under this format.
    pub fn max_len(&self) -> usize {
        self.secret_prefix.len().max(self.widget_prefix.len()) + RANDOM_LEN + CHECKSUM_LEN
    }
}

impl Default for TokenFormat {
    fn default() -> Self {
        Self { secret_prefix: "kw_live_".into(), widget_prefix: "kw_pub_".into() }
    }
}

/// A credential that passed the format check. It still may not exist.
/// Its `Debug` never prints the token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ApiKey<'a> {
    token: &'a str,
    kind: KeyKind,
}

impl std::fmt::Debug for ApiKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey").field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// The format check failed. Deliberately carries no detail: all malformed
/// keys are answered alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

impl<'a> ApiKey<'a> {
    /// Parses a presented credential: cheap checks only, no storage.
    pub fn parse(format: &TokenFormat, token: &'a str) -> Result<Self, Malformed> {
        if token.len() > format.max_len() {
            return Err(Malformed);
        }
        let (kind, body) = if let Some(b) = token.strip_prefix(format.secret_prefix.as_str()) {
            (KeyKind::Secret, b)
        } else if let Some(b) = token.strip_prefix(format.widget_prefix.as_str()) {
            (KeyKind::Widget, b)
        } else {
            return Err(Malformed);
        };
        if body.len() != RANDOM_LEN + CHECKSUM_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Malformed);
        }
        let (random, check) = body.split_at(RANDOM_LEN);
        if checksum(random).as_bytes() != check.as_bytes() {
            return Err(Malformed);
        }
        Ok(Self { token, kind })
    }

    /// The kind, from the prefix.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// SHA-256 of the whole token: the only form in which keys are stored.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.token)
    }

    /// The last four characters (safe to show: part of the checksum).
    pub fn last_four(&self) -> &'a str {
        &self.token[self.token.len() - 4..]
    }
}

/// SHA-256 of a full token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a token.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Lowercase hex, as used in KV keys (`key:<hex>`).
    pub fn to_hex(&self) -> String {
        crate::hex(&self.0)
    }

    /// The KV key of the key record, `key:<hex>`, built in one allocation.
    pub fn kv_key(&self) -> String {
        let mut s = String::with_capacity(4 + 64);
        s.push_str("key:");
        crate::hex_into(&mut s, &self.0);
        s
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({})", self.to_hex())
    }
}

/// A freshly generated key. The plaintext leaves keyward once, in the create
/// response; `Debug` does not print it.
pub struct NewKey {
    /// The full token (shown once).
    pub plaintext: String,
    /// Its hash (stored).
    pub hash: KeyHash,
    /// The prefix used.
    pub prefix: String,
    /// The last four characters.
    pub last_four: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("hash", &self.hash).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// Generates a key of `kind` from 32 bytes of CSPRNG output.
///
/// The bytes are read as one 256-bit number and its lowest 30 base62 digits
/// form the random part; the modulo bias is below 2^-77.
pub fn generate(format: &TokenFormat, kind: KeyKind, random: &[u8; RANDOM_BYTES]) -> NewKey {
    let mut n = *random;
    let mut digits = [0u8; RANDOM_LEN];
    for d in digits.iter_mut().rev() {
        // Long division of the big-endian number by 62.
        let mut rem: u32 = 0;
        for byte in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*byte);
            *byte = (cur / 62) as u8;
            rem = cur % 62;
        }
        *d = ALPHABET[rem as usize];
    }
    // The digits come from ALPHABET, which is ASCII.
    let random_part: String = digits.iter().map(|&b| b as char).collect();
    let prefix = format.prefix(kind).to_owned();
    let plaintext = format!("{prefix}{random_part}{}", checksum(&random_part));
    let hash = KeyHash::of(&plaintext);
    let last_four = plaintext[plaintext.len() - 4..].to_owned();
    NewKey { plaintext, hash, prefix, last_four }
}

/// CRC32 of the random part, as 6 base62 digits (zero-padded).
fn checksum(random: &str) -> String {
    let mut v = crc32(random.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for d in out.iter_mut().rev() {
        *d = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
    out.iter().map(|&b| b as char).collect()
}

/// CRC-32 (IEEE 802.3, as zlib and GitHub's token checksums compute it),
/// bit by bit: for the 30 bytes of a key, a table-driven CRC's speed is
/// not needed, and its tables are 16 KB of data in the wasm (incompressible:
/// about 16 KB more to ship).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_standard_one() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926, "the CRC-32 check value");
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            assert_eq!(crc32(&bytes), crc32fast::hash(&bytes), "{bytes:?}");
        }
    }

    fn fmt() -> TokenFormat {
        TokenFormat::default()
    }

    #[test]
    fn generated_keys_parse_back() {
        for seed in 0..=255u8 {
            let k = generate(&fmt(), KeyKind::Secret, &[seed; 32]);
            assert!(k.plaintext.starts_with("kw_live_"));
            assert_eq!(k.plaintext.len(), 8 + 36);
            let parsed = ApiKey::parse(&fmt(), &k.plaintext).unwrap();
            assert_eq!(parsed.kind(), KeyKind::Secret);
            assert_eq!(parsed.hash(), k.hash);
            assert_eq!(parsed.last_four(), k.last_four);
        }
        let w = generate(&fmt(), KeyKind::Widget, &[7; 32]);
        assert_eq!(ApiKey::parse(&fmt(), &w.plaintext).unwrap().kind(), KeyKind::Widget);
    }

    #[test]
    fn distinct_randomness_gives_distinct_keys() {
        let a = generate(&fmt(), KeyKind::Secret, &[1; 32]).plaintext;
        let mut r = [1; 32];
        r[31] = 2;
        let b = generate(&fmt(), KeyKind::Secret, &r).plaintext;
        assert_ne!(a, b);
    }

    #[test]
    fn any_single_character_change_is_rejected() {
        let k = generate(&fmt(), KeyKind::Secret, &[42; 32]).plaintext;
        let p = "kw_live_".len();
        for i in p..k.len() {
            for c in ['0', 'a', 'Z', 'q'] {
                let mut t: Vec<char> = k.chars().collect();
                if t[i] == c {
                    continue;
                }
                t[i] = c;
                let t: String = t.into_iter().collect();
                assert_eq!(ApiKey::parse(&fmt(), &t), Err(Malformed), "accepted {t}");
            }
        }
    }

    #[test]
    fn malformed_inputs() {
        let k = generate(&fmt(), KeyKind::Secret, &[9; 32]).plaintext;
        let body = &k[8..];
        let cases = [
            String::new(),
            "kw_live_".into(),
            k[..k.len() - 1].into(),
            format!("{k}0"),
            format!("KW_LIVE_{body}"),
            format!("kw_test_{body}"),
            // Cyrillic 'к' (U+043A) look-alike in the prefix.
            format!("\u{043a}w_live_{body}"),
            format!("kw_live_{}", &body.replace(|_: char| true, "é")[..36]),
            format!(" {k}"),
            format!("{k}\0"),
            "x".repeat(10_000),
        ];
        for c in cases {
            assert_eq!(ApiKey::parse(&fmt(), &c), Err(Malformed), "accepted {c:?}");
        }
    }

    #[test]
    fn hash_is_sha256_hex() {
        // sha256("abc")
        assert_eq!(KeyHash::of("abc").to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(KeyHash::of("abc").kv_key(), "key:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(crate::hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(crate::hex(&[0x5a; 40]), "5a".repeat(40));
    }

    #[test]
    fn prefix_validation() {
        assert!(TokenFormat::new("kw_live_", "kw_pub_").is_ok());
        assert!(TokenFormat::new("kw_", "kw_pub_").is_err());
        assert!(TokenFormat::new("kw_live_", "kw_live_").is_err());
        assert!(TokenFormat::new("KW_", "kw_pub_").is_err());
        assert!(TokenFormat::new("kw", "kw_pub_").is_err());
        assert!(TokenFormat::new("", "kw_pub_").is_err());
    }

    #[test]
    fn debug_never_prints_the_token() {
        let k = generate(&fmt(), KeyKind::Secret, &[3; 32]);
        assert!(!format!("{k:?}").contains(&k.plaintext[8..]));
        let p = ApiKey::parse(&fmt(), &k.plaintext).unwrap();
        assert!(!format!("{p:?}").contains(&k.plaintext[8..]));
    }
}
