#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the web layer's parsers and writers of untrusted text (issue 7, "bad input"):
//! `.rdp` files (a script's values can never add a line or a key; the file is always UTF-16LE with a
//! BOM and CRLF line ends), download names, the terminal's WebSocket control messages and its UTF-8
//! framing, the VNC challenge response, and the `Sec-WebSocket-Protocol` header.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, header};
use des::cipher::{BlockCipherDecrypt, KeyInit};
use proptest::prelude::*;
use serde_json::{Value, json};
use web::connect::console::{offered_protocols, vnc_auth_response};
use web::connect::ssh::{Control, DIM_MAX, DIM_MIN, Size, parse_control, take_whole_chars};
use web::rdp::{RdpError, RdpTarget, RdpValue, default_settings, file_name, render, render_text};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Keys a site script may return: valid ones, reserved ones, password ones and junk.
fn any_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z0-9 ]{0,20}",
        1 => Just("full address".to_string()),
        1 => Just("server port".to_string()),
        1 => Just("password 51".to_string()),
        1 => Just("screen mode id".to_string()),
        1 => Just("username".to_string()),
        2 => ".{0,12}",
        1 => "[a-z]{1,5}[:\r\n][a-z]{1,5}",
    ]
}

/// Values: plain text, text with every kind of line break and control character, and integers.
fn any_value() -> impl Strategy<Value = RdpValue> {
    prop_oneof![
        3 => ".{0,40}".prop_map(RdpValue::Str),
        2 => "[a-zA-Z0-9\\\\ :;=\u{e9}\u{5d0}\u{4e2d}\u{1f600}]{0,30}".prop_map(RdpValue::Str),
        2 => "[a-z]{0,8}[\r\n\u{0}\u{b}\u{c}\u{85}\u{1b}\t][a-z:]{0,16}".prop_map(RdpValue::Str),
        2 => any::<i64>().prop_map(RdpValue::Int),
    ]
}

fn any_target() -> impl Strategy<Value = RdpTarget> {
    (
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ],
        any::<u16>(),
    )
        .prop_map(|(address, port)| RdpTarget { address, port })
}

fn key_of(err: &RdpError) -> &str {
    match err {
        RdpError::BadKey { key }
        | RdpError::ControlCharacter { key }
        | RdpError::Password { key }
        | RdpError::Reserved { key } => key,
    }
}

fn decode_utf16le(bytes: &[u8]) -> String {
    assert_eq!(&bytes[..2], &[0xFF, 0xFE], "BOM");
    assert_eq!(bytes.len() % 2, 0, "whole UTF-16 units");
    let units: Vec<u16> = bytes[2..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).unwrap()
}

/// Arbitrary JSON for the control-message property.
fn any_json() -> impl Strategy<Value = Value> {
    let num = prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        (0u32..3000).prop_map(|n| json!(n)),
        ".{0,6}".prop_map(Value::String),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
    ];
    (
        prop_oneof![
            Just(json!("hello")),
            Just(json!("resize")),
            Just(json!("input")),
            Just(json!(["resize"])),
            ".{0,8}".prop_map(Value::String),
            Just(Value::Null),
        ],
        proptest::option::of(num.clone()),
        proptest::option::of(num),
        any::<bool>(),
    )
        .prop_map(|(ty, cols, rows, with_data)| {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), ty);
            if let Some(c) = cols {
                m.insert("cols".into(), c);
            }
            if let Some(r) = rows {
                m.insert("rows".into(), r);
            }
            if with_data {
                m.insert("data".into(), json!("rm -rf /\r"));
            }
            Value::Object(m)
        })
}

fn expected_dim(v: Option<&Value>) -> Option<u32> {
    let n = v?.as_f64()?;
    if !n.is_finite() || n < 1.0 {
        return None;
    }
    Some((n.floor().min(f64::from(DIM_MAX))) as u32)
}

proptest! {
    #![proptest_config(config())]

    /// Whatever keys and values a site script returns, the `.rdp` file is either refused naming the
    /// offending key, or is UTF-16LE with a BOM whose decoded text has exactly one CRLF-ended line per
    /// setting (the address, the defaults, the script's), no other CR or LF, each line
    /// `key:type:value` with a key the script or Proxlab chose, and the address line first.
    #[test]
    fn rdp_values_never_add_a_line_or_key(
        target in any_target(),
        settings in prop::collection::vec((any_key(), any_value()), 0..8),
    ) {
        match render(&target, &settings) {
            Err(e) => {
                let bad = key_of(&e);
                prop_assert!(settings.iter().any(|(k, _)| k == bad), "{e} names no given key");
                prop_assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
                if let RdpError::ControlCharacter { key } = &e {
                    let hit = settings.iter().any(|(k, v)| k == key && matches!(v, RdpValue::Str(s) if s.chars().any(char::is_control)));
                    prop_assert!(hit);
                }
            }
            Ok(bytes) => {
                let text = decode_utf16le(&bytes);
                prop_assert!(text.ends_with("\r\n"));
                let lines: Vec<&str> = text[..text.len() - 2].split("\r\n").collect();
                let mut keys: Vec<String> = default_settings().into_iter().map(|(k, _)| k).collect();
                for (k, _) in &settings {
                    if !keys.contains(k) {
                        keys.push(k.clone());
                    }
                }
                prop_assert_eq!(lines.len(), 1 + keys.len(), "{:?}", lines);
                prop_assert_eq!(lines[0], format!("full address:s:{}", web::rdp::full_address(&target)));
                for (line, key) in lines[1..].iter().zip(&keys) {
                    prop_assert!(!line.contains(['\r', '\n']), "{line:?}");
                    let mut parts = line.splitn(3, ':');
                    prop_assert_eq!(parts.next(), Some(key.as_str()));
                    let ty = parts.next().unwrap();
                    prop_assert!(ty == "i" || ty == "s", "{line:?}");
                    // The value is the last one given for the key (or the default).
                    let want = settings.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone())
                        .or_else(|| default_settings().into_iter().find(|(k, _)| k == key).map(|(_, v)| v))
                        .unwrap();
                    let got = parts.next().unwrap();
                    match want {
                        RdpValue::Int(i) => prop_assert_eq!((ty, got.to_string()), ("i", i.to_string())),
                        RdpValue::Str(s) => prop_assert_eq!((ty, got), ("s", s.as_str())),
                    }
                }
                prop_assert_eq!(text, render_text(&target, &settings).unwrap());
            }
        }
    }

    /// Download names: whatever the VM is called, the name is 1–64 safe ASCII characters plus `.rdp`.
    #[test]
    fn rdp_file_names_are_safe(name in ".{0,200}", vmid in any::<u32>()) {
        let f = file_name(&name, vmid);
        let base = f.strip_suffix(".rdp").unwrap();
        prop_assert!(!base.is_empty() && base.chars().count() <= 64, "{f:?}");
        prop_assert!(base.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{f:?}");
        prop_assert!(!base.starts_with('.'), "{f:?}");
    }

    /// Text frames of the terminal: only `hello`/`resize` with numeric sizes ≥ 1 become a control
    /// message, with sizes floored and clamped to 1..=1000; anything else (other types, `input`
    /// with data, bad sizes, not JSON at all) is ignored — a text frame never becomes keystrokes.
    #[test]
    fn terminal_text_frames_are_typed_controls_or_ignored(v in any_json(), junk in ".{0,60}") {
        let text = v.to_string();
        let want_size = match (expected_dim(v.get("cols")), expected_dim(v.get("rows"))) {
            (Some(cols), Some(rows)) => Some(Size { cols, rows }),
            _ => None,
        };
        let want = match (v.get("type").and_then(Value::as_str), want_size) {
            (Some("hello"), Some(s)) => Some(Control::Hello(s)),
            (Some("resize"), Some(s)) => Some(Control::Resize(s)),
            _ => None,
        };
        let got = parse_control(&text);
        prop_assert_eq!(got, want);
        if let Some(Control::Hello(s) | Control::Resize(s)) = got {
            prop_assert!((DIM_MIN..=DIM_MAX).contains(&s.cols) && (DIM_MIN..=DIM_MAX).contains(&s.rows));
        }
        if let Some(c) = parse_control(&junk) {
            let parsed: Value = serde_json::from_str(&junk).unwrap();
            let ty = parsed["type"].as_str().unwrap();
            prop_assert!(matches!((ty, c), ("hello", Control::Hello(_)) | ("resize", Control::Resize(_))));
        }
    }

    /// Terminal output framing: any byte stream cut into any chunks comes out whole (nothing lost,
    /// nothing added, same order), at most 3 bytes are held back, and a valid UTF-8 stream is sent
    /// as frames that are each valid UTF-8 (no character split across frames).
    #[test]
    fn terminal_output_is_cut_at_character_boundaries(
        text in ".{0,60}",
        raw in prop::collection::vec(any::<u8>(), 0..40),
        cuts in prop::collection::vec(0usize..64, 0..8),
        use_raw in any::<bool>(),
    ) {
        let data: Vec<u8> = if use_raw { raw } else { text.clone().into_bytes() };
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
        points.sort_unstable();
        points.push(data.len());
        let mut carry = Vec::new();
        let mut sent = Vec::new();
        let mut start = 0;
        for p in points {
            let out = take_whole_chars(&mut carry, &data[start..p]);
            prop_assert!(carry.len() <= 3, "{} bytes held back", carry.len());
            if !use_raw {
                prop_assert!(std::str::from_utf8(&out).is_ok(), "frame {out:?} splits a character");
            }
            sent.extend_from_slice(&out);
            start = p;
        }
        sent.extend_from_slice(&carry);
        prop_assert_eq!(sent, data);
        if !use_raw {
            prop_assert!(carry.is_empty());
        }
    }

    /// The VNC response is DES of the challenge under the password's first 8 bytes (bits reversed):
    /// decrypting gives the challenge back, and bytes past the eighth never matter.
    #[test]
    fn vnc_response_is_des_of_the_challenge(
        pw in prop::collection::vec(any::<u8>(), 0..20),
        extra in prop::collection::vec(any::<u8>(), 1..5),
        challenge in any::<[u8; 16]>(),
    ) {
        let r = vnc_auth_response(&pw, &challenge);
        let mut key = [0u8; 8];
        for (k, b) in key.iter_mut().zip(&pw) {
            *k = b.reverse_bits();
        }
        let cipher = des::Des::new(&key.into());
        for half in 0..2 {
            let mut block = des::cipher::Block::<des::Des>::default();
            block.copy_from_slice(&r[half * 8..half * 8 + 8]);
            cipher.decrypt_block(&mut block);
            prop_assert_eq!(block.as_slice(), &challenge[half * 8..half * 8 + 8]);
        }
        if pw.len() >= 8 {
            let longer: Vec<u8> = pw.iter().chain(&extra).copied().collect();
            prop_assert_eq!(vnc_auth_response(&longer, &challenge), r);
        }
    }

    /// `Sec-WebSocket-Protocol`: any header values give the trimmed, non-empty, comma-separated names
    /// in order; values that are not visible ASCII are skipped, never a panic.
    #[test]
    fn websocket_protocol_header(values in prop::collection::vec(prop_oneof!["[a-z, .]{0,20}", ".{0,20}"], 0..4)) {
        let mut h = HeaderMap::new();
        let mut want = Vec::new();
        for v in &values {
            if let Ok(hv) = HeaderValue::from_str(v) {
                if hv.to_str().is_ok() {
                    want.extend(v.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from));
                }
                h.append(header::SEC_WEBSOCKET_PROTOCOL, hv);
            }
        }
        prop_assert_eq!(offered_protocols(&h), want);
    }
}
