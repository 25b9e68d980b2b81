//! The `mioket_output_queued_bytes` gauge (`App::queued`): what the clients' outgoing
//! queues hold, kept as each one grows, drains and goes, without a walk.

use std::io::{self, IoSlice};

use super::*;

/// Whether the gauge is what the clients' queues hold.
fn gauge_holds(app: &App<Peer>) -> bool {
    app.queued == app.clients.iter().map(|(_, c)| c.conn.queue_memory()).sum::<usize>()
}

/// Flushes every client with output; `written(id, bytes)` is what its socket does.
fn flush_with(app: &mut App<Peer>, written: impl Fn(usize, usize) -> io::Result<usize>) {
    let mut dirty = Vec::new();
    app.drain_dirty_into(&mut dirty);
    for id in dirty {
        app.flush(id, &mut |_: &mut Peer, slices: &[IoSlice<'_>]| written(id, slices.iter().map(|s| s.len()).sum()));
    }
}

/// `slow` reads nothing: its socket takes no byte; everyone else's takes everything.
fn publish_past(app: &mut App<Peer>, sender: usize, slow: usize, messages: usize, now: Instant) {
    for _ in 0..messages {
        feed(app, sender, &text(&"x".repeat(1000)), now);
        flush_with(app, |id, n| if id == slow { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(n) });
        assert!(gauge_holds(app));
    }
}

#[test]
fn the_gauge_follows_a_queue_that_grows_drains_and_goes_while_full() {
    let now = Instant::now();
    let mut app = App::new(Config { welcome: None, history: 0, ..config(Mode::Broadcast) });
    let (sender, _) = upgraded(&mut app, now);
    let (slow, _) = upgraded(&mut app, now);
    assert_eq!(app.queued, 0, "everything written");
    let mut last = 0;
    for _ in 0..5 {
        publish_past(&mut app, sender, slow, 2, now);
        assert!(app.queued > last, "it grows with the slow reader's queue");
        last = app.queued;
    }
    assert!(last >= 10 * 1000, "{last}");
    // It reads a little (one write of 1500 bytes), then everything.
    let once = std::cell::Cell::new(true);
    app.handle_writable(slow);
    flush_with(&mut app, |_, _| if once.replace(false) { Ok(1500) } else { Err(io::ErrorKind::WouldBlock.into()) });
    assert!(app.queued < last && app.queued > 0 && gauge_holds(&app));
    app.handle_writable(slow);
    flush_with(&mut app, |_, n| Ok(n));
    assert_eq!(app.queued, 0, "drained");
    // Full again, and the connection ends (a reset on write) with its queue full.
    publish_past(&mut app, sender, slow, 10, now);
    assert!(app.queued >= 10 * 1000);
    app.handle_writable(slow);
    flush_with(&mut app, |_, _| Err(io::ErrorKind::ConnectionReset.into()));
    assert!(!app.clients.contains(slow), "gone");
    assert_eq!(app.queued, 0);
}

#[test]
fn a_slow_consumer_cut_off_leaves_nothing_counted_once_gone() {
    let now = Instant::now();
    let limits = Limits { max_backpressure: 64 << 10, ..Limits::default() };
    let mut app = App::new(Config { welcome: None, history: 0, limits, ..config(Mode::Broadcast) });
    let (sender, _) = upgraded(&mut app, now);
    let (slow, _) = upgraded(&mut app, now);
    while app.metrics.slow_consumers == 0 {
        publish_past(&mut app, sender, slow, 1, now);
    }
    // Closing (1008): what is left is the close frame, until its socket ends.
    assert!(app.queued > 0 && app.queued < 1000, "{}", app.queued);
    app.handle_writable(slow);
    flush_with(&mut app, |_, _| Ok(0));
    assert!(!app.clients.contains(slow));
    assert_eq!(app.queued, 0);
}
