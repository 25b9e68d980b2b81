//! Heap allocations on the hot paths, counted by a global allocator that counts
//! per thread (tests run in parallel threads; each counts only its own).
//!
//! Steady state means: queues already grew to their working size once and were
//! drained, as they are in a running server.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use mioket::config::Limits;
use mioket::frame::Opcode;
use mioket::outqueue::{shared_message, Chunk};
use mioket::protocol::{Conn, Event};
use mioket::room::fan_out;
use test_support::conn::{drain, masked_frame, open_conn};

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

fn broadcast_once(conns: &mut [Conn], payload: &[u8], now: Instant, limits: &Limits) -> usize {
    let frame = shared_message(Opcode::Text, payload);
    let result = fan_out(&frame, conns.iter_mut(), now, limits);
    result.delivered
}

fn one_broadcast_costs_one_allocation(n: usize) {
    let limits = Limits::default();
    let now = Instant::now();
    let mut conns: Vec<Conn> = (0..n).map(|_| open_conn(now, &limits)).collect();
    let payload = b"a broadcast message of some length";
    // Warm up: every queue grows to its working capacity once.
    for _ in 0..3 {
        assert_eq!(broadcast_once(&mut conns, payload, now, &limits), n);
        conns.iter_mut().for_each(|c| {
            drain(c);
        });
    }
    for _ in 0..5 {
        let (count, delivered) = allocations(|| broadcast_once(&mut conns, payload, now, &limits));
        assert_eq!(delivered, n);
        assert_eq!(count, 1, "one broadcast to {n} connections made {count} allocations");
        // Draining (popping the shared references) allocates nothing either.
        let (count, bytes) = allocations(|| conns.iter_mut().map(drain).sum::<usize>());
        assert_eq!(bytes, n * (2 + payload.len()));
        assert_eq!(count, 0, "draining {n} queues made {count} allocations");
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
    let limits = Limits::default();
    let now = Instant::now();
    let mut conn = open_conn(now, &limits);
    let payload = [0x42u8; 20];
    let template = masked_frame(Opcode::Binary, &payload, [9, 8, 7, 6]);
    // What the event loop does per message: read from its buffer, frame, queue, write.
    let mut echo = |input: &mut Vec<u8>| -> usize {
        input.clear();
        input.extend_from_slice(&template);
        let (used, event) = conn.read(input, now, &limits);
        assert_eq!(used, template.len());
        let Some(Event::Message { opcode, payload: got, .. }) = event else { panic!("no message: {event:?}") };
        assert_eq!(got, &payload[..]);
        let chunk = Chunk::frame(opcode, got);
        conn.send(chunk, now, &limits).expect("under the limit");
        drain(&mut conn)
    };
    let mut input = Vec::with_capacity(1024);
    for _ in 0..3 {
        assert_eq!(echo(&mut input), 2 + payload.len());
    }
    for _ in 0..5 {
        let (count, written) = allocations(|| echo(&mut input));
        assert_eq!(written, 2 + payload.len());
        assert_eq!(count, 0, "echoing 20 bytes made {count} allocations");
    }
}

#[test]
fn the_counter_counts() {
    let (count, v) = allocations(|| vec![1u8; 10]);
    assert_eq!((count, v.len()), (1, 10));
}
