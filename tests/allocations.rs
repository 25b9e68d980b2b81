//! Heap allocations on the hot paths, counted by a global allocator that counts
//! per thread (tests run in parallel threads; each counts only its own).
//!
//! Steady state means: queues already grew to their working size once and were
//! drained, as they are in a running server.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use mioket::app::App;
use mioket::config::{Config, Mode};
use mioket::frame::Opcode;
use test_support::conn::{flush_app, masked_frame, open_app, open_app_with, upgrade_request, NoSocket};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // try_with: the slot may be gone while the thread is being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (alloc, alloc_zeroed and realloc) made by this thread during `f`.
fn allocations<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let result = f();
    (ALLOCATIONS.with(Cell::get) - before, result)
}

/// One message from `sender`, through the application's real path (read, then echo,
/// or number, keep in history and fan out to every member; queue the flushes).
fn send_from(app: &mut App<NoSocket>, sender: usize, frame: &[u8], input: &mut Vec<u8>, now: Instant) {
    input.clear();
    input.extend_from_slice(frame);
    app.handle_input(sender, input, now, |_, _| 0);
}

fn one_broadcast_costs_one_allocation(n: usize) {
    let now = Instant::now();
    let config = Config { welcome: None, ..Config::default() };
    let (mut app, ids) = open_app(config, n, now);
    let payload = b"a broadcast message of some length";
    let frame = masked_frame(Opcode::Text, payload, [1, 2, 3, 4]);
    let mut input = Vec::with_capacity(1024);
    let mut dirty = Vec::new();
    // Warm up: every queue, the history and the flush list grow to their working
    // capacity once.
    for _ in 0..200 {
        send_from(&mut app, ids[0], &frame, &mut input, now);
        assert_eq!(flush_app(&mut app, &mut dirty), n * (2 + payload.len()));
    }
    for _ in 0..5 {
        let deliveries = app.metrics.fanout_deliveries;
        let (count, ()) = allocations(|| send_from(&mut app, ids[0], &frame, &mut input, now));
        assert_eq!(app.metrics.fanout_deliveries - deliveries, n as u64);
        assert_eq!(count, 1, "one broadcast to {n} connections made {count} allocations");
        // Flushing (popping the shared references) allocates nothing either.
        let (count, bytes) = allocations(|| flush_app(&mut app, &mut dirty));
        assert_eq!(bytes, n * (2 + payload.len()));
        assert_eq!(count, 0, "flushing {n} queues made {count} allocations");
    }
}

#[test]
fn one_broadcast_to_10_connections_costs_exactly_one_allocation() {
    one_broadcast_costs_one_allocation(10);
}

#[test]
fn one_broadcast_to_1000_connections_costs_exactly_one_allocation() {
    one_broadcast_costs_one_allocation(1000);
}

/// A room of `plain` plain members and `v1` mioket.v1 members (the sender is the
/// first); one message from the sender costs `expected` allocations, whatever the
/// room's size: one per encoding its members need, and the publisher's ack.
fn one_publish_in_a_room(plain: usize, v1: usize, sender_v1: bool, frame: &[u8], expected: u64) {
    one_publish_of_each(plain, v1, sender_v1, |_| frame.to_vec(), expected);
}

/// The same with frame `frame(i)` for the i-th publish (publishes with ids: each its own,
/// as a repeated id is not published again).
fn one_publish_of_each(plain: usize, v1: usize, sender_v1: bool, frame: impl Fn(usize) -> Vec<u8>, expected: u64) {
    let now = Instant::now();
    let config = Config { welcome: None, ..Config::default() };
    let (other_plain, other_v1) = if sender_v1 { (plain, v1 - 1) } else { (plain - 1, v1) };
    let mut requests = vec![upgrade_request("/room", sender_v1)];
    requests.extend((0..other_plain).map(|_| upgrade_request("/room", false)));
    requests.extend((0..other_v1).map(|_| upgrade_request("/room", true)));
    let (mut app, ids) = open_app_with(config, &requests, now);
    let mut input = Vec::with_capacity(1024);
    let mut dirty = Vec::new();
    for i in 0..200 {
        send_from(&mut app, ids[0], &frame(i), &mut input, now);
        flush_app(&mut app, &mut dirty);
    }
    for i in 200..205 {
        let deliveries = app.metrics.fanout_deliveries;
        let frame = frame(i);
        let (count, ()) = allocations(|| send_from(&mut app, ids[0], &frame, &mut input, now));
        assert_eq!(app.metrics.fanout_deliveries - deliveries, (plain + v1) as u64);
        assert_eq!(count, expected, "one publish to {plain} plain and {v1} v1 members made {count} allocations");
        let (count, _) = allocations(|| flush_app(&mut app, &mut dirty));
        assert_eq!(count, 0, "flushing made {count} allocations");
    }
}

#[test]
fn a_publish_costs_one_allocation_per_encoding_its_room_needs_whatever_its_size() {
    let plain_text = masked_frame(Opcode::Text, b"a message of some length", [1, 2, 3, 4]);
    let op = masked_frame(Opcode::Text, br#"{"op":"publish","data":"a message of some length"}"#, [5, 6, 7, 8]);
    let op_with_id = |i: usize| {
        masked_frame(
            Opcode::Text,
            format!(r#"{{"op":"publish","data":"a message","id":"m-{i}"}}"#).as_bytes(),
            [5, 6, 7, 8],
        )
    };
    for n in [10, 1000] {
        // Plain only: the plain frame (members and history share it).
        one_publish_in_a_room(n, 0, false, &plain_text, 1);
        // v1 only: the envelope (members and history share it).
        one_publish_in_a_room(0, n, true, &op, 1);
        // Both: a plain frame and an envelope.
        one_publish_in_a_room(n / 2, n / 2, false, &plain_text, 2);
        one_publish_in_a_room(n / 2, n / 2, true, &op, 2);
        // An ack is the publisher's own: one more, whatever the room's size.
        one_publish_of_each(0, n, true, op_with_id, 2);
    }
}

#[test]
fn echoing_a_small_message_costs_no_allocation() {
    let now = Instant::now();
    let config = Config { mode: Mode::Echo, welcome: None, history: 0, ..Config::default() };
    let (mut app, ids) = open_app(config, 1, now);
    let payload = [0x42u8; 20];
    let frame = masked_frame(Opcode::Binary, &payload, [9, 8, 7, 6]);
    let mut input = Vec::with_capacity(1024);
    let mut dirty = Vec::new();
    for _ in 0..3 {
        send_from(&mut app, ids[0], &frame, &mut input, now);
        assert_eq!(flush_app(&mut app, &mut dirty), 2 + payload.len());
    }
    for _ in 0..5 {
        // What the event loop does per message: read from its buffer, frame, queue, write.
        let (count, written) = allocations(|| {
            send_from(&mut app, ids[0], &frame, &mut input, now);
            flush_app(&mut app, &mut dirty)
        });
        assert_eq!(written, 2 + payload.len());
        assert_eq!(count, 0, "echoing 20 bytes made {count} allocations");
    }
}

#[test]
fn the_counter_counts() {
    let (count, v) = allocations(|| vec![1u8; 10]);
    assert_eq!((count, v.len()), (1, 10));
}
