//! RESP2, the Redis wire protocol (https://redis.io/docs/reference/protocol-spec/),
//! sans I/O: commands encoded into a buffer, replies parsed from bytes as they come.
//!
//! Only what the backplane uses: a command is an array of bulk strings; a reply is a
//! simple string, an error, an integer, a bulk string (or nil) or an array (or nil) of
//! replies. Parsing never panics on what a server (or anything pretending to be one)
//! sends, and "need more bytes" is `Ok(None)`, consuming nothing.

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
    Nil,
}

/// A reply that breaks the protocol: the connection cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// Nesting deeper than this is refused (a backplane reply is at most three levels).
const MAX_DEPTH: usize = 8;
/// Elements or bytes a single reply may declare.
const MAX_LEN: i64 = 512 << 20;

/// Appends a command (an array of bulk strings) to `out`.
pub fn encode_command<'a>(out: &mut Vec<u8>, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    out.push(b'*');
    push_number(out, args.len() as i64);
    for arg in args {
        out.push(b'$');
        push_number(out, arg.len() as i64);
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_number(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Parses one whole reply from the start of `input`: the reply and the bytes it took,
/// `Ok(None)` when more bytes are needed.
pub fn parse(input: &[u8]) -> Result<Option<(Reply, usize)>, Malformed> {
    parse_at(input, 0, 0)
}

fn parse_at(input: &[u8], pos: usize, depth: usize) -> Result<Option<(Reply, usize)>, Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    let Some(&kind) = input.get(pos) else { return Ok(None) };
    let Some((line, after)) = line_at(input, pos + 1)? else { return Ok(None) };
    match kind {
        b'+' => Ok(Some((Reply::Simple(text(line)?), after))),
        b'-' => Ok(Some((Reply::Error(text(line)?), after))),
        b':' => Ok(Some((Reply::Integer(number(line)?), after))),
        b'$' => Ok(match bulk(input, line, after)? {
            None => None,
            Some(Bulk::Nil) => Some((Reply::Nil, after)),
            Some(Bulk::Until(end)) => Some((Reply::Bulk(input[after..end].to_vec()), end + 2)),
        }),
        b'*' => {
            let len = number(line)?;
            if len == -1 {
                return Ok(Some((Reply::Nil, after)));
            }
            if !(0..=MAX_LEN).contains(&len) {
                return Err(Malformed);
            }
            // Capacity from what is there, not from what is declared.
            let mut items = Vec::with_capacity((len as usize).min(input.len() - after));
            let mut at = after;
            for _ in 0..len {
                let Some((item, next)) = parse_at(input, at, depth + 1)? else { return Ok(None) };
                items.push(item);
                at = next;
            }
            Ok(Some((Reply::Array(items), at)))
        }
        _ => Err(Malformed),
    }
}

/// A bulk string whose header line `line` ends at `after`.
enum Bulk {
    Nil,
    /// Its bytes are `after..end`; the next element starts at `end + 2`.
    Until(usize),
}

/// Where a bulk string ends, checked against `MAX_LEN` before anything is reserved, or
/// `None` while its bytes are still coming.
fn bulk(input: &[u8], line: &[u8], after: usize) -> Result<Option<Bulk>, Malformed> {
    let len = number(line)?;
    if len == -1 {
        return Ok(Some(Bulk::Nil));
    }
    if !(0..=MAX_LEN).contains(&len) {
        return Err(Malformed);
    }
    let end = after + len as usize;
    let Some(tail) = input.get(end..end + 2) else { return Ok(None) };
    if tail != b"\r\n" {
        return Err(Malformed);
    }
    Ok(Some(Bulk::Until(end)))
}

/// Finds where one whole reply ends as its bytes come, without copying or
/// allocating per element: each call goes on from where the last one stopped (bulk
/// strings skipped by their length), so a reply read in many pieces is scanned once
/// in all, then parsed (and its strings copied) once.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Where the next element starts.
    pos: usize,
    /// Elements still to come in each array opened (innermost last).
    open: Vec<i64>,
}

impl Scanner {
    /// The length of the whole reply at the start of `input` (the same input as at the
    /// last call, longer), or `Ok(None)` while more bytes are needed. After `Some` the
    /// scanner starts afresh, for the next reply.
    pub fn scan(&mut self, input: &[u8]) -> Result<Option<usize>, Malformed> {
        loop {
            let Some(&kind) = input.get(self.pos) else { return Ok(None) };
            let Some((line, after)) = line_at(input, self.pos + 1)? else { return Ok(None) };
            match kind {
                b'+' | b'-' | b':' => self.pos = after,
                b'$' => match bulk(input, line, after)? {
                    None => return Ok(None),
                    Some(Bulk::Nil) => self.pos = after,
                    Some(Bulk::Until(end)) => self.pos = end + 2,
                },
                b'*' => {
                    let len = number(line)?;
                    if !(-1..=MAX_LEN).contains(&len) {
                        return Err(Malformed);
                    }
                    self.pos = after;
                    if len > 0 {
                        if self.open.len() >= MAX_DEPTH {
                            return Err(Malformed);
                        }
                        self.open.push(len);
                        continue;
                    }
                }
                _ => return Err(Malformed),
            }
            // One element done: it counts for the arrays it closes.
            while let Some(left) = self.open.last_mut() {
                *left -= 1;
                if *left > 0 {
                    break;
                }
                self.open.pop();
            }
            if self.open.is_empty() {
                let end = self.pos;
                self.pos = 0;
                return Ok(Some(end));
            }
        }
    }
}

/// The line starting at `pos` (without its CRLF) and where the next one starts.
fn line_at(input: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, Malformed> {
    let Some(rest) = input.get(pos..) else { return Ok(None) };
    match memchr::memchr(b'\r', rest) {
        Some(i) => match rest.get(i + 1) {
            Some(b'\n') => Ok(Some((&rest[..i], pos + i + 2))),
            Some(_) => Err(Malformed),
            None => Ok(None),
        },
        // A line longer than any we expect is not a reply.
        None if rest.len() > 64 << 10 => Err(Malformed),
        None => Ok(None),
    }
}

fn text(line: &[u8]) -> Result<String, Malformed> {
    String::from_utf8(line.to_vec()).map_err(|_| Malformed)
}

fn number(line: &[u8]) -> Result<i64, Malformed> {
    std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()).ok_or(Malformed)
}

impl Reply {
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(b) => Some(b),
            Reply::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Integer(n) => Some(*n),
            Reply::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(items) => Some(items),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, [&b"SET"[..], b"k", b""].into_iter());
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn every_kind_of_reply_parses() {
        let input = b"*6\r\n+OK\r\n-ERR no\r\n:-42\r\n$5\r\nh\r\nlo\r\n$-1\r\n*1\r\n*0\r\n";
        let (reply, used) = parse(input).unwrap().unwrap();
        assert_eq!(used, input.len());
        assert_eq!(
            reply,
            Reply::Array(vec![
                Reply::Simple("OK".into()),
                Reply::Error("ERR no".into()),
                Reply::Integer(-42),
                Reply::Bulk(b"h\r\nlo".to_vec()),
                Reply::Nil,
                Reply::Array(vec![Reply::Array(vec![])]),
            ])
        );
    }

    #[test]
    fn a_declared_length_is_not_allocated() {
        // 2^40 bytes declared: refused before anything is read or reserved.
        assert_eq!(Scanner::default().scan(b"$1099511627776\r\n"), Err(Malformed));
        assert_eq!(parse(b"$1099511627776\r\n"), Err(Malformed));
        // A large bulk string that is coming is waited for, its bytes skipped, not copied.
        let mut scanner = Scanner::default();
        assert_eq!(scanner.scan(b"*1\r\n$100000000\r\nab"), Ok(None));
    }

    #[test]
    fn bad_replies_are_malformed_not_panics() {
        for bad in [&b"?x\r\n"[..], b":x\r\n", b"$3\r\nabcde", b"$-5\r\n", b"+a\rb\r\n", b"*99999999999\r\n"] {
            assert_eq!(parse(bad), Err(Malformed), "{bad:?}");
        }
    }

    proptest! {
        /// Any prefix of a reply needs more bytes (consumes nothing); the whole parses.
        #[test]
        fn every_prefix_waits_and_the_whole_parses(parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..6)) {
            let mut input = Vec::new();
            encode_command(&mut input, parts.iter().map(|p| &p[..]));
            for cut in 0..input.len() {
                prop_assert_eq!(parse(&input[..cut]), Ok(None));
            }
            let expected = Reply::Array(parts.iter().map(|p| Reply::Bulk(p.clone())).collect());
            prop_assert_eq!(parse(&input), Ok(Some((expected, input.len()))));
        }

        /// The scanner, fed a reply in any pieces, finds where it ends as parse does.
        #[test]
        fn the_scanner_agrees_with_parse(parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..6), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let mut input = Vec::new();
            encode_command(&mut input, parts.iter().map(|p| &p[..]));
            input.extend_from_slice(b"*2\r\n:1\r\n*1\r\n$-1\r\n+next\r\n");
            let first = parse(&input).unwrap().unwrap().1;
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % input.len()).collect();
            cuts.sort_unstable();
            let mut scanner = Scanner::default();
            for cut in cuts.into_iter().filter(|&c| c < first) {
                prop_assert_eq!(scanner.scan(&input[..cut]), Ok(None));
            }
            prop_assert_eq!(scanner.scan(&input), Ok(Some(first)));
            let second = first + parse(&input[first..]).unwrap().unwrap().1;
            prop_assert_eq!(scanner.scan(&input[first..]).map(|e| e.map(|e| e + first)), Ok(Some(second)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&bytes);
            let _ = Scanner::default().scan(&bytes);
        }
    }
}
