//! The real server over real sockets, driven by tungstenite or raw bytes.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

mod broadcast_room {
    use super::*;

    #[test]
    fn a_new_client_gets_the_welcome_then_history_then_live_messages_its_own_included() {
        let server = Server::start(&["--history", "2"]);
        let mut a = connect(&server);
        assert_eq!(text(&mut a), WELCOME);
        for m in ["one", "two", "three"] {
            send_text(&mut a, m);
            assert_eq!(text(&mut a), m, "the sender gets its own message");
        }
        a.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
        assert_eq!(next_message(&mut a), Message::binary(vec![0u8, 1, 2, 255]));

        let mut b = connect(&server);
        assert_eq!(text(&mut b), WELCOME);
        assert_eq!(text(&mut b), "three", "history keeps the last 2, in order");
        assert_eq!(next_message(&mut b), Message::binary(vec![0u8, 1, 2, 255]), "binary stays binary");
        send_text(&mut b, "from b");
        assert_eq!(text(&mut a), "from b");
        assert_eq!(text(&mut b), "from b");
    }

    #[test]
    fn an_empty_welcome_sends_no_greeting_and_a_custom_one_is_sent_verbatim() {
        let server = Server::start(&["--welcome", ""]);
        let mut a = connect(&server);
        send_text(&mut a, "first");
        assert_eq!(text(&mut a), "first");
        let server = Server::start(&["--welcome", "héllo <b>"]);
        let mut a = connect(&server);
        assert_eq!(text(&mut a), "héllo <b>");
    }

    #[test]
    fn a_client_that_vanishes_is_dropped_and_the_room_goes_on() {
        let server = Server::start(&[]);
        let mut a = connect(&server);
        text(&mut a);
        let b = connect(&server);
        drop(b);
        let mut c = connect(&server);
        text(&mut c);
        send_text(&mut a, "still here");
        assert_eq!(text(&mut a), "still here");
        assert_eq!(text(&mut c), "still here");
    }

    #[test]
    fn a_slow_consumer_is_closed_while_the_others_get_every_message() {
        let server = Server::start(&["--max-backpressure", "262144", "--history", "0", "--ping-interval", "0"]);
        let mut slow = raw_upgraded(&server);
        let mut fast = connect(&server);
        assert_eq!(text(&mut fast), WELCOME);
        let payload = vec![7u8; 16 * 1024];
        let count = 1000; // 16 MiB in all, far over the slow reader's 256 KiB allowance
        for i in 0..count {
            fast.send(Message::binary(payload.clone())).unwrap();
            match next_message(&mut fast) {
                Message::Binary(b) => assert_eq!(b.len(), payload.len(), "message {i}"),
                other => panic!("{other:?}"),
            }
        }
        // The slow one finds, after what fitted, a 1008 close, then end of stream.
        let bytes = read_to_end(&mut slow);
        // It got what the kernel's socket buffers held plus at most its allowance.
        assert!(bytes.len() < 8 << 20, "the slow reader's queue was freed ({} bytes)", bytes.len());
        assert_eq!(close_code_of(&bytes), Some(1008));
    }

    #[test]
    fn a_busy_room_delivers_every_message_to_everyone_in_publisher_order() {
        // With 400 subscribers each fan-out is a long flush that reads new input part
        // way, so messages arriving meanwhile join writes still to come. Every
        // subscriber must still get every message, each publisher's in the order sent.
        let server = Server::start(&["--welcome", "", "--history", "0", "--ping-interval", "0"]);
        let mut subscribers: Vec<_> = (0..400).map(|_| raw_upgraded(&server)).collect();
        let (publishers, per_publisher) = (4u8, 100u16);
        let senders: Vec<_> = (0..publishers)
            .map(|p| {
                let mut s = raw_upgraded(&server);
                std::thread::spawn(move || {
                    // Each message is sent once the previous one came back, so most
                    // arrive while the server is busy writing to the room.
                    let mut bytes = Vec::new();
                    for i in 0..per_publisher {
                        let [hi, lo] = i.to_be_bytes();
                        s.write_all(&masked(0x82, &[p, hi, lo])).unwrap();
                        read_frames_until(&mut s, &mut bytes, |frames| {
                            frames.iter().any(|(_, m)| m[..] == [p, hi, lo])
                        });
                    }
                    s // kept open until every subscriber has read
                })
            })
            .collect();
        let expected = usize::from(publishers) * usize::from(per_publisher);
        for (n, sub) in subscribers.iter_mut().enumerate() {
            let mut bytes = Vec::new();
            read_frames_until(sub, &mut bytes, |frames| frames.len() >= expected);
            let mut next = vec![0u16; usize::from(publishers)];
            for (first, payload) in server_frames(&bytes) {
                assert_eq!((first, payload.len()), (0x82, 3), "subscriber {n}");
                let (p, i) = (usize::from(payload[0]), u16::from_be_bytes([payload[1], payload[2]]));
                assert_eq!(i, next[p], "subscriber {n}, publisher {p}");
                next[p] += 1;
            }
        }
        for sender in senders {
            drop(sender.join().unwrap());
        }
    }
}

mod echo_mode {
    use super::*;

    #[test]
    fn echo_mode_alone_is_a_pure_echo_server() {
        let server = Server::start(&["--mode", "echo"]);
        let mut a = connect(&server);
        let mut b = connect(&server);
        send_text(&mut a, "ping?");
        assert_eq!(text(&mut a), "ping?", "no welcome, no history: the first frame is the echo");
        let big = vec![42u8; 200_000];
        a.send(Message::binary(big.clone())).unwrap();
        assert_eq!(next_message(&mut a), Message::binary(big));
        send_text(&mut b, "b only");
        assert_eq!(text(&mut b), "b only", "b hears only its own echo");
    }

    #[test]
    fn large_echoes_that_overflow_the_socket_arrive_whole_and_in_order() {
        // An 8 MiB echo is more than the socket takes at once: its start is written
        // straight from the read buffer and the rest queued; what follows (a small echo,
        // a pong, more echoes) must come after it, each frame whole.
        let server = Server::start(&["--mode", "echo", "--max-message", "16777216", "--ping-interval", "0"]);
        let mut reader = raw_upgraded(&server);
        let mut writer = reader.try_clone().unwrap();
        let payloads: Vec<Vec<u8>> = [8 << 20, 20, 100_000, 1 << 20, 70_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j % 251) as u8).collect())
            .collect();
        let mut input = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            input.extend(masked(0x82, p));
            if i == 1 {
                input.extend(masked(0x89, b"in between"));
            }
        }
        let sender = std::thread::spawn(move || writer.write_all(&input));
        // Let the server fill the socket before we start reading.
        std::thread::sleep(Duration::from_millis(300));
        let mut bytes = Vec::new();
        read_frames_until(&mut reader, &mut bytes, |frames| frames.len() > payloads.len());
        sender.join().unwrap().unwrap();
        let frames = server_frames(&bytes);
        let mut expected: Vec<(u8, Vec<u8>)> = payloads.into_iter().map(|p| (0x82, p)).collect();
        expected.insert(2, (0x8A, b"in between".to_vec()));
        assert_eq!(frames.len(), expected.len());
        for (i, (got, want)) in frames.iter().zip(&expected).enumerate() {
            assert!(
                got == want,
                "frame {i}: got {:#x} with {} bytes, want {:#x} with {}",
                got.0,
                got.1.len(),
                want.0,
                want.1.len()
            );
        }
    }

    #[test]
    fn echo_with_history_replays_earlier_messages_after_the_welcome() {
        let server = Server::start(&["--mode", "echo", "--history", "5", "--welcome", "hi"]);
        let mut a = connect(&server);
        assert_eq!(text(&mut a), "hi");
        send_text(&mut a, "kept");
        assert_eq!(text(&mut a), "kept");
        let mut b = connect(&server);
        assert_eq!(text(&mut b), "hi");
        assert_eq!(text(&mut b), "kept");
    }

    #[test]
    fn a_client_that_never_reads_its_echoes_costs_bounded_memory() {
        let server = Server::start(&["--mode", "echo", "--max-backpressure", "1048576", "--ping-interval", "0"]);
        let mut flood = raw_upgraded(&server);
        flood.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
        let frame = masked(0x82, &vec![1u8; 64 * 1024]);
        let start_rss = rss_bytes(server.child.id());
        let mut sent = 0usize;
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end && sent < 64 << 20 {
            match flood.write(&frame) {
                Ok(n) => sent += n,
                Err(_) => break, // the server stopped reading: TCP backpressure
            }
        }
        let rss = rss_bytes(server.child.id());
        assert!(rss < start_rss + (24 << 20), "RSS grew from {start_rss} to {rss} after {sent} bytes");
        let mut other = connect(&server);
        send_text(&mut other, "unaffected");
        assert_eq!(text(&mut other), "unaffected");
    }
}

mod heartbeat {
    use super::*;

    #[test]
    fn a_client_answering_pings_stays_and_a_silent_one_is_closed_with_1011() {
        let server = Server::start(&["--mode", "echo", "--ping-interval", "0.2", "--ping-timeout", "0.3"]);
        let mut silent = raw_upgraded(&server);
        let mut alive = connect(&server);
        alive.get_ref().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let start = Instant::now();
        let mut pings = 0;
        while start.elapsed() < Duration::from_millis(1200) {
            match alive.read() {
                Ok(Message::Ping(_)) => pings += 1, // tungstenite queues the pong
                Ok(other) => panic!("{other:?}"),
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            let _ = alive.flush();
        }
        assert!(pings >= 3, "pings every 0.2 s, got {pings}");
        alive.get_ref().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        send_text(&mut alive, "still open");
        assert_eq!(text(&mut alive), "still open");

        // The silent one got pings, then a 1011 close, then end of stream.
        let bytes = read_to_end(&mut silent);
        let frames = server_frames(&bytes);
        assert!(frames.iter().any(|(first, p)| *first == 0x89 && p.len() == 4), "{frames:?}");
        assert_eq!(close_code_of(&bytes), Some(1011));
    }

    #[test]
    fn a_peer_that_reads_but_never_answers_pings_gets_1011_then_end_of_stream_at_once() {
        // The close timeout is long: the end must not wait for it (RFC 6455 7.1.7).
        let server = Server::start(&["--mode", "echo", "--ping-interval", "0.3", "--ping-timeout", "0.4"]);
        let mut silent = raw_upgraded(&server);
        let start = Instant::now();
        let bytes = read_to_end(&mut silent);
        let elapsed = start.elapsed();
        assert_eq!(close_code_of(&bytes), Some(1011), "{:?}", server_frames(&bytes));
        assert!(elapsed < Duration::from_millis(300 + 400 + 500), "end of stream after {elapsed:?}");
    }

    #[test]
    fn client_pings_are_answered_with_the_same_payload() {
        let server = Server::start(&["--mode", "echo"]);
        let mut ws = connect(&server);
        ws.send(Message::Ping(b"marco".to_vec().into())).unwrap();
        match ws.read().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"marco"),
            other => panic!("{other:?}"),
        }
    }
}

mod protocol_errors {
    use super::*;

    fn answer_to(args: &[&str], bytes: &[u8]) -> Vec<u8> {
        let server = Server::start(args);
        let mut s = raw_upgraded(&server);
        s.write_all(bytes).unwrap();
        read_to_end(&mut s)
    }

    #[test]
    fn an_unmasked_frame_is_closed_with_1002() {
        assert_eq!(close_code_of(&answer_to(&["--mode", "echo"], &[0x81, 0x02, b'h', b'i'])), Some(1002));
    }

    #[test]
    fn reserved_bits_and_opcodes_are_closed_with_1002() {
        assert_eq!(close_code_of(&answer_to(&["--mode", "echo"], &masked(0xC1, b"x"))), Some(1002));
        assert_eq!(close_code_of(&answer_to(&["--mode", "echo"], &masked(0x83, b"x"))), Some(1002));
    }

    #[test]
    fn invalid_utf8_is_closed_with_1007_before_the_message_ends() {
        let server = Server::start(&["--mode", "echo"]);
        let mut s = raw_upgraded(&server);
        // Invalid bytes in the first fragment of an unfinished message.
        s.write_all(&masked(0x01, &[b'a', 0xC0, 0x80])).unwrap();
        let bytes = read_to_end(&mut s);
        assert_eq!(close_code_of(&bytes), Some(1007));
    }

    #[test]
    fn a_message_over_the_limit_is_closed_with_1009_counting_all_fragments() {
        let mut bytes = masked(0x02, &[0; 60]);
        bytes.extend(masked(0x80, &[0; 60]));
        assert_eq!(close_code_of(&answer_to(&["--mode", "echo", "--max-message", "100"], &bytes)), Some(1009));
    }

    #[test]
    fn a_huge_declared_length_is_closed_with_1009_at_once() {
        let mut header = vec![0x82, 0xFF];
        header.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(close_code_of(&answer_to(&["--mode", "echo"], &header)), Some(1009));
    }

    #[test]
    fn a_continuation_without_a_start_is_closed_with_1002() {
        assert_eq!(close_code_of(&answer_to(&["--mode", "echo"], &masked(0x80, b"x"))), Some(1002));
    }
}

mod closing {
    use super::*;

    #[test]
    fn a_close_is_answered_with_the_same_code_and_the_server_ends_the_stream() {
        let server = Server::start(&["--mode", "echo"]);
        let mut ws = connect(&server);
        ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).unwrap();
        let reply = loop {
            match ws.read() {
                Ok(Message::Close(frame)) => break frame,
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(reply.map(|f| f.code), Some(CloseCode::Normal));
        // tungstenite sees the server end the TCP stream after the close handshake.
        assert!(matches!(ws.read(), Err(tungstenite::Error::ConnectionClosed)));
    }

    #[test]
    fn an_invalid_close_code_is_answered_with_1002() {
        let server = Server::start(&["--mode", "echo"]);
        let mut s = raw_upgraded(&server);
        s.write_all(&masked(0x88, &[0x03, 0xED])).unwrap(); // 1005 must not be sent
        assert_eq!(close_code_of(&read_to_end(&mut s)), Some(1002));
    }
}

mod http {
    use super::*;

    fn request(server: &Server, text: &str) -> String {
        let mut s = raw(server);
        s.write_all(text.as_bytes()).unwrap();
        String::from_utf8_lossy(&read_to_end(&mut s)).into_owned()
    }

    fn upgrade_with(replace: &str, with: &str) -> String {
        UPGRADE.replace(replace, with)
    }

    #[test]
    fn the_root_serves_the_chat_page_and_other_paths_404() {
        let server = Server::start(&[]);
        let page = request(&server, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.contains("Content-Type: text/html"));
        assert!(page.to_lowercase().contains("<!doctype html>"));
        assert!(request(&server, "GET /missing HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404 "));
    }

    #[test]
    fn a_request_sent_with_its_end_of_stream_is_forgotten_at_once() {
        // Data and FIN may arrive in one segment: one readiness edge for both. The
        // server must notice the end of stream then, not linger until a timer.
        let server = Server::start(&[]);
        let pid = server.child.id().to_string();
        let signal = |sig: &str| std::process::Command::new("kill").args([sig, &pid]).status().unwrap();
        let mut sockets: Vec<_> = (0..5).map(|_| raw(&server)).collect();
        std::thread::sleep(Duration::from_millis(200)); // accepted, registered, idle
                                                        // Stopped, the server finds request and FIN waiting together when it resumes.
        signal("-STOP");
        for s in &mut sockets {
            s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        signal("-CONT");
        for s in &mut sockets {
            assert!(read_to_end(s).starts_with(b"HTTP/1.1 404 "));
        }
        let lingering = |server: &Server| {
            let mut s = raw(server);
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let text = String::from_utf8(read_to_end(&mut s)).unwrap();
            text.lines().any(|l| l == "mioket_connections{state=\"closing\"} 0")
        };
        let start = Instant::now();
        assert!(
            wait_until(Duration::from_secs(1), || lingering(&server).then_some(())).is_some(),
            "still lingering after {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_wrong_version_gets_426_naming_version_13() {
        let server = Server::start(&[]);
        let answer = request(&server, &upgrade_with("Version: 13", "Version: 8"));
        assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
        assert!(answer.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(answer.ends_with("only Sec-WebSocket-Version 13 is supported\n"));
    }

    #[test]
    fn bad_upgrades_get_400_and_non_get_405_each_with_a_reason() {
        let server = Server::start(&[]);
        let no_key = request(&server, &upgrade_with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""));
        assert!(
            no_key.starts_with("HTTP/1.1 400 ") && no_key.ends_with("Sec-WebSocket-Key must be 16 bytes in base64\n"),
            "{no_key}"
        );
        let post = request(&server, &upgrade_with("GET", "POST"));
        assert!(post.starts_with("HTTP/1.1 405 ") && post.ends_with("a WebSocket upgrade must be a GET\n"), "{post}");
    }

    #[test]
    fn a_refused_origin_gets_403_and_an_allowed_one_upgrades() {
        let server = Server::start(&["--allowed-origin", "http://good.example"]);
        let evil = request(
            &server,
            &upgrade_with("Host: localhost\r\n", "Host: localhost\r\nOrigin: http://evil.example\r\n"),
        );
        assert!(evil.starts_with("HTTP/1.1 403 "), "{evil}");
        let mut s = raw(&server);
        s.write_all(
            upgrade_with("Host: localhost\r\n", "Host: localhost\r\nOrigin: http://good.example\r\n").as_bytes(),
        )
        .unwrap();
        assert!(read_head(&mut s).starts_with("HTTP/1.1 101 "));
    }

    #[test]
    fn an_oversized_head_gets_431_without_waiting_for_its_end() {
        let server = Server::start(&[]);
        let mut s = raw(&server);
        let mut head = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        head.resize(20_000, b'a');
        s.write_all(&head).unwrap(); // never terminated
        let answer = String::from_utf8_lossy(&read_to_end(&mut s)).into_owned();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[test]
    fn heads_with_bare_newlines_are_understood() {
        let server = Server::start(&[]);
        let mut s = raw(&server);
        s.write_all(UPGRADE.replace("\r\n", "\n").as_bytes()).unwrap();
        assert!(read_head(&mut s).starts_with("HTTP/1.1 101 "));
        let page = request(&server, "GET /missing HTTP/1.1\nHost: x\n\n");
        assert!(page.starts_with("HTTP/1.1 404 "), "{page}");
    }

    #[test]
    fn a_tls_client_hello_or_binary_garbage_gets_400_at_once() {
        let server = Server::start(&["--handshake-timeout", "30"]);
        // The first bytes of a TLS 1.2/1.3 ClientHello record, then garbage.
        let hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5a, 0x1f];
        for first_bytes in [hello, b"\x00\x01\x02\x03", b"GET / HTTP/2\r\n"] {
            let start = Instant::now();
            let mut s = raw(&server);
            s.write_all(first_bytes).unwrap(); // and nothing more: the head never ends
            let answer = String::from_utf8_lossy(&read_to_end(&mut s)).into_owned();
            assert!(answer.starts_with("HTTP/1.1 400 ") && answer.ends_with("malformed HTTP request\n"), "{answer}");
            assert!(start.elapsed() < Duration::from_secs(3), "answered after {:?}", start.elapsed());
        }
    }

    #[test]
    fn an_absolute_form_target_is_routed_by_its_path() {
        let server = Server::start(&[]);
        let echo_page = request(&server, "GET http://localhost:8765/echo HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(echo_page.starts_with("HTTP/1.1 200 ") && echo_page.contains("text/html"), "{echo_page}");
        let missing = request(&server, "GET http://localhost/missing HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let mut s = raw(&server);
        s.write_all(UPGRADE.replacen("GET / ", &format!("GET ws://{}/ ", server.addr), 1).as_bytes()).unwrap();
        assert!(read_head(&mut s).starts_with("HTTP/1.1 101 "));
    }

    #[test]
    fn two_host_headers_and_upgrades_with_a_body_get_400_with_a_reason() {
        let server = Server::start(&[]);
        let two_hosts = request(&server, &upgrade_with("Host: localhost\r\n", "Host: localhost\r\nHost: evil\r\n"));
        assert!(
            two_hosts.starts_with("HTTP/1.1 400 ") && two_hosts.ends_with("more than one Host header\n"),
            "{two_hosts}"
        );
        let page = request(&server, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        assert!(page.starts_with("HTTP/1.1 400 "), "{page}");
        for body in ["Content-Length: 6\r\n", "Transfer-Encoding: chunked\r\n"] {
            // The "body" is a masked text frame: it must not be taken as one.
            let mut bytes = upgrade_with("Host: localhost\r\n", &format!("Host: localhost\r\n{body}")).into_bytes();
            bytes.extend(masked(0x81, b""));
            let mut s = raw(&server);
            s.write_all(&bytes).unwrap();
            let answer = String::from_utf8_lossy(&read_to_end(&mut s)).into_owned();
            assert!(
                answer.starts_with("HTTP/1.1 400 ") && answer.ends_with("a WebSocket upgrade must not have a body\n"),
                "{body:?}: {answer}"
            );
        }
    }

    #[test]
    fn every_upgrade_header_line_is_considered() {
        let server = Server::start(&[]);
        let mut s = raw(&server);
        s.write_all(upgrade_with("Upgrade: websocket\r\n", "Upgrade: h2c\r\nUpgrade: websocket\r\n").as_bytes())
            .unwrap();
        assert!(read_head(&mut s).starts_with("HTTP/1.1 101 "));
        let neither = request(&server, &upgrade_with("Upgrade: websocket\r\n", "Upgrade: h2c\r\nUpgrade: tls\r\n"));
        assert!(neither.starts_with("HTTP/1.1 400 "), "{neither}");
    }

    #[test]
    fn beyond_max_connections_upgrades_get_503() {
        let server = Server::start(&["--max-connections", "2"]);
        let _a = connect(&server);
        let _b = connect(&server);
        let answer = request(&server, UPGRADE);
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        drop(_a);
        let ok = wait_until(Duration::from_secs(5), || {
            let mut s = raw(&server);
            s.write_all(UPGRADE.as_bytes()).unwrap();
            read_head(&mut s).starts_with("HTTP/1.1 101 ").then_some(())
        });
        assert!(ok.is_some(), "a freed slot is usable again");
    }
}

mod lifecycle {
    use super::*;

    #[test]
    fn stalled_handshakes_do_not_delay_a_real_client_and_are_dropped_at_the_timeout() {
        let server = Server::start(&["--mode", "echo", "--handshake-timeout", "1"]);
        let mut stalled: Vec<_> = (0..300)
            .map(|_| {
                let mut s = raw(&server);
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
                s
            })
            .collect();
        let start = Instant::now();
        let mut ws = connect(&server);
        send_text(&mut ws, "served");
        assert_eq!(text(&mut ws), "served");
        assert!(start.elapsed() < Duration::from_millis(900), "served in {:?}", start.elapsed());
        for s in &mut stalled {
            assert!(read_to_end(s).is_empty(), "dropped without an answer");
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn sigterm_closes_every_client_with_1001_and_exits_0() {
        let mut server = Server::start(&["--close-timeout", "3"]);
        let mut clients: Vec<_> = (0..3).map(|_| connect(&server)).collect();
        for c in &mut clients {
            text(c);
        }
        let pid = server.child.id().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        for c in &mut clients {
            let frame = loop {
                match c.read() {
                    Ok(Message::Close(frame)) => break frame,
                    Ok(_) => continue,
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!(frame.map(|f| f.code), Some(CloseCode::Away));
            let _ = c.flush(); // tungstenite sends its close reply
        }
        let status = wait_until(Duration::from_secs(3), || server.child.try_wait().unwrap());
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    }

    #[test]
    fn sigint_waits_at_most_close_timeout_for_silent_clients() {
        let mut server = Server::start(&["--close-timeout", "0.5"]);
        let _silent = raw_upgraded(&server);
        let start = Instant::now();
        let status = server.signal_and_wait("-INT", Duration::from_secs(5));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        assert!(start.elapsed() >= Duration::from_millis(450), "{:?}", start.elapsed());
    }
}

mod command_line {
    use std::process::Command;

    #[test]
    fn help_explains_every_flag_and_bad_flags_fail_with_one_line() {
        let help = Command::new(env!("CARGO_BIN_EXE_mioket")).arg("--help").output().unwrap();
        assert!(help.status.success());
        let help = String::from_utf8(help.stdout).unwrap();
        for flag in [
            "--host",
            "--port",
            "--mode",
            "--welcome",
            "--history",
            "--ping-interval",
            "--ping-timeout",
            "--max-message",
            "--max-connections",
            "--max-backpressure",
            "--handshake-timeout",
            "--close-timeout",
            "--allowed-origin",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
        let bad = Command::new(env!("CARGO_BIN_EXE_mioket")).args(["--port", "lots"]).output().unwrap();
        assert!(!bad.status.success());
        let err = String::from_utf8(bad.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
