//! The report: one JSON line (stdout) and a summary (stderr).

use std::fmt::Write as _;
use std::time::Instant;

use crate::args::Workload;
use crate::generator::Gen;
use crate::procfs::{cpu_seconds, rss_bytes};

impl Gen {
    pub(crate) fn report(&self) {
        let a = &self.a;
        let end = self.window_end.unwrap_or_else(Instant::now);
        let secs = end.duration_since(self.window_start).as_secs_f64().max(1e-9);
        let server_cpu = match (self.cpu_start, a.server_pid.and_then(cpu_seconds)) {
            (Some(s), Some(e)) => Some(e - s),
            _ => None,
        };
        let self_cpu = match (self.self_cpu_start, cpu_seconds(std::process::id())) {
            (Some(s), Some(e)) => Some(e - s),
            _ => None,
        };
        let rss_end = a.server_pid.and_then(rss_bytes);
        let us = |ns: u64| ns as f64 / 1000.0;
        let p50 = us(self.hist.quantile(0.50));
        let p99 = us(self.hist.quantile(0.99));
        let mut j = String::new();
        let _ = write!(j, "{{\"workload\":\"{}\",\"label\":\"{}\",\"raw\":{}", a.workload.name(), a.label, a.raw);
        let _ = write!(
            j,
            ",\"seconds\":{secs:.3},\"opened\":{},\"failed\":{},\"errors\":{}",
            self.c.opened, self.c.failed, self.c.errors
        );
        let per = |count: u64| count as f64 / secs;
        let (count, unit) = match a.workload {
            Workload::Echo => {
                let _ = write!(
                    j,
                    ",\"conns\":{},\"size\":{},\"messages\":{},\"msgs_per_s\":{:.0}",
                    a.conns,
                    a.size,
                    self.c.messages,
                    per(self.c.messages)
                );
                (self.c.messages, "msg")
            }
            Workload::Broadcast => {
                let _ = write!(
                    j,
                    ",\"subscribers\":{},\"publishers\":{},\"size\":{},\"published\":{},\"deliveries\":{},\"deliveries_per_s\":{:.0},\"published_per_s\":{:.0}",
                    a.subscribers, a.publishers, a.size, self.c.messages, self.c.deliveries, per(self.c.deliveries), per(self.c.messages)
                );
                (self.c.deliveries, "delivery")
            }
            Workload::Rooms => {
                let _ = write!(
                    j,
                    ",\"rooms\":{},\"members\":{},\"publishers\":{},\"window\":{},\"size\":{},\"published\":{},\"deliveries\":{},\"deliveries_per_s\":{:.0},\"published_per_s\":{:.0},\"misroutes\":{},\"gaps\":{},\"reordered\":{}",
                    a.rooms.unwrap_or(1),
                    a.members,
                    a.publishers,
                    a.window,
                    a.size,
                    self.c.messages,
                    self.c.deliveries,
                    per(self.c.deliveries),
                    per(self.c.messages),
                    self.c.misroutes,
                    self.c.gaps,
                    self.c.reordered
                );
                (self.c.deliveries, "delivery")
            }
            Workload::Connect => {
                let _ = write!(
                    j,
                    ",\"inflight\":{},\"handshakes\":{},\"cycles\":{},\"handshakes_per_s\":{:.0}",
                    a.inflight,
                    self.c.handshakes,
                    self.c.cycles,
                    per(self.c.cycles)
                );
                (self.c.cycles, "handshake")
            }
            Workload::Idle | Workload::EmptyRooms => {
                let _ = write!(j, ",\"conns\":{}", a.conns);
                (0, "conn")
            }
        };
        if let (Some(rooms), Workload::Idle | Workload::Connect) = (a.rooms, a.workload) {
            let _ = write!(j, ",\"rooms\":{rooms}");
        }
        if !matches!(a.workload, Workload::Idle | Workload::EmptyRooms) {
            let _ = write!(j, ",\"p50_us\":{p50:.1},\"p99_us\":{p99:.1}");
        }
        if matches!(a.workload, Workload::Broadcast | Workload::Rooms) {
            // The slowest delivery, and the longest time with none (a server's pause).
            let max = us(self.hist.quantile(1.0));
            let _ = write!(j, ",\"max_us\":{max:.1},\"max_gap_us\":{:.1}", us(self.c.max_gap_ns));
        }
        let mut deflate_line = String::new();
        if matches!(a.workload, Workload::Echo | Workload::Broadcast | Workload::Rooms) {
            // Bytes of the counted messages: on the wire (frame headers included) and
            // inflated; the socket bytes read while the window was open (all frames).
            let c = &self.c;
            let ratio = c.wire_bytes as f64 / c.payload_bytes.max(1) as f64;
            let socket = self.bytes_in_end.unwrap_or(c.bytes_in) - self.bytes_in_start;
            let _ = write!(
                j,
                ",\"wire_bytes\":{},\"payload_bytes\":{},\"ratio\":{ratio:.4},\"socket_bytes\":{socket}",
                c.wire_bytes, c.payload_bytes
            );
            if let Some(corpus) = &self.corpus {
                let _ = write!(
                    j,
                    ",\"corpus\":\"{}\",\"doc_mean_bytes\":{:.0},\"bad_payloads\":{}",
                    corpus.kind.name(),
                    corpus.mean_len(),
                    c.bad_payloads
                );
            }
            if a.deflate {
                let g = self.agreement.unwrap_or_default();
                let _ = write!(
                    j,
                    ",\"deflate\":true,\"deflate_conns\":{},\"server_no_context_takeover\":{},\"client_no_context_takeover\":{},\"compressed\":{},\"sent_compressed\":{},\"inflated\":{},\"inflate_memo_hits\":{}",
                    c.deflate_conns,
                    g.server_no_context_takeover,
                    g.client_no_context_takeover,
                    c.compressed,
                    c.sent_compressed,
                    self.inflate.inflated,
                    self.inflate.memo_hits
                );
            }
            if a.deflate || self.corpus.is_some() {
                deflate_line = format!(
                    ", wire {:.1}% of the payload ({} of {} B{})",
                    100.0 * ratio,
                    c.wire_bytes,
                    c.payload_bytes,
                    if a.deflate {
                        format!(", {} of {} conns compressed", c.deflate_conns, c.opened)
                    } else {
                        String::new()
                    }
                );
                if c.bad_payloads > 0 {
                    deflate_line.push_str(&format!(", {} BAD PAYLOADS", c.bad_payloads));
                }
            }
        }
        if let Some(cpu) = server_cpu {
            let _ = write!(j, ",\"server_cpu_s\":{cpu:.2}");
            if count > 0 {
                let _ = write!(j, ",\"server_cpu_us_per_{unit}\":{:.3}", cpu * 1e6 / count as f64);
            }
        }
        if let Some(cpu) = self_cpu {
            let _ = write!(j, ",\"loadgen_cpu_s\":{cpu:.2}");
        }
        let mut rss_line = String::new();
        if let (Some(before), Some(open), Some(end)) = (self.rss_start, self.rss_open, rss_end) {
            let _ = write!(j, ",\"rss_before\":{before},\"rss_open\":{open},\"rss_end\":{end}");
            if a.workload == Workload::Idle && self.c.opened > 0 {
                let n = self.c.opened as f64;
                let at_open = (open as f64 - before as f64) / n;
                let at_end = (end as f64 - before as f64) / n;
                let _ = write!(j, ",\"rss_per_conn_open\":{at_open:.0},\"rss_per_conn_end\":{at_end:.0}");
                rss_line = format!(
                    ", server RSS +{at_end:.0} B/conn after {secs:.0} s idle ({at_open:.0} B/conn just after opening)"
                );
            }
        }
        let _ = write!(j, ",\"skipped\":{},\"pings\":{}}}", self.c.skipped_text, self.c.pings);
        println!("{j}");
        if a.quiet {
            return;
        }
        let cpu_line = match server_cpu {
            Some(cpu) if count > 0 => format!(", server CPU {:.2} us/{unit}", cpu * 1e6 / count as f64),
            _ => String::new(),
        };
        let gen_line = self_cpu.map_or(String::new(), |c| format!(", load generator busy {:.0}%", 100.0 * c / secs));
        let what = match a.workload {
            Workload::Echo => format!("{} conns x {} B: {:.0} msg/s, rtt p50 {p50:.0} us p99 {p99:.0} us", a.conns, a.size, per(self.c.messages)),
            Workload::Broadcast => format!(
                "{} subscribers + {} publishers x {} B: {:.0} deliveries/s ({:.0} msg/s published), latency p50 {p50:.0} us p99 {p99:.0} us",
                a.subscribers, a.publishers, a.size, per(self.c.deliveries), per(self.c.messages)
            ),
            Workload::Rooms => format!(
                "{} rooms x {} members, {} publishers x {} B: {:.0} deliveries/s ({:.0} msg/s published), latency p50 {p50:.0} us p99 {p99:.0} us, {} misroutes, {} gaps, {} reordered",
                a.rooms.unwrap_or(1), a.members, a.publishers, a.size, per(self.c.deliveries), per(self.c.messages), self.c.misroutes, self.c.gaps, self.c.reordered
            ),
            Workload::Connect => format!("{} in flight: {:.0} handshakes/s (open, upgrade, close), upgrade p50 {p50:.0} us p99 {p99:.0} us", a.inflight, per(self.c.cycles)),
            Workload::Idle | Workload::EmptyRooms => format!("{} of {} conns open", self.c.opened, a.conns),
        };
        let errs = if self.c.failed + self.c.errors > 0 {
            format!(" [{} failed, {} errors]", self.c.failed, self.c.errors)
        } else {
            String::new()
        };
        eprintln!(
            "{} {}{}: {what}{cpu_line}{rss_line}{deflate_line}{gen_line}{errs}",
            a.workload.name(),
            a.label,
            if a.raw { " (raw)" } else { "" }
        );
    }
}
