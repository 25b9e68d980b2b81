//! Payload corpora for the broadcast workload (`--corpus chat|json`), made from a fixed
//! seed so that every run and every server gets the same documents:
//! - `chat`: short chat lines of 60-200 bytes ("nick: words ..."),
//! - `json`: JSON documents of 1-16 KiB (a page of a message feed: ids, users,
//!   timestamps, text, tags, numbers), sizes spread evenly over the range.
//!
//! A broadcast payload is the 24-byte stamp (send time, publisher, run nonce, sequence
//! number) followed by one document; which one follows from the publisher and the
//! sequence number, so a receiver knows what it should have got.

/// Documents per corpus.
const DOCS: usize = 128;

const WORDS: &[&str] = &[
    "the",
    "a",
    "to",
    "and",
    "of",
    "in",
    "is",
    "it",
    "you",
    "that",
    "we",
    "for",
    "on",
    "this",
    "with",
    "be",
    "are",
    "have",
    "not",
    "at",
    "but",
    "can",
    "just",
    "so",
    "if",
    "do",
    "was",
    "will",
    "what",
    "all",
    "about",
    "get",
    "one",
    "there",
    "out",
    "up",
    "they",
    "when",
    "now",
    "think",
    "know",
    "time",
    "see",
    "need",
    "build",
    "deploy",
    "test",
    "tests",
    "branch",
    "merge",
    "review",
    "release",
    "server",
    "client",
    "room",
    "message",
    "queue",
    "latency",
    "socket",
    "kernel",
    "memory",
    "cache",
    "broken",
    "fixed",
    "works",
    "again",
    "today",
    "tomorrow",
    "yesterday",
    "morning",
    "lunch",
    "coffee",
    "meeting",
    "call",
    "later",
    "soon",
    "maybe",
    "sure",
    "thanks",
    "sorry",
    "please",
    "great",
    "nice",
    "cool",
    "weird",
    "looks",
    "good",
    "bad",
    "fine",
    "still",
    "issue",
    "ticket",
    "patch",
    "commit",
    "log",
    "logs",
    "error",
    "warning",
    "crash",
    "bug",
    "feature",
    "config",
    "flag",
    "default",
    "option",
    "benchmark",
    "numbers",
    "faster",
    "slower",
    "than",
    "before",
    "after",
    "why",
    "how",
    "where",
    "who",
    "which",
    "because",
    "probably",
    "really",
    "actually",
    "anyone",
    "everyone",
    "someone",
    "here",
    "back",
    "down",
    "over",
    "into",
    "from",
    "by",
    "my",
    "your",
    "our",
    "their",
    "go",
    "going",
    "went",
    "make",
    "made",
    "take",
    "look",
    "try",
    "tried",
    "run",
    "ran",
    "running",
    "start",
    "stop",
    "wait",
    "waiting",
    "done",
    "ready",
    "ship",
    "shipped",
    "week",
    "friday",
    "monday",
    "team",
    "docs",
    "page",
    "user",
    "users",
    "login",
    "token",
    "api",
    "json",
    "frame",
    "payload",
    "network",
    "browser",
    "phone",
    "laptop",
    "battery",
    "train",
    "late",
    "home",
    "office",
    "weekend",
    "plan",
    "idea",
    "question",
];
const NICKS: &[&str] = &[
    "maria", "jonas", "aiko", "pedro", "lena", "omar", "sofia", "liam", "noor", "chen", "tariq", "ines", "dmitri",
    "zoe", "kwame", "elif", "rafael", "hana", "mateo", "priya",
];
const TAGS: &[&str] = &[
    "general",
    "random",
    "ops",
    "release",
    "frontend",
    "backend",
    "perf",
    "security",
    "design",
    "support",
    "mobile",
    "infra",
    "question",
    "announcement",
    "bug",
];

/// splitmix64: a small, fixed pseudo-random sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// Words until the text is about `len` bytes long (a sentence, maybe two).
fn words(rng: &mut Rng, len: usize, out: &mut String) {
    let start = out.len();
    let mut capital = true;
    while out.len() - start < len {
        if !capital {
            out.push(' ');
        }
        let w = rng.pick(WORDS);
        if capital {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                out.extend(f.to_uppercase());
                out.push_str(c.as_str());
            }
        } else {
            out.push_str(w);
        }
        capital = false;
        if rng.below(9) == 0 {
            out.push_str(["?", ".", "!", ","][rng.below(4)]);
            capital = !out.ends_with(',');
        }
    }
}

fn chat_line(rng: &mut Rng) -> Vec<u8> {
    let len = rng.range(60, 200);
    let mut s = format!("{}: ", rng.pick(NICKS));
    words(rng, len.saturating_sub(s.len()), &mut s);
    s.truncate(len);
    // Cut on a word boundary where possible, keeping at least 60 bytes.
    if let Some(space) = s.rfind(' ').filter(|&i| i >= 60) {
        s.truncate(space);
    }
    s.into_bytes()
}

fn json_doc(rng: &mut Rng, target: usize) -> Vec<u8> {
    let mut id = 4_100_000 + rng.below(900_000) as u64;
    let mut ts = 1_764_500_000_000u64 + rng.below(10_000_000) as u64;
    let mut s = format!(
        "{{\"type\":\"feed\",\"room\":\"{}-{}\",\"cursor\":\"{:016x}\",\"items\":[",
        rng.pick(TAGS),
        rng.below(1000),
        rng.next()
    );
    let mut first = true;
    while s.len() + 2 < target {
        let item_start = s.len();
        if !first {
            s.push(',');
        }
        first = false;
        id += 1 + rng.below(40) as u64;
        ts += rng.below(90_000) as u64;
        let user = rng.below(5000);
        let nick = rng.pick(NICKS);
        let (secs, ms) = (ts / 1000, ts % 1000);
        let (h, m, sec) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        s.push_str(&format!(
            "{{\"id\":{id},\"user\":{{\"id\":{user},\"name\":\"{nick}\",\"avatar\":\"https://cdn.example.com/u/{user}.png\"}},\"created\":\"2026-11-{:02}T{h:02}:{m:02}:{sec:02}.{ms:03}Z\",\"text\":\"",
            1 + (secs / 86_400) % 30
        ));
        let text_len = rng.range(20, 240);
        words(rng, text_len, &mut s);
        s.push_str(&format!(
            "\",\"likes\":{},\"replies\":{},\"score\":{:.4},\"tags\":[",
            rng.below(200),
            rng.below(30),
            rng.below(10_000) as f64 / 10_000.0
        ));
        for t in 0..rng.range(0, 3) {
            if t > 0 {
                s.push(',');
            }
            s.push('"');
            s.push_str(rng.pick(TAGS));
            s.push('"');
        }
        s.push_str(&format!("],\"edited\":{}}}", rng.below(5) == 0));
        // The last item may not take the document past its size: drop it then, unless
        // that leaves less than 1 KiB.
        if s.len() + 2 > target && item_start + 2 >= 1024 {
            s.truncate(item_start);
            break;
        }
    }
    s.push_str("]}");
    s.into_bytes()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Chat,
    Json,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "chat" => Some(Kind::Chat),
            "json" => Some(Kind::Json),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Json => "json",
        }
    }
}

pub struct Corpus {
    pub kind: Kind,
    pub docs: Vec<Vec<u8>>,
    /// CRC-32 of each document, to check what arrives.
    pub crcs: Vec<u32>,
}

impl Corpus {
    pub fn new(kind: Kind) -> Corpus {
        let mut rng = Rng(match kind {
            Kind::Chat => 0x6368_6174,
            Kind::Json => 0x6a73_6f6e,
        });
        let docs: Vec<Vec<u8>> = (0..DOCS)
            .map(|i| match kind {
                Kind::Chat => chat_line(&mut rng),
                // Sizes spread evenly over 1-16 KiB.
                Kind::Json => json_doc(&mut rng, 1024 + i * (15 * 1024) / (DOCS - 1)),
            })
            .collect();
        let crcs = docs.iter().map(|d| crc32fast::hash(d)).collect();
        Corpus { kind, docs, crcs }
    }

    /// The document a publisher's message `seq` carries.
    pub fn index(&self, publisher: u32, seq: u64) -> usize {
        ((u64::from(publisher) * 7919 + seq) % self.docs.len() as u64) as usize
    }

    pub fn mean_len(&self) -> f64 {
        self.docs.iter().map(Vec::len).sum::<usize>() as f64 / self.docs.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_in_range() {
        let chat = Corpus::new(Kind::Chat);
        assert!(
            chat.docs.iter().all(|d| (60..=200).contains(&d.len())),
            "{:?}",
            chat.docs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let json = Corpus::new(Kind::Json);
        assert!(
            json.docs.iter().all(|d| (1024..=16 * 1024).contains(&d.len())),
            "{:?}",
            json.docs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        for d in &json.docs {
            let s = std::str::from_utf8(d).unwrap();
            assert!(s.starts_with('{') && s.ends_with("]}"));
            // Balanced: a crude check that it is one JSON object.
            assert_eq!(s.matches('{').count(), s.matches('}').count());
        }
    }
}
