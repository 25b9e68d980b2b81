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
use test_support::conn::{flush_app, masked_frame, open_app, NoSocket};

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
