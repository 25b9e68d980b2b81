//! The empty-rooms workload: two runs of the connect workload and the server's RSS.

use std::time::{Duration, Instant};

use crate::args::{Args, Workload};
use crate::generator::Gen;
use crate::procfs::rss_bytes;
use crate::stamp::run_nonce;

/// empty-rooms: what an empty room costs the server. Two runs of the connect workload
/// (open, upgrade, close; --inflight at a time) against the same server: first N
/// cycles to one room, so that what connections leave behind in the allocator is
/// there before we measure, then N cycles each to a room of its own (names unique to
/// this run). The server keeps rooms without members for a while (mioket: --room-ttl),
/// so the second RSS growth divided by N is the cost of an empty room.
pub(crate) fn empty_rooms(a: Args) -> Result<(), String> {
    let pid = a.server_pid.ok_or("empty-rooms needs --server-pid")?;
    let n = a.rooms.unwrap_or(10_000);
    let base = a.room_base.strip_suffix("room-").unwrap_or(&a.room_base).to_string();
    let tag = format!("{:08x}", run_nonce());
    let phase = |rooms: usize, room_base: String| -> Result<Gen, String> {
        let mut p = a.clone();
        p.workload = Workload::Connect;
        p.rooms = Some(rooms);
        p.room_base = room_base;
        p.messages = Some(n as u64);
        p.duration = Duration::from_secs(3600);
        let mut g = Gen::new(p).map_err(|e| e.to_string())?;
        g.run().map_err(|e| e.to_string())?;
        Ok(g)
    };
    let rss_before = rss_bytes(pid);
    let warm = phase(1, format!("{base}empty-{tag}-warm"))?;
    std::thread::sleep(a.settle);
    let rss_warm = rss_bytes(pid);
    let started = Instant::now();
    let made = phase(n, format!("{base}empty-{tag}-"))?;
    let secs = started.elapsed().as_secs_f64();
    std::thread::sleep(a.settle);
    let rss_end = rss_bytes(pid);
    // Cycles past N went to rooms already made; a refused upgrade makes no room.
    let rooms = made.c.handshakes.min(n as u64);
    let (Some(before), Some(warmed), Some(end)) = (rss_before, rss_warm, rss_end) else {
        return Err(format!("cannot read the RSS of process {pid}"));
    };
    let per_room = (end as f64 - warmed as f64) / rooms.max(1) as f64;
    let per_room_cold = (end as f64 - before as f64) / rooms.max(1) as f64;
    println!(
        "{{\"workload\":\"empty-rooms\",\"label\":\"{}\",\"seconds\":{secs:.3},\"rooms\":{rooms},\"warm_cycles\":{},\"cycles\":{},\"failed\":{},\"errors\":{},\"rss_before\":{before},\"rss_warm\":{warmed},\"rss_end\":{end},\"rss_per_room\":{per_room:.0},\"rss_per_room_cold\":{per_room_cold:.0}}}",
        a.label,
        warm.c.cycles,
        made.c.cycles,
        warm.c.failed + made.c.failed,
        warm.c.errors + made.c.errors
    );
    if !a.quiet {
        eprintln!(
            "empty-rooms {}: {rooms} rooms made and left in {secs:.1} s: server RSS +{per_room:.0} B/room after the warm-up ({per_room_cold:.0} B/room counted from the start)",
            a.label
        );
    }
    Ok(())
}
