use super::*;

fn limits() -> RoomLimits {
    RoomLimits {
        max_rooms: 100,
        ttl: Duration::from_secs(300),
        history_messages: 10,
        history_room_bytes: 1000,
        history_memory: 1 << 20,
    }
}

fn stored(len: usize) -> Stored {
    Stored { plain: Some(vec![b'x'; len].into()), v1: None }
}

fn kept_seqs(rooms: &Rooms, id: RoomId) -> Vec<Seq> {
    rooms.get(id).unwrap().topic.history().iter().map(|(seq, _)| seq).collect()
}

#[test]
fn names_come_from_paths_percent_decoded_and_checked() {
    assert_eq!(room_from_path("/").as_deref(), Ok(""));
    assert_eq!(room_from_path("/lobby").as_deref(), Ok("lobby"));
    assert_eq!(room_from_path("/a/b").as_deref(), Ok("a/b"));
    assert_eq!(room_from_path("/a%2Fb").as_deref(), Ok("a/b"));
    assert_eq!(room_from_path("/caf%C3%A9").as_deref(), Ok("café"));
    assert_eq!(room_from_path(&format!("/{}", "é".repeat(64))).map(|n| n.len()), Ok(128));
    for (bad, why) in [
        ("/%zz", InvalidName::BadEscape),
        ("/%4", InvalidName::BadEscape),
        ("/%", InvalidName::BadEscape),
        ("/%FF", InvalidName::BadEscape),
        ("/a%00b", InvalidName::Control),
        ("/a%0Ab", InvalidName::Control),
        ("/%7F", InvalidName::Control),
        ("/%C2%85", InvalidName::Control),
        (&format!("/{}", "a".repeat(129)), InvalidName::TooLong),
        (&format!("/{}", "%41".repeat(129)), InvalidName::TooLong),
    ] {
        assert_eq!(room_from_path(bad), Err(why), "{bad}");
    }
}

#[test]
fn names_have_one_spelling_no_invisible_characters_and_no_dot_or_empty_segments() {
    // NFC is the one spelling: the decomposed é is refused, not a second room.
    assert_eq!(room_from_path("/caf%C3%A9").as_deref(), Ok("café"));
    assert_eq!(room_from_path("/cafe%CC%81"), Err(InvalidName::NotNfc));
    assert_eq!(check_name("e\u{301}"), Err(InvalidName::NotNfc));
    for c in ['\u{202E}', '\u{202A}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{61C}'] {
        assert_eq!(check_name(&format!("a{c}b")), Err(InvalidName::Invisible), "bidi {:04X}", c as u32);
    }
    for c in ['\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{AD}', '\u{E0041}', '\u{2028}'] {
        assert_eq!(check_name(&format!("a{c}b")), Err(InvalidName::Invisible), "format {:04X}", c as u32);
    }
    assert_eq!(room_from_path("/a%E2%80%AEb"), Err(InvalidName::Invisible));
    for bad in ["//lobby", "/./lobby", "/../lobby", "/a/./b", "/a/../b", "/a//b", "/lobby/", "/.", "/..", "/%2E/x"] {
        assert_eq!(room_from_path(bad), Err(InvalidName::DotOrEmptySegment), "{bad}");
    }
    for bad in ["lobby", "*", "", "%2Flobby"] {
        assert_eq!(room_from_path(bad), Err(InvalidName::NotAPath), "{bad:?}");
    }
    // Still fine: the default room, dots inside a segment, emoji with a variation selector.
    for good in ["/", "/a.b", "/...", "/.hidden", "/a/b.c/d", "/%E2%9D%A4%EF%B8%8F"] {
        assert!(room_from_path(good).is_ok(), "{good}");
    }
}

/// A property of the validator: whatever it accepts is within the rules, reads back
/// from its percent-encoded path, and stops being accepted when an invisible
/// character, a decomposed accent or a dot segment gets in.
mod name_rules {
    use super::*;
    use proptest::prelude::*;
    use unicode_normalization::UnicodeNormalization;

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9]{1,4}",
            Just("/".to_string()),
            Just(".".to_string()),
            Just("é".to_string()),
            Just("e\u{301}".to_string()),
            Just("\u{202E}".to_string()),
            Just("\u{200B}".to_string()),
            Just("\u{FEFF}".to_string()),
            Just("\u{1}".to_string()),
            Just("%".to_string()),
            Just("日本".to_string()),
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        proptest::collection::vec(piece(), 0..12).prop_map(|pieces| pieces.concat())
    }

    /// Names within the rules by construction: NFC segments, none empty, `.` or `..`.
    fn valid_name() -> impl Strategy<Value = String> {
        let segment = prop_oneof!["[a-z0-9é日本~-]{1,5}", "\\.[a-z][a-z.]{0,2}", "[a-z]\\.\\.?"];
        proptest::collection::vec(segment, 0..5).prop_map(|segments| segments.join("/"))
    }

    fn encode(name: &str) -> String {
        const KEEP: &percent_encoding::AsciiSet =
            &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'.').remove(b'-');
        format!("/{}", percent_encoding::utf8_percent_encode(name, KEEP))
    }

    proptest! {
        #[test]
        fn accepted_names_keep_every_rule_and_read_back_from_their_path(name in name()) {
            if check_name(&name).is_ok() {
                prop_assert!(name.len() <= MAX_NAME);
                prop_assert_eq!(name.nfc().collect::<String>(), name.clone());
                prop_assert!(!name.chars().any(|c| c.is_control() || is_invisible(c)));
                prop_assert!(name.is_empty() || name.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
                let path = encode(&name);
                let (from_path, decoded) = (room_from_path(&path), decode_name(&path[1..]));
                prop_assert_eq!(from_path.as_deref(), Ok(name.as_str()));
                prop_assert_eq!(decoded.as_deref(), Ok(name.as_str()));
            } else {
                prop_assert!(room_from_path(&encode(&name)).is_err());
            }
        }

        #[test]
        fn an_invisible_character_a_decomposed_accent_or_a_dot_segment_is_always_refused(
            name in valid_name(), at in any::<prop::sample::Index>(), bad in 0usize..6,
        ) {
            prop_assert_eq!(check_name(&name), Ok(()), "{:?}", name);
            let cut = name.char_indices().map(|(i, _)| i).chain([name.len()]).collect::<Vec<_>>();
            let i = cut[at.index(cut.len())];
            let (head, tail) = name.split_at(i);
            let spoiled = match bad {
                0 => format!("{head}\u{202E}{tail}"),
                1 => format!("{head}\u{200D}{tail}"),
                2 => format!("{head}\u{FEFF}{tail}"),
                3 => format!("{name}e\u{301}"),
                4 => format!("{head}/../{tail}"),
                _ => format!("{name}/"),
            };
            prop_assert!(check_name(&spoiled).is_err(), "{:?}", spoiled);
        }
    }
}

#[test]
fn a_room_is_made_once_with_a_fresh_epoch_and_found_by_name() {
    let now = Instant::now();
    let mut rooms = Rooms::new(limits());
    let a = rooms.find_or_create("a", now).unwrap();
    assert_eq!(rooms.find_or_create("a", now), Ok(a));
    let b = rooms.find_or_create("b", now).unwrap();
    assert_ne!(a, b);
    let (ea, eb) = (rooms.get(a).unwrap().epoch(), rooms.get(b).unwrap().epoch());
    assert_ne!(ea, eb);
    for epoch in [ea, eb] {
        assert!(epoch.len() == 16 && epoch.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    }
    assert_eq!(rooms.get(a).unwrap().json_name(), "\"a\"");
    assert_eq!((rooms.len(), rooms.created), (2, 2));
}

#[test]
fn beyond_max_rooms_no_room_is_made() {
    let now = Instant::now();
    let mut rooms = Rooms::new(RoomLimits { max_rooms: 2, ..limits() });
    // Rooms with a member (an empty one would make room, see below).
    for (client, name) in ["a", "b"].into_iter().enumerate() {
        let id = rooms.find_or_create(name, now).unwrap();
        rooms.join(id, client, Audience::Plain).unwrap();
    }
    assert_eq!(rooms.find_or_create("c", now), Err(RoomLimit));
    assert!(rooms.find_or_create("a", now).is_ok(), "an existing room is still found");
}

#[test]
fn an_empty_room_lives_its_ttl_then_is_freed_and_a_new_one_has_a_new_epoch() {
    let t0 = Instant::now();
    let ttl = Duration::from_secs(300);
    let mut rooms = Rooms::new(limits());
    let id = rooms.find_or_create("a", t0).unwrap();
    let epoch = rooms.get(id).unwrap().epoch().to_string();
    let key = rooms.join(id, 1, Audience::Plain).unwrap();
    rooms.publish(id, &stored(5));
    assert_eq!(rooms.poll_expiry(), Some(t0 + ttl), "the entry of its creation, before the join");
    assert_eq!(rooms.expire(t0 + ttl), 0, "a room with a member is not freed");
    assert_eq!(rooms.poll_expiry(), None);
    let left = t0 + Duration::from_secs(10);
    rooms.leave(id, key, Audience::Plain, left);
    assert_eq!(rooms.poll_expiry(), Some(left + ttl));
    assert_eq!(rooms.expire(left + ttl - Duration::from_millis(1)), 0);
    assert_eq!(rooms.find("a"), Some(id));
    assert_eq!(rooms.expire(left + ttl), 1);
    assert_eq!((rooms.find("a"), rooms.len(), rooms.expired), (None, 0, 1));
    assert_eq!(rooms.history_totals(), (0, 0));
    let again = rooms.find_or_create("a", left + ttl).unwrap();
    assert_ne!(rooms.get(again).unwrap().epoch(), epoch);
    assert_eq!(rooms.get(again).unwrap().topic.last_seq(), 0);
}

#[test]
fn a_room_emptied_again_waits_for_its_latest_deadline() {
    let t0 = Instant::now();
    let ttl = Duration::from_secs(300);
    let mut rooms = Rooms::new(limits());
    let id = rooms.find_or_create("a", t0).unwrap();
    // A message, so that the room is kept when empty.
    rooms.publish(id, &stored(1));
    // Many joins and leaves: one expiry entry at a time.
    for i in 0..1000u64 {
        let key = rooms.join(id, 1, Audience::Enveloped).unwrap();
        rooms.leave(id, key, Audience::Enveloped, t0 + Duration::from_millis(i));
    }
    assert_eq!(rooms.expiring.len(), 1);
    let last = t0 + Duration::from_millis(999);
    assert_eq!(rooms.expire(t0 + ttl), 0, "the first deadline passed, the room emptied later");
    assert_eq!(rooms.poll_expiry(), Some(last + ttl));
    assert_eq!(rooms.expire(last + ttl), 1);
}

#[test]
fn over_the_shared_bound_the_least_recently_used_rooms_lose_their_oldest_messages() {
    let now = Instant::now();
    let mut rooms = Rooms::new(RoomLimits { history_memory: 100, ..limits() });
    let a = rooms.find_or_create("a", now).unwrap();
    let b = rooms.find_or_create("b", now).unwrap();
    let c = rooms.find_or_create("c", now).unwrap();
    for _ in 0..3 {
        rooms.publish(a, &stored(10));
    }
    for _ in 0..3 {
        rooms.publish(b, &stored(10));
    }
    for _ in 0..3 {
        rooms.publish(c, &stored(10));
    }
    assert_eq!(rooms.history_totals(), (9, 90));
    // A join uses b's history: b is now more recent than c.
    rooms.join(b, 7, Audience::Plain);
    rooms.publish(c, &stored(30));
    // 120 bytes: a (least recent) gives its two oldest; its newest stays.
    assert_eq!(kept_seqs(&rooms, a), vec![3]);
    assert_eq!(rooms.history_totals(), (8, 100));
    rooms.publish(c, &stored(30));
    // a gives its last message, then b (now the least recent) its two oldest.
    assert_eq!(kept_seqs(&rooms, a), Vec::<Seq>::new());
    assert_eq!(kept_seqs(&rooms, b), vec![3]);
    assert_eq!(kept_seqs(&rooms, c), vec![1, 2, 3, 4, 5]);
    assert_eq!(rooms.history_totals(), (6, 100));
    // Every history is still the newest messages without a hole, and seqs go on.
    assert_eq!(rooms.publish(a, &stored(1)), 4);
}

#[test]
fn presence_is_owed_only_to_v1_members_not_told_by_their_welcome() {
    let now = Instant::now();
    let mut rooms = Rooms::new(limits());
    let id = rooms.find_or_create("a", now).unwrap();
    let told = |rooms: &mut Rooms| {
        let mut counts = Vec::new();
        rooms.take_presence(|room| counts.push(room.topic.member_count()));
        counts
    };
    // Alone: its welcome told it.
    let first = rooms.join(id, 1, Audience::Enveloped).unwrap();
    assert_eq!(told(&mut rooms), Vec::<usize>::new());
    // A second v1 member: the first is owed a presence; many changes make one update.
    rooms.join(id, 2, Audience::Enveloped).unwrap();
    let plain = rooms.join(id, 3, Audience::Plain).unwrap();
    rooms.leave(id, plain, Audience::Plain, now);
    rooms.join(id, 4, Audience::Plain).unwrap();
    assert_eq!(told(&mut rooms), vec![3]);
    assert_eq!(told(&mut rooms), Vec::<usize>::new(), "told once");
    // Back to the count last told: nothing to tell.
    let fifth = rooms.join(id, 5, Audience::Plain).unwrap();
    rooms.leave(id, fifth, Audience::Plain, now);
    assert_eq!(told(&mut rooms), Vec::<usize>::new());
    rooms.leave(id, first, Audience::Enveloped, now);
    assert_eq!(told(&mut rooms), vec![2]);
}

/// Found by the cluster presence property (app/redis/fake_redis.rs): a v1 member whose
/// welcome told another count than the others were told, the count then back to
/// theirs before the presence, was never told the count.
#[test]
fn a_joiner_told_another_count_by_its_welcome_is_told_when_the_count_comes_back() {
    let now = Instant::now();
    let mut rooms = Rooms::new(limits());
    let id = rooms.find_or_create("a", now).unwrap();
    let told = |rooms: &mut Rooms| {
        let mut counts = Vec::new();
        rooms.take_presence(|room| counts.push(room.online()));
        counts
    };
    rooms.join(id, 1, Audience::Enveloped).unwrap();
    let second = rooms.join(id, 2, Audience::Plain).unwrap();
    assert_eq!(told(&mut rooms), vec![2]);
    // A third's welcome says 3; the second goes before the presence: 2 again.
    rooms.join(id, 3, Audience::Enveloped).unwrap();
    rooms.leave(id, second, Audience::Plain, now);
    assert_eq!(told(&mut rooms), vec![2], "the third is told");
    assert_eq!(told(&mut rooms), Vec::<usize>::new(), "once");
    // The other nodes' members count the same way (with Redis).
    rooms.set_remote(id, 4);
    rooms.join(id, 4, Audience::Enveloped).unwrap();
    rooms.set_remote(id, 0);
    assert_eq!(told(&mut rooms), vec![3]);
}

#[test]
fn a_room_that_never_had_a_message_is_freed_when_its_last_member_leaves() {
    let now = Instant::now();
    let mut rooms = Rooms::new(limits());
    let id = rooms.find_or_create("a", now).unwrap();
    let one = rooms.join(id, 1, Audience::Enveloped).unwrap();
    let two = rooms.join(id, 2, Audience::Plain).unwrap();
    rooms.leave(id, one, Audience::Enveloped, now);
    assert_eq!(rooms.find("a"), Some(id), "a member is still in it");
    rooms.leave(id, two, Audience::Plain, now);
    assert_eq!((rooms.find("a"), rooms.len(), rooms.expired), (None, 0, 1));
    // One that had a message is kept for its TTL (its history can be resumed).
    let b = rooms.find_or_create("b", now).unwrap();
    let key = rooms.join(b, 1, Audience::Enveloped).unwrap();
    rooms.publish(b, &stored(1));
    rooms.leave(b, key, Audience::Enveloped, now);
    assert_eq!(rooms.find("b"), Some(b));
}

#[test]
fn a_full_table_frees_the_empty_room_emptied_longest_ago_before_it_refuses() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut rooms = Rooms::new(RoomLimits { max_rooms: 3, ..limits() });
    let made = |rooms: &mut Rooms, name: &str, left: Option<u64>| {
        let id = rooms.find_or_create(name, t0).unwrap();
        let key = rooms.join(id, 1, Audience::Enveloped).unwrap();
        rooms.publish(id, &stored(1));
        if let Some(ms) = left {
            rooms.leave(id, key, Audience::Enveloped, at(ms));
        }
        id
    };
    let a = made(&mut rooms, "a", Some(20));
    made(&mut rooms, "b", Some(10));
    made(&mut rooms, "c", None);
    // b was emptied first: it goes, with its history; a and c (a member) stay.
    let d = rooms.find_or_create("d", at(30)).unwrap();
    assert_eq!((rooms.find("b"), rooms.find("a"), rooms.len()), (None, Some(a), 3));
    assert_eq!(rooms.history_totals(), (2, 2));
    // a is joined again: its entry is skipped, and d (made, never joined) goes for e.
    rooms.join(a, 2, Audience::Plain).unwrap();
    let e = rooms.find_or_create("e", at(40)).unwrap();
    assert_eq!((rooms.find("d"), rooms.find("a"), rooms.find("e")), (None, Some(a), Some(e)));
    // With a member in every room, the table refuses.
    rooms.join(e, 3, Audience::Plain).unwrap();
    assert_eq!(rooms.find_or_create("f", at(50)), Err(RoomLimit));
    assert_eq!((rooms.len(), rooms.expired), (3, 2));
    let _ = d;
}

#[test]
fn expiry_entries_of_rooms_freed_early_do_not_pile_up() {
    let now = Instant::now();
    let mut rooms = Rooms::new(limits());
    for i in 0..10_000 {
        let id = rooms.find_or_create(&format!("r{i}"), now).unwrap();
        let key = rooms.join(id, 1, Audience::Enveloped).unwrap();
        rooms.leave(id, key, Audience::Enveloped, now);
    }
    assert_eq!((rooms.len(), rooms.created, rooms.expired), (0, 10_000, 10_000));
    assert!(rooms.expiring.len() <= 2 * rooms.len() + 65, "{} entries", rooms.expiring.len());
}
