//! Identifiers and timestamps, from randomness and time passed in.

/// Crockford base32, as ULIDs use.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID: 48 bits of milliseconds and 80 random bits, 26 characters,
/// lexicographically ordered by creation time.
pub fn ulid(now_ms: i64, random: &[u8; 10]) -> String {
    let mut v: u128 = (u128::from(now_ms.max(0) as u64) & 0xFFFF_FFFF_FFFF) << 80;
    for (i, b) in random.iter().enumerate() {
        v |= u128::from(*b) << (72 - 8 * i);
    }
    (0..26).map(|i| CROCKFORD[((v >> (125 - 5 * i)) & 0x1f) as usize] as char).collect()
}

/// Whether `s` looks like a ULID (26 Crockford base32 characters).
pub fn is_ulid(s: &str) -> bool {
    s.len() == 26 && s.bytes().all(|b| CROCKFORD.contains(&b)) && s.as_bytes()[0] <= b'7'
}

/// A request id: `req_` and 24 hex characters (96 random bits).
pub fn request_id(random: &[u8; 12]) -> String {
    format!("req_{}", crate::hex(random))
}

/// Whether `s` is an acceptable org or user id: 1–64 of `[A-Za-z0-9_-]`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Formats Unix milliseconds as RFC 3339 with second precision and an
/// explicit `+00:00` offset, as the reference docs show
/// (`2026-05-02T10:00:00+00:00`).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00", sod / 3600, (sod % 3600) / 60, sod % 60)
}

/// Parses an RFC 3339 timestamp (`2026-05-02T10:00:00Z`,
/// `…T10:00:00.123+02:00`) to Unix milliseconds. Strict: four-digit year,
/// `T` separator, an offset; fractions are truncated to milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3600 + mi * 60 + se - offset_secs) * 1000 + millis)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-calendar algorithms (public domain).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_sort_by_time_and_round_trip_shape() {
        let a = ulid(1_700_000_000_000, &[0xff; 10]);
        let b = ulid(1_700_000_000_001, &[0; 10]);
        assert_eq!(a.len(), 26);
        assert!(a < b);
        assert!(is_ulid(&a) && is_ulid(&b));
        assert_eq!(ulid(0, &[0; 10]), "00000000000000000000000000");
        assert_eq!(ulid(0xFFFF_FFFF_FFFF, &[0xff; 10]), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        assert!(!is_ulid("8ZZZZZZZZZZZZZZZZZZZZZZZZZ"));
        assert!(!is_ulid("01JQKEY00000000000000000I0"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(rfc3339(1_777_716_000_000), "2026-05-02T10:00:00+00:00");
        assert_eq!(parse_rfc3339("2026-05-02T10:00:00+00:00"), Some(1_777_716_000_000));
        assert_eq!(parse_rfc3339("2026-05-02T10:00:00Z"), Some(1_777_716_000_000));
        assert_eq!(parse_rfc3339("2026-05-02T12:00:00.5+02:00"), Some(1_777_716_000_500));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z").map(rfc3339).as_deref(), Some("2024-02-29T00:00:00+00:00"));
        for bad in [
            "",
            "2026-05-02",
            "2026-05-02 10:00:00Z",
            "2026-13-02T10:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-05-02T24:00:00Z",
            "2026-05-02T10:00:00",
            "2026-05-02T10:00:00+0000",
            "2026-05-02T10:00:00.Z",
            "+026-05-02T10:00:00Z",
            "2026-05-02T10:00:00Zjunk",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        for ms in [0, 951_782_400_000, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("org_demo-1"));
        for bad in ["", "a b", "a/b", "ä", &"a".repeat(65)] {
            assert!(!is_valid_id(bad), "{bad}");
        }
        assert_eq!(request_id(&[0xab; 12]), "req_abababababababababababab");
    }
}
