use super::*;

use serde_json::{json, Value};

/// An envelope frame's JSON, checked to be one unmasked, final text frame.
fn json_of(frame: &[u8]) -> Value {
    let (opcode, payload) = crate::frame::server_payload(frame).expect("a whole frame");
    assert_eq!(opcode, Opcode::Text);
    assert_eq!(frame[0], 0x81, "FIN and text");
    serde_json::from_slice(payload).expect("valid JSON")
}

fn err_of(text: &str) -> (OpError, Option<String>) {
    parse_op(text).expect_err(text)
}

#[test]
fn envelopes_are_the_documented_json_in_one_text_frame() {
    let mut e = Envelopes::default();
    let room = json_string("lo\"bby");
    assert_eq!(
        json_of(&e.message(&room, 42, Payload::Text("hi \u{1} é"))),
        json!({"type":"message","room":"lo\"bby","seq":42,"data":"hi \u{1} é"})
    );
    assert_eq!(
        json_of(&e.message(&room, 43, Payload::Binary(&[0, 1, 2, 255]))),
        json!({"type":"message","room":"lo\"bby","seq":43,"b64":"AAEC/w=="})
    );
    let welcome = e.welcome(&Welcome {
        room: &room,
        epoch: "0123456789abcdef",
        seq: 7,
        online: 3,
        text: Some("hello"),
        recovered: None,
        read_only: false,
    });
    assert_eq!(
        json_of(welcome.bytes()),
        json!({"type":"welcome","room":"lo\"bby","epoch":"0123456789abcdef","seq":7,"online":3,"text":"hello"})
    );
    let read_only = e.welcome(&Welcome {
        room: &room,
        epoch: "e",
        seq: 0,
        online: 1,
        text: None,
        recovered: None,
        read_only: true,
    });
    assert_eq!(
        json_of(read_only.bytes()),
        json!({"type":"welcome","room":"lo\"bby","epoch":"e","seq":0,"online":1,"text":null,"read_only":true})
    );
    let welcome = e.welcome(&Welcome {
        room: &room,
        epoch: "e",
        seq: 0,
        online: 1,
        text: None,
        recovered: Some(false),
        read_only: false,
    });
    assert_eq!(
        json_of(welcome.bytes()),
        json!({"type":"welcome","room":"lo\"bby","epoch":"e","seq":0,"online":1,"text":null,"recovered":false})
    );
    assert_eq!(json_of(e.ack("m\n1", &room, 9).bytes()), json!({"type":"ack","id":"m\n1","room":"lo\"bby","seq":9}));
    assert_eq!(json_of(&e.presence(&room, 12)), json!({"type":"presence","room":"lo\"bby","online":12}));
    assert_eq!(
        json_of(e.error(None, OpError::UnknownOp).bytes()),
        json!({"type":"error","id":null,"reason":"unknown op"})
    );
    assert_eq!(
        json_of(e.error(Some("x"), OpError::NotJoined).bytes()),
        json!({"type":"error","id":"x","reason":"room not joined"})
    );
}

#[test]
fn large_envelopes_get_the_longer_length_forms() {
    let mut e = Envelopes::default();
    for len in [100, 126, 70_000] {
        let text = "x".repeat(len);
        let frame = e.message("\"r\"", u64::MAX, Payload::Text(&text));
        assert_eq!(json_of(&frame)["data"], Value::String(text));
        assert_eq!(json_of(&frame)["seq"], json!(u64::MAX));
    }
}

#[test]
fn a_message_envelope_gives_back_its_payload() {
    let mut e = Envelopes::default();
    let text = e.message("\"r\"", 1, Payload::Text("a \"quoted\" line\n"));
    assert_eq!(payload_of_envelope(&text), Some((Opcode::Text, b"a \"quoted\" line\n".to_vec())));
    let binary = e.message("\"r\"", 2, Payload::Binary(&[9, 8, 7]));
    assert_eq!(payload_of_envelope(&binary), Some((Opcode::Binary, vec![9, 8, 7])));
}

#[test]
fn ops_parse_with_their_defaults() {
    assert_eq!(
        parse_op(r#"{"op":"publish","room":"lobby","data":"hi","id":"m-1"}"#),
        Ok(Op::Publish {
            room: Some("lobby".into()),
            payload: OwnedPayload::Text("hi".into()),
            id: Some("m-1".into())
        })
    );
    assert_eq!(
        parse_op(r#"{"op":"publish","b64":"AAEC"}"#),
        Ok(Op::Publish { room: None, payload: OwnedPayload::Binary(vec![0, 1, 2]), id: None })
    );
    // Unpadded base64 and unknown fields are fine; escapes are decoded.
    assert_eq!(
        parse_op(r#"{"op":"publish","b64":"AAE","extra":[1,{"a":2}],"data":null}"#),
        Ok(Op::Publish { room: None, payload: OwnedPayload::Binary(vec![0, 1]), id: None })
    );
    assert_eq!(
        parse_op(r#"{"op":"publish","data":"\u00e9\n"}"#),
        Ok(Op::Publish { room: None, payload: OwnedPayload::Text("é\n".into()), id: None })
    );
    assert_eq!(
        parse_op(r#"{"op":"join","room":"news","since":12,"epoch":"abc"}"#),
        Ok(Op::Join { room: "news".into(), resume: Some(Resume { since: 12, epoch: Some("abc".into()) }), id: None })
    );
    assert_eq!(
        parse_op(r#"{"op":"join","room":"news","epoch":"abc"}"#),
        Ok(Op::Join { room: "news".into(), resume: Some(Resume { since: 0, epoch: Some("abc".into()) }), id: None })
    );
    assert_eq!(parse_op(r#"{"op":"join","room":""}"#), Ok(Op::Join { room: "".into(), resume: None, id: None }));
    assert_eq!(parse_op(r#"{"op":"leave"}"#), Ok(Op::Leave { room: None, id: None }));
    assert_eq!(parse_op(r#"{"op":"ping","id":"h"}"#), Ok(Op::Ping { id: Some("h".into()) }));
    assert_eq!(parse_op(r#"{"op":"ping"}"#), Ok(Op::Ping { id: None }));
}

#[test]
fn each_bad_op_has_its_reason_and_keeps_a_valid_id() {
    let id = Some("q".to_string());
    for (text, expected) in [
        ("not json", (OpError::InvalidJson, None)),
        ("", (OpError::InvalidJson, None)),
        (r#"{"op":"publish","data":"x""#, (OpError::InvalidJson, None)),
        ("[1,2]", (OpError::InvalidJson, None)),
        (r#""publish""#, (OpError::InvalidJson, None)),
        (r#"{"op":"dance","id":"q"}"#, (OpError::UnknownOp, id.clone())),
        (r#"{"id":"q"}"#, (OpError::UnknownOp, id.clone())),
        (r#"{"op":5,"id":"q"}"#, (OpError::UnknownOp, id.clone())),
        (r#"{"op":"publish","id":"q"}"#, (OpError::InvalidField, id.clone())),
        (r#"{"op":"publish","data":"a","b64":"AA==","id":"q"}"#, (OpError::InvalidField, id.clone())),
        (r#"{"op":"publish","b64":"!!","id":"q"}"#, (OpError::InvalidField, id.clone())),
        (r#"{"op":"publish","data":5,"id":"q"}"#, (OpError::InvalidField, id.clone())),
        (r#"{"op":"publish","room":["a"],"data":"x","id":"q"}"#, (OpError::InvalidField, id.clone())),
        (r#"{"op":"join","id":"q"}"#, (OpError::InvalidField, id.clone())),
        (r#"{"op":"join","room":"a","since":-1,"id":"q"}"#, (OpError::InvalidField, id.clone())),
        (r#"{"op":"join","room":"a","since":1.5,"id":"q"}"#, (OpError::InvalidField, id.clone())),
        (r#"{"op":"join","room":"a","epoch":7,"id":"q"}"#, (OpError::InvalidField, id.clone())),
        (r#"{"op":"publish","data":"x","id":7}"#, (OpError::InvalidId, None)),
        (r#"{"op":"publish","data":"x","data":"y","id":"q"}"#, (OpError::InvalidField, id.clone())),
    ] {
        assert_eq!(err_of(text), expected, "{text}");
    }
    let long = format!(r#"{{"op":"publish","data":"x","id":"{}"}}"#, "i".repeat(MAX_ID + 1));
    assert_eq!(err_of(&long), (OpError::InvalidId, None));
    let longest = format!(r#"{{"op":"publish","data":"x","id":"{}"}}"#, "i".repeat(MAX_ID));
    assert!(parse_op(&longest).is_ok());
}

#[test]
fn resume_from_the_query() {
    assert_eq!(Resume::from_query(""), Ok(None));
    assert_eq!(Resume::from_query("x=1"), Ok(None));
    assert_eq!(Resume::from_query("since=41&epoch=ab"), Ok(Some(Resume { since: 41, epoch: Some("ab".into()) })));
    assert_eq!(Resume::from_query("epoch=a%62"), Ok(Some(Resume { since: 0, epoch: Some("ab".into()) })));
    assert_eq!(Resume::from_query("since=3"), Ok(Some(Resume { since: 3, epoch: None })));
    for bad in ["since=", "since=-1", "since=x", "since=1e3", "since=99999999999999999999"] {
        assert_eq!(Resume::from_query(bad), Err(BadQuery), "{bad}");
    }
}

mod envelope_size {
    use super::*;
    use proptest::prelude::*;

    /// The worst room name: 128 bytes that each escape to 2 in JSON.
    fn worst_room() -> String {
        json_string(&"\"".repeat(crate::rooms::MAX_NAME))
    }

    #[test]
    fn escaping_grows_quotes_and_backslashes_2x_and_control_characters_up_to_6x() {
        assert_eq!(envelope_payload_len(Payload::Text("ab")), 2);
        assert_eq!(envelope_payload_len(Payload::Text("\"\\")), 4);
        assert_eq!(envelope_payload_len(Payload::Text("\n\t\r\u{8}\u{c}")), 10);
        assert_eq!(envelope_payload_len(Payload::Text("\u{1}\u{1f}")), 12);
        assert_eq!(envelope_payload_len(Payload::Text("é\u{7f}")), 3);
        assert_eq!(envelope_payload_len(Payload::Binary(&[0; 3])), 4);
        assert_eq!(envelope_payload_len(Payload::Binary(&[0; 4])), 8);
        // A 1 MiB text of U+0001 is 6 MiB in an envelope.
        assert_eq!(envelope_payload_len(Payload::Text(&"\u{1}".repeat(1 << 20))), 6 << 20);
    }

    proptest! {
        /// The count is exactly serde_json's (the envelope's own encoder), and the frame
        /// is never more than the count plus `ENVELOPE_OVERHEAD`, whatever the room and seq.
        #[test]
        fn the_counted_length_is_the_encoded_one_and_the_overhead_holds(
            text in "(\\PC|[\\x00-\\x1f\"\\\\])*", bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let counted = envelope_payload_len(Payload::Text(&text));
            prop_assert_eq!(counted, json_string(&text).len() - 2);
            let mut e = Envelopes::default();
            let room = worst_room();
            for payload in [Payload::Text(&text), Payload::Binary(&bytes)] {
                let frame = e.message(&room, Seq::MAX, payload);
                prop_assert!(frame.len() <= envelope_payload_len(payload) + ENVELOPE_OVERHEAD);
                prop_assert!(frame.len() + 200 > envelope_payload_len(payload) + ENVELOPE_OVERHEAD);
            }
        }
    }

    #[test]
    fn a_large_envelope_stays_within_the_overhead() {
        // Past 65,535 bytes the frame header is its longest (10 bytes).
        let text = "\"".repeat(70_000);
        let frame = Envelopes::default().message(&worst_room(), Seq::MAX, Payload::Text(&text));
        assert!(frame.len() <= envelope_payload_len(Payload::Text(&text)) + ENVELOPE_OVERHEAD);
    }
}
