//! Differential test of path canonicalization against the WHATWG URL parser
//! that the Workers runtime applies to every request before keyward sees it
//! (and to the URL keyward fetches from the origin): Node's `URL`, the same
//! standard. Node runs once; paths go in as JSON lines, pathnames come back.
//!
//! For many generated paths (seeded, deterministic; pieces: `%2e`, `%2f`,
//! `..`, `.`, `//`, `\`, `;`, `%00`, tabs and newlines, non-ASCII, `%25`, …):
//!
//! 1. **What keyward authorizes is what the runtime resolves.** When keyward
//!    accepts a raw path `r`, the runtime resolves it to a path that keyward
//!    accepts as the same canonical path: `C(pathname(r)) == C(r)`, and
//!    `new URL(r, "https://x").pathname` is `pathname(r)` (the request-line
//!    form, `"https://x" + r`). The exact relation: `pathname(r)` is `r`;
//!    keyward's `C` then only decodes unreserved escapes and upper-cases the
//!    others, which the runtime leaves alone.
//! 2. **What keyward forwards is what it matched.** For every generated `r`,
//!    whatever keyward accepts of the runtime's `p = pathname(r)` is forwarded
//!    unchanged by the runtime's `fetch`: `pathname(C(p)) == C(p)`, and it is
//!    canonical (`C(C(p)) == C(p)`).
//!
//! Any disagreement fails. (It found two, since fixed: a double-encoded
//! escape assembled by decoding, `%25%32%46`, and raw bytes the URL parser
//! encodes accepted raw; fuzz/README.md, K1 and K2.)

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use keyward::path::CanonicalPath;
use keyward_fuzz_checks::path::PIECES;
use keyward_fuzz_checks::smoke::Rng;

/// Paths generated.
const PATHS: usize = 40_000;

const NODE: &str = r#"
const rl = require("readline").createInterface({ input: process.stdin });
const path = (f) => { try { return f().pathname; } catch { return null; } };
rl.on("line", (line) => {
  const p = JSON.parse(line);
  const rel = path(() => new URL(p, "https://x"));
  const abs = path(() => new URL("https://x" + p));
  process.stdout.write(JSON.stringify([rel, abs]) + "\n");
});
"#;

/// Node's `URL`, once per test: `(new URL(p, base).pathname, new URL(base + p).pathname)`.
struct Node {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

type Answer = (Option<String>, Option<String>);

impl Node {
    fn start() -> Self {
        let mut child = Command::new("node")
            .args(["-e", NODE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (v18+) on PATH: the Workers runtime's URL parser is checked against Node's");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, out }
    }

    fn ask(&mut self, paths: &[String]) -> Vec<Answer> {
        let mut stdin = self.child.stdin.take().expect("stdin");
        let answers = std::thread::scope(|s| {
            s.spawn(|| {
                for p in paths {
                    let line = serde_json::to_string(p).expect("json");
                    stdin.write_all(line.as_bytes()).and_then(|_| stdin.write_all(b"\n")).expect("write to node");
                }
                stdin.flush().expect("flush");
            });
            let mut answers = Vec::with_capacity(paths.len());
            let mut line = String::new();
            for p in paths {
                line.clear();
                self.out.read_line(&mut line).expect("read from node");
                let (rel, abs): Answer =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("node answered {line:?} for {p:?}: {e}"));
                answers.push((rel, abs));
            }
            answers
        });
        self.child.stdin = Some(stdin);
        answers
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// More pieces than the fuzz target's: look-alike dots and slashes.
const EXTRA: &[&str] = &[
    "%2e%2e",
    ".%2e",
    "%2e.",
    "%2E%2e",
    "..%2f",
    "%2e%2e%2f",
    "\u{2025}",
    "\u{FF0F}",
    "%E2%80%A5",
    "%ef%bc%8f",
    "\u{0}",
    "\t",
    "\n",
    "\r\n",
    "\\..\\",
    "/./",
    "/../",
    "%%32%65",
    "%252e",
    "%25%32%65",
    "?a=/../",
    "#/../",
];

fn generate(rng: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..1 + rng.below(6) {
        s.push('/');
        for _ in 0..rng.below(4) {
            let piece = if rng.below(4) == 0 { EXTRA[rng.below(EXTRA.len())] } else { PIECES[rng.below(PIECES.len())] };
            s.push_str(piece);
        }
    }
    s
}

fn canonical(p: &str) -> Option<String> {
    CanonicalPath::parse(p).ok().map(|c| c.as_str().to_owned())
}

#[derive(Debug, Default)]
struct Counts {
    paths: usize,
    raw_accepted: usize,
    resolved_accepted: usize,
    differs_raw_vs_resolved: usize,
}

#[test]
fn keyward_agrees_with_whatwg_url() {
    let mut rng = Rng::new(0x005e_ed0f_c0ff_ee00);
    let mut paths: Vec<String> = (0..PATHS).map(|_| generate(&mut rng)).collect();
    paths.extend(
        [
            "/v1/ai/chat",
            "/v1/x/../api_keys",
            "/v1/x/%2e%2e/api_keys",
            "/v1\\api_keys",
            "/v1/ai/ch\tat",
            "/v1/documents/%25%32%46",
            "/v1/documents/a b",
            "/v1/%63hat",
            "/v1/caf\u{e9}",
            "//v1/ai/chat",
        ]
        .map(str::to_owned),
    );
    let mut node = Node::start();
    let first = node.ask(&paths);
    let mut c = Counts { paths: paths.len(), ..Counts::default() };
    let mut failures = Vec::new();
    // (raw path, the runtime's resolution, keyward's canonical form of it)
    let mut forwarded: Vec<(String, String, String)> = Vec::new();
    for (r, (rel, abs)) in paths.iter().zip(&first) {
        let Some(p) = abs else {
            failures.push(format!("{r:?}: the URL parser refused \"https://x\" + path"));
            continue;
        };
        // 1. Raw paths keyward accepts: the runtime resolves them to the same.
        if let Some(cr) = canonical(r) {
            c.raw_accepted += 1;
            let cp = canonical(p);
            if rel.as_ref() != Some(p) {
                failures.push(format!("{r:?}: new URL(r, base) = {rel:?}, new URL(base + r) = {p:?}"));
            } else if cp.as_deref() != Some(cr.as_str()) {
                failures.push(format!("{r:?}: keyward authorizes {cr:?}; the runtime resolves {p:?} -> {cp:?}"));
            } else if p != r {
                c.differs_raw_vs_resolved += 1;
                failures.push(format!("{r:?}: accepted as is, yet the runtime changes it to {p:?}"));
            }
        }
        // 2. What keyward accepts of the runtime's path.
        if let Some(cp) = canonical(p) {
            c.resolved_accepted += 1;
            forwarded.push((r.clone(), p.clone(), cp));
        }
    }
    let again = node.ask(&forwarded.iter().map(|(_, _, cp)| cp.clone()).collect::<Vec<_>>());
    for ((r, p, cp), (_, abs)) in forwarded.iter().zip(&again) {
        if abs.as_deref() != Some(cp.as_str()) {
            failures.push(format!("{r:?} -> runtime {p:?} -> keyward {cp:?}, but fetch sends {abs:?}"));
        }
        if canonical(cp).as_deref() != Some(cp.as_str()) {
            failures.push(format!("{r:?} -> runtime {p:?} -> keyward {cp:?}, which is not canonical"));
        }
    }
    eprintln!("url_differential: {c:?}");
    assert_eq!(c.paths, first.len());
    assert!(c.raw_accepted > PATHS / 20 && c.resolved_accepted > PATHS / 10, "too few accepted paths: {c:?}");
    assert!(
        failures.is_empty(),
        "{} disagreements, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}
