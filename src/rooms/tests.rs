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
    for bad in [
        "/%zz",
        "/%4",
        "/%",
        "/%FF",
        "/a%00b",
        "/a%0Ab",
        "/%7F",
        "/%C2%85",
        &format!("/{}", "a".repeat(129)),
        &format!("/{}", "%41".repeat(129)),
    ] {
        assert_eq!(room_from_path(bad), Err(InvalidName), "{bad}");
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
    rooms.find_or_create("a", now).unwrap();
    rooms.find_or_create("b", now).unwrap();
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
    // Many joins and leaves: one expiry entry at a time.
    for i in 0..1000u64 {
        let key = rooms.join(id, 1, Audience::V1).unwrap();
        rooms.leave(id, key, Audience::V1, t0 + Duration::from_millis(i));
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
    let first = rooms.join(id, 1, Audience::V1).unwrap();
    assert_eq!(told(&mut rooms), Vec::<usize>::new());
    // A second v1 member: the first is owed a presence; many changes make one update.
    rooms.join(id, 2, Audience::V1).unwrap();
    let plain = rooms.join(id, 3, Audience::Plain).unwrap();
    rooms.leave(id, plain, Audience::Plain, now);
    rooms.join(id, 4, Audience::Plain).unwrap();
    assert_eq!(told(&mut rooms), vec![3]);
    assert_eq!(told(&mut rooms), Vec::<usize>::new(), "told once");
    // Back to the count last told: nothing to tell.
    let fifth = rooms.join(id, 5, Audience::Plain).unwrap();
    rooms.leave(id, fifth, Audience::Plain, now);
    assert_eq!(told(&mut rooms), Vec::<usize>::new());
    rooms.leave(id, first, Audience::V1, now);
    assert_eq!(told(&mut rooms), vec![2]);
}
