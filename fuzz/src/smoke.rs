//! A deterministic stand-in for the fuzzer, on stable Rust: a target's
//! seeds, then mutations of them (bit flips, byte changes, dictionary
//! tokens inserted, ranges deleted or repeated, two seeds spliced, random
//! bytes), from a fixed PRNG seed, so every run checks the same inputs.

use std::path::Path;

/// splitmix64: small, fixed, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The files of a directory, sorted by name (none if it does not exist).
pub fn read_dir(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// The tokens of a libFuzzer dictionary (`name="value"` or `"value"` lines,
/// `\\`, `\"` and `\xNN` escapes; `#` comments).
pub fn read_dict(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(dict_token).collect()
}

fn dict_token(line: &str) -> Option<Vec<u8>> {
    let line = line.trim();
    if line.starts_with('#') {
        return None;
    }
    let start = line.find('"')? + 1;
    let end = line.rfind('"')?;
    if end < start {
        return None;
    }
    let b = &line.as_bytes()[start..end];
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'x')) => {
                let v = b.get(i + 2..i + 4).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
                out.push(v?);
                i += 4;
            }
            (b'\\', Some(&c)) => {
                out.push(c);
                i += 2;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// One mutant of `input`: one to four stacked mutations.
pub fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>], dict: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next_u64() as u8;
            }
            2 | 3 if !dict.is_empty() => {
                let t = &dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                v.splice(at..at, t.iter().copied());
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                v.drain(at..at + n);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                let piece = v[at..at + n].to_vec();
                v.splice(at..at, piece);
            }
            6 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            7 => {
                let n = rng.below(8) + 1;
                let at = rng.below(len + 1);
                let bytes = rng.bytes(n);
                v.splice(at..at, bytes);
            }
            _ => {
                // Fresh bytes: a new recipe for the structured half of a check.
                let n = rng.below(96);
                v = rng.bytes(n);
            }
        }
    }
    v.truncate(4096);
    v
}

/// Runs one input; a failure names the target and the input.
fn run_one(target: &str, check: crate::Check, input: &[u8]) {
    if let Err(e) = std::panic::catch_unwind(|| check(input)) {
        let why = e.downcast_ref::<String>().map(String::as_str).or(e.downcast_ref::<&str>().copied()).unwrap_or("");
        panic!("fuzz target {target} fails on input {:?}: {why}", crate::text(input));
    }
}

/// What one smoke run checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Seed files checked.
    pub seeds: usize,
    /// Mutants checked.
    pub mutants: usize,
}

/// Runs `check` over the seeds of `target` under `fuzz_dir` and `mutants`
/// deterministic mutations of them.
pub fn run(fuzz_dir: &Path, target: &str, check: crate::Check, mutants: usize) -> Report {
    let seeds = read_dir(&fuzz_dir.join("seeds").join(target));
    let dict = read_dict(&fuzz_dir.join("dict").join(format!("{target}.dict")));
    for s in &seeds {
        run_one(target, check, s);
    }
    let mut rng = Rng::new(0x006b_6579_7761_7264 ^ target.len() as u64);
    let empty = Vec::new();
    for _ in 0..mutants {
        let base = if seeds.is_empty() { &empty } else { &seeds[rng.below(seeds.len())] };
        let m = mutate(&mut rng, base, &seeds, &dict);
        run_one(target, check, &m);
    }
    Report { seeds: seeds.len(), mutants }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dict_tokens() {
        assert_eq!(dict_token(r#"kw="%2e""#), Some(b"%2e".to_vec()));
        assert_eq!(dict_token(r#""a\"b\\c\x41""#), Some(b"a\"b\\cA".to_vec()));
        assert_eq!(dict_token("# comment"), None);
    }
}
