//! A binary upgrade in virtual time: an application frozen, restored from its
//! snapshot in a second application, and thawed; then both are fed the same input
//! and must write the same bytes to every client (the restored one as the one that
//! never stopped): the same seqs, epochs, history, queues, heartbeats and replies.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::rooms::frames;
use super::*;
use crate::config::Secret;
use crate::metrics::Metrics;
use crate::upgrade::snapshot::{decode, SnapshotError};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

/// A client with a socket that can move (here /dev/null: nothing is read from it).
struct Sock(OwnedFd);

impl Sock {
    fn new() -> Sock {
        Sock(File::open("/dev/null").unwrap().into())
    }
}

impl fmt::Display for Sock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fd {}", self.0.as_raw_fd())
    }
}

impl ClientIo for Sock {
    fn socket_fd(&self) -> Option<RawFd> {
        Some(self.0.as_raw_fd())
    }
}

/// A TLS client: it cannot move.
struct Tls;

const SECRET: &str = "upgrade test secret";
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const DEFLATE: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn config() -> Config {
    Config {
        welcome: Some("hi".into()),
        history: 5,
        jwt_secret: Some(Secret(SECRET.into())),
        jwt_leeway: Duration::ZERO,
        anonymous_read: vec!["*".into()],
        anonymous_write: vec!["*".into()],
        api_token: Some("s3cret".into()),
        limits: Limits {
            ping_interval: Some(Duration::from_secs(10)),
            ping_timeout: Some(Duration::from_secs(30)),
            handshake_timeout: Some(Duration::from_secs(60)),
            ..Limits::default()
        },
        ..Config::default()
    }
}

fn token(sub: &str, exp: u64) -> String {
    let claims = json!({"sub": sub, "exp": exp, "rooms": {"read": ["*"], "write": ["r"]}});
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

fn request(target: &str, v1: bool, extra: &str) -> Vec<u8> {
    let protocol = if v1 { "Sec-WebSocket-Protocol: mioket.v1\r\n" } else { "" };
    format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{protocol}{extra}\r\n"
    )
    .into_bytes()
}

fn input<T: ClientIo>(app: &mut App<T>, id: usize, bytes: &[u8], now: Instant) {
    let mut bytes = bytes.to_vec();
    app.handle_input(id, &mut bytes, now, |_, parts| parts[0].len() + parts[1].len());
}

/// A raw-deflated message without its sync-flush tail (RFC 7692 7.2.1).
fn deflated(payload: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(6), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    c.compress_vec(payload, &mut out, flate2::FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// The application both sides run: clients in every state worth moving.
struct Scene {
    app: App<Sock>,
    plain: usize,
    v1: usize,
    deflate: usize,
    fragmented: usize,
    half_header: usize,
    handshaking: usize,
    tokened: usize,
    compressing: usize,
    in_two_rooms: usize,
    /// An API publish whose body is half read.
    posting: usize,
}

const POST: &str = "POST /api/rooms/r/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
                    Content-Type: text/plain\r\nContent-Length: 20\r\n\r\nfrom the backend, 20";

fn scene(now: Instant) -> Scene {
    let mut app: App<Sock> = App::new(config());
    let join = |app: &mut App<Sock>, target: &str, v1: bool, extra: &str| {
        let id = app.connect(Sock::new(), Listener::Main, now).ok().unwrap();
        input(app, id, &request(target, v1, extra), now);
        id
    };
    let plain = join(&mut app, "/r", false, "");
    let v1 = join(&mut app, "/r", true, "");
    let deflate = join(&mut app, "/r", true, DEFLATE);
    let fragmented = join(&mut app, "/r", false, "");
    let half_header = join(&mut app, "/r", true, "");
    let exp = app.unix_now(now) + 3600;
    let bearer = format!("Authorization: Bearer {}\r\n", token("ann", exp));
    let tokened = join(&mut app, "/r", true, &bearer);
    let compressing = join(&mut app, "/r", false, DEFLATE);
    let in_two_rooms = join(&mut app, "/r", true, "");
    input(&mut app, in_two_rooms, &text(&json!({"op": "join", "room": "s"}).to_string()), now);
    for m in ["m1", "m2", "m3"] {
        input(&mut app, plain, &text(m), now);
    }
    input(&mut app, in_two_rooms, &text(&json!({"op": "publish", "room": "s", "data": "in s"}).to_string()), now);
    flush(&mut app);
    let handshaking = app.connect(Sock::new(), Listener::Main, now).ok().unwrap();
    let upgrade = request("/r", true, "");
    input(&mut app, handshaking, &upgrade[..30], now);
    let posting = app.connect(Sock::new(), Listener::Main, now).ok().unwrap();
    input(&mut app, posting, &POST.as_bytes()[..POST.len() - 8], now);
    // Unfinished input of every kind.
    input(&mut app, fragmented, &frame(false, 1, b"hel"), now);
    input(&mut app, half_header, &text("{\"op\":\"publish\",\"data\":\"half\"}")[..3], now);
    let mut first = frame(false, 1, &deflated(b"a compressed message, in two fragments, moved between them")[..10]);
    first[0] |= 0x40;
    input(&mut app, compressing, &first, now);
    // Output not yet written: the next message is queued for everyone.
    input(&mut app, tokened, &text(&json!({"op": "publish", "data": "m4"}).to_string()), now);
    assert_eq!(app.open, 8, "every WebSocket upgraded");
    assert_eq!(app.rooms.len(), 2);
    Scene { app, plain, v1, deflate, fragmented, half_header, handshaking, tokened, compressing, in_two_rooms, posting }
}

/// The old application's snapshot restored in a new one (its clients on /dev/null
/// sockets); the old one thawed. Returns the new one and the new id of each old one.
fn handover(old: &mut App<Sock>, now: Instant) -> (App<Sock>, HashMap<usize, usize>) {
    let moving: Vec<usize> = old.client_ids().collect();
    let frozen = old.freeze(now);
    assert!(old.is_frozen());
    assert_eq!(old.client_count(), 0, "every client parked");
    assert_eq!(frozen.fds.len(), moving.len());
    let fds = frozen.fds.iter().map(|_| Sock::new().0).collect();
    let new = App::restore(config(), &frozen.bytes, fds, now, Sock).unwrap();
    old.thaw(now);
    assert_eq!(old.client_ids().collect::<Vec<_>>(), moving, "back under the same ids");
    let ids = moving.into_iter().zip(new.client_ids()).collect();
    (new, ids)
}

/// Runs `step` on both applications, then flushes both and checks every client got
/// the same bytes from each; returns them, by old id.
fn both(
    old: &mut App<Sock>,
    new: &mut App<Sock>,
    ids: &HashMap<usize, usize>,
    step: impl Fn(&mut App<Sock>, &dyn Fn(usize) -> usize),
) -> HashMap<usize, String> {
    step(old, &|id| id);
    step(new, &|id| ids[&id]);
    let a = flush(old);
    let b = flush(new);
    for (old_id, new_id) in ids {
        assert_eq!(
            String::from_utf8_lossy(a.get(old_id).map_or(&[][..], |v| v)),
            String::from_utf8_lossy(b.get(new_id).map_or(&[][..], |v| v)),
            "client {old_id} (new {new_id})"
        );
    }
    ids.keys().map(|id| (*id, String::from_utf8_lossy(a.get(id).map_or(&[][..], |v| v)).into_owned())).collect()
}

#[test]
fn a_restored_application_writes_every_client_the_same_bytes_as_the_one_that_never_stopped() {
    let now = Instant::now();
    let Scene {
        app: mut old,
        plain,
        v1,
        deflate,
        fragmented,
        half_header,
        handshaking,
        tokened,
        compressing,
        in_two_rooms,
        posting,
    } = scene(now);
    // A first ping each, before the move (the heartbeat's count moves too).
    let first_ping = now + Duration::from_secs(10);
    let all = [plain, v1, deflate, fragmented, half_header, handshaking, tokened, compressing, in_two_rooms];
    for &c in &all {
        old.handle_timeout(c, first_ping);
    }
    let later = first_ping + Duration::from_millis(300);
    let (mut new, ids) = handover(&mut old, later);
    let t = later + Duration::from_millis(1);
    // The queued output first (m4 and the first pings, written to nobody yet).
    let out = both(&mut old, &mut new, &ids, |_, _| {});
    assert!(out[&plain].contains("m4") && out[&v1].contains("\"seq\":4"), "{out:?}");
    let out = both(&mut old, &mut new, &ids, |app, id| {
        input(app, id(fragmented), &frame(true, 0, b"lo"), t);
        input(app, id(half_header), &text("{\"op\":\"publish\",\"data\":\"half\"}")[3..], t);
        let rest = deflated(b"a compressed message, in two fragments, moved between them");
        input(app, id(compressing), &frame(true, 0, &rest[10..]), t);
        input(app, id(handshaking), &request("/r", true, "")[30..], t);
        input(app, id(in_two_rooms), &text(&json!({"op": "publish", "room": "s", "data": "s2"}).to_string()), t);
        input(app, id(deflate), &text(&"a long message that shrinks ".repeat(20)), t);
        input(app, id(tokened), &text(&json!({"op": "presence"}).to_string()), t);
        input(app, id(v1), &text(&json!({"op": "ping", "id": "hb"}).to_string()), t);
        input(app, id(posting), &POST.as_bytes()[POST.len() - 8..], t);
    });
    assert!(out[&posting].starts_with("HTTP/1.1 200 ") && out[&posting].contains("\"seq\":8"), "{}", out[&posting]);
    assert!(out[&plain].contains("from the backend, 20"), "{}", out[&plain]);
    // Each unfinished input finished where it was left, in the same room's numbering.
    for moved in ["hello", "half", "a compressed message, in two fragments, moved between them"] {
        assert!(out[&plain].contains(moved), "{moved}: {}", out[&plain]);
    }
    assert!(out[&v1].contains("\"seq\":5") && out[&v1].contains("\"seq\":7"), "{}", out[&v1]);
    assert!(out[&handshaking].starts_with("HTTP/1.1 101 "), "{}", out[&handshaking]);
    assert!(out[&in_two_rooms].contains("\"s2\""), "{}", out[&in_two_rooms]);
    // Presence, heartbeats, then a goodbye.
    both(&mut old, &mut new, &ids, |app, _| app.handle_housekeeping(t + Duration::from_secs(2)));
    let ping_at = t + Duration::from_secs(11);
    let out = both(&mut old, &mut new, &ids, |app, id| {
        for &c in &all {
            app.handle_timeout(id(c), ping_at);
        }
    });
    assert!(out[&plain].ends_with("\u{4}\0\0\0\u{2}"), "the second ping: {:?}", out[&plain]);
    both(&mut old, &mut new, &ids, |app, id| input(app, id(plain), &close_frame(1000, ""), ping_at));
    // A client that resumes on the new process gets exactly what it missed.
    let epoch = old.rooms.get(old.rooms.find("r").unwrap()).unwrap().epoch().to_string();
    let resumed = |app: &mut App<Sock>| {
        let id = app.connect(Sock::new(), Listener::Main, ping_at).ok().unwrap();
        input(app, id, &request(&format!("/r?since=4&epoch={epoch}"), true, ""), ping_at);
        frames(&flush(app).remove(&id).unwrap())
    };
    let (a, b) = (resumed(&mut old), resumed(&mut new));
    assert_eq!(a, b);
    assert_eq!(b[0]["recovered"], true, "{b:?}");
    let seqs: Vec<u64> = b[1..].iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (5..=b[0]["seq"].as_u64().unwrap()).collect::<Vec<_>>(), "{b:?}");
    // The counters went on from where they were.
    let (m, n) = (&old.metrics, &new.metrics);
    assert_eq!(
        (m.messages_in, m.messages_out, m.bytes_read, m.upgrades),
        (n.messages_in, n.messages_out, n.bytes_read, n.upgrades)
    );
    assert_eq!((m.fanout_deliveries, m.compressed_frames), (n.fanout_deliveries, n.compressed_frames));
}

#[test]
fn a_restored_token_still_expires_and_its_rate_limit_and_counts_carry_over() {
    let now = Instant::now();
    let mut scene = scene(now);
    let (mut new, ids) = handover(&mut scene.app, now);
    let old = &mut scene.app;
    assert_eq!(new.grants.distinct(), 1);
    assert_eq!(new.per_user.count("ann"), old.per_user.count("ann"));
    assert_eq!(new.limiters.len(), old.limiters.len());
    let exp = old.poll_housekeeping();
    // The expiry is the token's, on both.
    let at = now + Duration::from_secs(3601);
    both(old, &mut new, &ids, |app, _| app.handle_housekeeping(at));
    assert!(exp.is_some());
}

#[test]
fn tls_clients_stay_and_are_closed_1012_after_a_handover() {
    let now = Instant::now();
    let mut app: App<Tls> = App::new(config());
    let id = app.connect(Tls, Listener::Main, now).ok().unwrap();
    input(&mut app, id, &request("/r", true, ""), now);
    flush(&mut app);
    let frozen = app.freeze(now);
    assert!(frozen.fds.is_empty());
    assert_eq!(decode(&frozen.bytes).unwrap().clients.len(), 0);
    assert_eq!(decode(&frozen.bytes).unwrap().rooms.rooms.len(), 1, "its room moves");
    // Frozen: its input is not read (a publish now would be numbered outside the
    // snapshot), and no client is admitted.
    input(&mut app, id, &text(&json!({"op": "publish", "data": "late"}).to_string()), now);
    assert!(app.connect(Tls, Listener::Main, now).is_err());
    app.close_unmoved(now);
    assert!(!app.is_frozen());
    let out = flush(&mut app).remove(&id).unwrap();
    assert_eq!(out, [&[0x88u8, 17, 0x03, 0xf4][..], b"service restart"].concat());
}

#[test]
fn a_snapshot_with_other_sockets_than_clients_is_refused() {
    let now = Instant::now();
    let mut scene = scene(now);
    let frozen = scene.app.freeze(now);
    let err = App::<Sock>::restore(config(), &frozen.bytes, Vec::new(), now, Sock).err().unwrap();
    assert!(matches!(err, SnapshotError::Invalid(_)), "{err:?}");
}

impl fmt::Display for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tls")
    }
}

impl ClientIo for Tls {}

/// Snapshot bytes per connection, idle after its greeting (documented in
/// docs/upgrade.md): `cargo test --lib snapshot_bytes -- --nocapture` prints them.
#[test]
fn snapshot_bytes_per_idle_connection_plain_and_v1_in_a_room() {
    let now = Instant::now();
    let size = |v1: bool, deflate: bool, n: usize| {
        let mut app: App<Sock> = App::new(Config { welcome: None, ..config() });
        let extra = if deflate { DEFLATE } else { "" };
        for _ in 0..n {
            let id = app.connect(Sock::new(), Listener::Main, now).ok().unwrap();
            input(&mut app, id, &request("/room", v1, extra), now);
        }
        flush(&mut app);
        app.handle_housekeeping(now);
        flush(&mut app);
        app.freeze(now).bytes.len()
    };
    for (name, v1, deflate, most) in
        [("plain", false, false, 40), ("v1 in a room", true, false, 40), ("v1 with deflate", true, true, 40)]
    {
        let (one, many) = (size(v1, deflate, 1), size(v1, deflate, 201));
        let each = (many - one) as f64 / 200.0;
        eprintln!("{name}: {each:.1} bytes per connection ({one} bytes with one)");
        assert!(each <= most as f64, "{name}: {each} bytes per connection");
    }
}

mod property {
    use super::*;
    use proptest::prelude::*;

    /// Six clients: plain, plain with deflate, v1, v1 with deflate, v1, plain.
    const KINDS: [(bool, bool); 6] =
        [(false, false), (false, true), (true, false), (true, true), (true, false), (false, false)];

    #[derive(Clone, Debug)]
    enum Op {
        /// A message into client c's outgoing bytes, in one or two fragments.
        Message { c: usize, fragments: bool, long: bool },
        /// v1: join or leave room "s"; plain: a ping.
        JoinLeave { c: usize },
        /// Up to n of client c's bytes to the application.
        Feed { c: usize, n: usize },
        /// Time passes: timeouts and housekeeping.
        Wait { ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..6usize, any::<bool>(), any::<bool>()).prop_map(|(c, fragments, long)| Op::Message {
                c,
                fragments,
                long
            }),
            (0..6usize).prop_map(|c| Op::JoinLeave { c }),
            (0..6usize, 1..400usize).prop_map(|(c, n)| Op::Feed { c, n }),
            (0..6usize, 1..400usize).prop_map(|(c, n)| Op::Feed { c, n }),
            (0..15_000u64).prop_map(|ms| Op::Wait { ms }),
        ]
    }

    fn bytes_of(op: &Op, n: usize) -> Vec<u8> {
        match *op {
            Op::Message { c, fragments, long } => {
                let body = if long { "long ".repeat(80) } else { format!("m{n}") };
                let payload = if KINDS[c].0 { json!({"op": "publish", "data": body}).to_string() } else { body };
                let p = payload.as_bytes();
                if fragments {
                    let half = p.len() / 2;
                    [frame(false, 1, &p[..half]), frame(true, 0, &p[half..])].concat()
                } else {
                    text(&payload)
                }
            }
            Op::JoinLeave { c } if KINDS[c].0 => {
                let verb = if n.is_multiple_of(2) { "join" } else { "leave" };
                text(&json!({"op": verb, "room": "s"}).to_string())
            }
            _ => frame(true, 9, b"hb"),
        }
    }

    /// `out` with the epochs of rooms made after the handover (random in each
    /// application) written as "new"; those of the rooms that moved stay.
    fn moved_epochs_only(out: &str, moved: &[String]) -> String {
        let mut out = out.to_string();
        let mut from = 0;
        while let Some(at) = out[from..].find("\"epoch\":\"").map(|i| from + i + 9) {
            let epoch = out.get(at..at + 16).unwrap_or_default().to_string();
            if !moved.contains(&epoch) && epoch.len() == 16 {
                out.replace_range(at..at + 16, "new             ");
            }
            from = at;
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Frozen at any step of any script, restored and thawed, the two applications
        /// write every client the same bytes at every later step.
        #[test]
        fn a_restored_application_goes_on_as_the_original_from_any_point(
            script in proptest::collection::vec(op(), 1..60),
            at in 0usize..60,
        ) {
            let start = Instant::now();
            let mut now = start;
            let mut app: App<Sock> = App::new(config());
            let mut backlog: Vec<Vec<u8>> = Vec::new();
            let mut ids = Vec::new();
            for &(v1, deflate) in &KINDS {
                let id = app.connect(Sock::new(), Listener::Main, now).ok().unwrap();
                ids.push(id);
                backlog.push(request("/r", v1, if deflate { DEFLATE } else { "" }));
            }
            let mut apps = vec![app];
            let mut map: HashMap<usize, usize> = HashMap::new();
            let mut epochs = Vec::new();
            for (step, op) in script.iter().enumerate() {
                if step == at.min(script.len() - 1) {
                    epochs = apps[0].rooms.iter().map(|r| r.epoch().to_string()).collect();
                    let (new, m) = handover(&mut apps[0], now);
                    apps.push(new);
                    map = m;
                }
                match *op {
                    Op::Message { c, .. } | Op::JoinLeave { c } => backlog[c].extend(bytes_of(op, step)),
                    Op::Feed { c, n } => {
                        let n = n.min(backlog[c].len());
                        let chunk: Vec<u8> = backlog[c].drain(..n).collect();
                        if !chunk.is_empty() {
                            for (i, app) in apps.iter_mut().enumerate() {
                                // A client gone before the handover is in neither.
                                let id = if i == 0 { Some(ids[c]) } else { map.get(&ids[c]).copied() };
                                if let Some(id) = id {
                                    input(app, id, &chunk, now);
                                }
                            }
                        }
                    }
                    Op::Wait { ms } => {
                        now += Duration::from_millis(ms);
                        for (i, app) in apps.iter_mut().enumerate() {
                            for &id in &ids {
                                let Some(id) = (if i == 0 { Some(id) } else { map.get(&id).copied() }) else { continue };
                                if app.poll_timeout(id).is_some_and(|t| t <= now) {
                                    app.handle_timeout(id, now);
                                }
                            }
                            app.handle_housekeeping(now);
                        }
                    }
                }
                if apps.len() == 2 {
                    let (a, b) = (flush(&mut apps[0]), flush(&mut apps[1]));
                    for (old_id, new_id) in &map {
                        let text = |out: &HashMap<usize, Vec<u8>>, id| {
                            moved_epochs_only(&String::from_utf8_lossy(out.get(id).map_or(&[][..], |v| v)), &epochs)
                        };
                        prop_assert_eq!(text(&a, old_id), text(&b, new_id), "client {}", old_id);
                    }
                } else {
                    flush(&mut apps[0]);
                }
            }
        }
    }
}

#[test]
fn a_second_freeze_after_a_failed_handover_captures_every_client_again() {
    let now = Instant::now();
    let mut scene = scene(now);
    let first = scene.app.freeze(now);
    let second = scene.app.freeze(now);
    assert_eq!(first.fds, second.fds);
    assert_eq!(first.bytes, second.bytes);
    scene.app.thaw(now);
    assert_eq!(scene.app.client_count(), first.fds.len());
}

#[test]
fn counters_move_by_name_so_one_added_or_removed_is_no_format_change() {
    let mut metrics = Metrics::default();
    metrics.messages_in = 7;
    metrics.close(crate::frame::CloseCode(1000), true);
    let json = serde_json::to_value(&metrics).unwrap();
    let mut older = json.as_object().unwrap().clone();
    older.remove("messages_out");
    older.insert("a_counter_this_build_does_not_know".into(), json!(3));
    let back: Metrics = serde_json::from_value(serde_json::Value::Object(older)).unwrap();
    assert_eq!((back.messages_in, back.messages_out), (7, 0));
    assert_eq!(serde_json::to_value(&back).unwrap()["closes"], json["closes"]);
}

#[test]
fn a_publish_id_remembered_before_the_move_is_answered_with_its_first_seq_after_it() {
    let now = Instant::now();
    let mut old: App<Sock> = App::new(config());
    let join = |app: &mut App<Sock>, v1: bool| {
        let id = app.connect(Sock::new(), Listener::Main, now).ok().unwrap();
        input(app, id, &request("/r", v1, ""), now);
        id
    };
    let member = join(&mut old, false);
    let publisher = join(&mut old, true);
    let publish = text(&json!({"op": "publish", "id": "p1", "data": "once"}).to_string());
    input(&mut old, publisher, &publish, now);
    // An API publish with an Idempotency-Key, its body half read when the move comes.
    let post = POST.replace("Content-Length", "Idempotency-Key: k1\r\nContent-Length");
    let posting = old.connect(Sock::new(), Listener::Main, now).ok().unwrap();
    input(&mut old, posting, &post.as_bytes()[..post.len() - 8], now);
    let out = flush(&mut old);
    assert!(String::from_utf8_lossy(&out[&publisher]).contains("\"seq\":1"));
    let t = now + Duration::from_secs(30);
    let (mut new, ids) = handover(&mut old, t);
    let out = both(&mut old, &mut new, &ids, |app, id| {
        input(app, id(posting), &post.as_bytes()[post.len() - 8..], t);
        input(app, id(publisher), &publish, t);
    });
    assert!(out[&posting].starts_with("HTTP/1.1 200 ") && out[&posting].contains("\"seq\":2"), "{}", out[&posting]);
    assert!(out[&publisher].contains("\"id\":\"p1\"") && out[&publisher].contains("\"seq\":1"), "{}", out[&publisher]);
    assert!(!out[&member].contains("once"), "delivered again: {}", out[&member]);
    // The API publish's key was remembered by the restored App too.
    let again = new.connect(Sock::new(), Listener::Main, t).ok().unwrap();
    input(&mut new, again, post.as_bytes(), t);
    let out = flush(&mut new);
    let answer = String::from_utf8_lossy(&out[&again]);
    assert!(answer.starts_with("HTTP/1.1 200 ") && answer.contains("\"seq\":2"), "{answer}");
    assert!(!out.contains_key(&ids[&member]), "delivered again: {out:?}");
    assert_eq!(new.metrics.messages_in, old.metrics.messages_in);
}

#[test]
fn the_queued_bytes_gauge_is_counted_again_from_the_restored_queues() {
    let now = Instant::now();
    let mut scene = scene(now);
    flush(&mut scene.app);
    // Output not yet written: the next message is queued for everyone.
    input(&mut scene.app, scene.plain, &text("m5"), now);
    let (new, _) = handover(&mut scene.app, now);
    let held: usize = new.clients.iter().map(|(_, c)| c.conn.queue_memory()).sum();
    assert!(held > 0, "output moved");
    assert_eq!(new.queued, held, "the gauge is not carried: it is counted");
    // Confirmed: the moved clients go, and with them what the old process counted.
    let _ = scene.app.freeze(now);
    scene.app.close_unmoved(now);
    assert_eq!(scene.app.client_count(), 0);
    assert_eq!(scene.app.queued, 0);
}
