//! Checks `vectors.json` in both directions: encode(fields) == hex and decode(hex) ==
//! fields; invalid frames fail with the named error; MACs match. The vectors come from a
//! separate Python implementation of the contract (`gen_vectors.py`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_wrap
)]

use bytes::BytesMut;
use serde_json::Value;
use std::collections::HashSet;
use wenxiao_protocol::limits::{CREDIT_OFFER_COUNT_MAX, HOTLIST_CARDS_PER_FRAME_MAX};
use wenxiao_protocol::mac::{LoadTacInput, Mac1Input, Mac2Input, MasterKey, TxnTacInput};
use wenxiao_protocol::{Bytes4, DecodeErrorKind, Decoder, Message, MessageType};

fn vectors() -> Vec<Value> {
    let text = include_str!("vectors.json");
    serde_json::from_str::<Vec<Value>>(text).expect("vectors.json is a JSON array")
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn valid_vectors_encode_and_decode_exactly() {
    let mut checked = 0;
    for v in vectors().iter().filter(|v| v.get("type").is_some()) {
        let name = str_field(v, "name");
        let tagged = serde_json::json!({"type": v["type"], "fields": v["fields"]});
        let message: Message = serde_json::from_value(tagged.clone())
            .unwrap_or_else(|e| panic!("{name}: fields do not parse: {e}"));

        let mut encoded = BytesMut::new();
        message.encode(&mut encoded);
        assert_eq!(hex::encode(&encoded), str_field(v, "hex"), "{name}: encode");
        assert_eq!(encoded.len(), message.frame_len(), "{name}: frame_len");

        let mut wire = BytesMut::from(hex::decode(str_field(v, "hex")).unwrap().as_slice());
        let decoded = Decoder::default()
            .decode_eof(&mut wire)
            .unwrap_or_else(|e| panic!("{name}: decode: {e}"))
            .unwrap_or_else(|| panic!("{name}: decoded nothing"));
        assert!(wire.is_empty(), "{name}: bytes left after the frame");
        assert_eq!(decoded, message, "{name}: decode");
        // And back to the vector's own JSON: names, hex and big-number strings included.
        assert_eq!(
            serde_json::to_value(&decoded).unwrap(),
            tagged,
            "{name}: to fields"
        );
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn invalid_vectors_fail_with_their_error() {
    for v in vectors().iter().filter(|v| v.get("error").is_some()) {
        let name = str_field(v, "name");
        let mut wire = BytesMut::from(hex::decode(str_field(v, "hex")).unwrap().as_slice());
        let err = Decoder::default().decode_eof(&mut wire).expect_err(name);
        assert_eq!(err.kind().name(), str_field(v, "error"), "{name}: {err}");
    }
}

fn bytes4(v: &Value) -> Bytes4 {
    let mut b = [0u8; 4];
    hex::decode_to_slice(v.as_str().unwrap(), &mut b).unwrap();
    Bytes4(b)
}

#[test]
fn mac_vectors_match() {
    let mut seen = HashSet::new();
    for v in vectors().iter().filter(|v| v.get("mac").is_some()) {
        let name = str_field(v, "name");
        let kind = str_field(v, "mac");
        let master = MasterKey::from_hex(str_field(v, "master_key")).unwrap();
        let fields = v["fields"].clone();
        let got = match kind {
            "TXN_TAC" => {
                let i: TxnTacInput = serde_json::from_value(fields).unwrap();
                i.tac(&master.card_key(i.card_no))
            }
            "MAC1" => {
                let i: Mac1Input = serde_json::from_value(fields).unwrap();
                i.mac(&master.card_key(i.card_no))
            }
            "MAC2" => {
                let i: Mac2Input = serde_json::from_value(fields).unwrap();
                i.mac(&master.card_key(i.card_no))
            }
            "LOAD_TAC" => {
                let i: LoadTacInput = serde_json::from_value(fields).unwrap();
                i.tac(&master.card_key(i.card_no))
            }
            other => panic!("{name}: unknown mac kind {other}"),
        };
        assert_eq!(got, bytes4(&v["expected"]), "{name}");
        seen.insert(kind.to_owned());
    }
    assert_eq!(
        seen.len(),
        4,
        "a vector for each of TXN_TAC, MAC1, MAC2, LOAD_TAC: {seen:?}"
    );
}

#[test]
fn vectors_cover_every_type_every_error_and_list_bounds() {
    let all = vectors();
    let types: HashSet<&str> = all.iter().filter_map(|v| v["type"].as_str()).collect();
    for t in MessageType::ALL {
        assert!(types.contains(t.name()), "no valid vector for {t}");
    }
    let errors: HashSet<&str> = all.iter().filter_map(|v| v["error"].as_str()).collect();
    for e in DecodeErrorKind::ALL {
        assert!(
            errors.contains(e.name()),
            "no invalid vector for {}",
            e.name()
        );
    }
    let lens = |t: &str, f: &dyn Fn(&Value) -> usize| -> HashSet<usize> {
        all.iter()
            .filter(|v| v["type"] == t)
            .map(|v| f(&v["fields"]))
            .collect()
    };
    let offers = lens("CREDIT_OFFER", &|f| f["credits"].as_array().unwrap().len());
    assert!(
        offers.contains(&0) && offers.contains(&CREDIT_OFFER_COUNT_MAX),
        "{offers:?}"
    );
    let hot = lens("HOTLIST_UPDATE", &|f| {
        f["add"].as_array().unwrap().len() + f["remove"].as_array().unwrap().len()
    });
    assert!(
        hot.contains(&0) && hot.contains(&HOTLIST_CARDS_PER_FRAME_MAX),
        "{hot:?}"
    );
}
