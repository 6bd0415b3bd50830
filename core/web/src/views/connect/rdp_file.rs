//! `.rdp` files: the settings a site's `rdp_settings(vm, user)` script returns, written in the format
//! that both Microsoft's Remote Desktop client (mstsc) and FreeRDP read.
//!
//! Format (as mstsc writes it): one `key:type:value` per line, CRLF line ends, type `i` (integer), `s`
//! (string) or `b` (hex binary). Encoding: UTF-16 LE with a byte-order mark `FF FE`, what mstsc itself
//! writes, so non-ASCII user names (`SCHOOL\jörg`) survive; FreeRDP reads it too (tested with `xfreerdp`).
//! The file never carries a password: keys naming one are refused. Values with CR, LF or other control
//! characters are refused (no line injection). The address is `full address:s:HOST:PORT` with IPv6 in
//! brackets.

use std::net::IpAddr;

/// A typed `.rdp` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RdpValue {
    /// `i`: integer.
    Int(i64),
    /// `s`: string (no control characters).
    Str(String),
}

/// Why a file cannot be written; names the offending key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RdpError {
    #[error("rdp setting {key:?}: keys are lower-case letters, digits and spaces")]
    BadKey { key: String },
    #[error("rdp setting {key:?}: the value contains a line break or control character")]
    ControlCharacter { key: String },
    #[error("rdp setting {key:?}: .rdp files never carry passwords")]
    Password { key: String },
    #[error("rdp setting {key:?} is set by Proxlab (the VM's address); remove it from the script")]
    Reserved { key: String },
}

/// Where the client connects.
#[derive(Clone, Debug)]
pub struct RdpTarget {
    pub address: IpAddr,
    /// TCP port (3389 by default).
    pub port: u16,
}

/// The mandatory and default settings, in file order, before the script's settings.
pub fn default_settings() -> Vec<(String, RdpValue)> {
    vec![
        ("screen mode id".into(), RdpValue::Int(2)),
        ("prompt for credentials".into(), RdpValue::Int(1)),
        ("authentication level".into(), RdpValue::Int(2)),
        ("redirectclipboard".into(), RdpValue::Int(1)),
    ]
}

fn check_key(key: &str) -> Result<(), RdpError> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == ' ')
    {
        return Err(RdpError::BadKey { key: key.into() });
    }
    if key.contains("password") {
        return Err(RdpError::Password { key: key.into() });
    }
    if key == "full address" || key == "alternate full address" || key == "server port" {
        return Err(RdpError::Reserved { key: key.into() });
    }
    Ok(())
}

/// The `full address` value: `198.51.100.7:3389`, `[2001:db8::7]:3390`.
pub fn full_address(t: &RdpTarget) -> String {
    match t.address {
        IpAddr::V4(a) => format!("{a}:{}", t.port),
        IpAddr::V6(a) => format!("[{a}]:{}", t.port),
    }
}

/// The file as text (CRLF lines): `full address` first, then defaults overridden by `settings`.
pub fn render_text(target: &RdpTarget, settings: &[(String, RdpValue)]) -> Result<String, RdpError> {
    let mut merged = default_settings();
    for (k, v) in settings {
        check_key(k)?;
        if let RdpValue::Str(s) = v
            && s.chars().any(|c| c.is_control())
        {
            return Err(RdpError::ControlCharacter { key: k.clone() });
        }
        match merged.iter_mut().find(|(mk, _)| mk == k) {
            Some(slot) => slot.1 = v.clone(),
            None => merged.push((k.clone(), v.clone())),
        }
    }
    let mut out = format!("full address:s:{}\r\n", full_address(target));
    for (k, v) in merged {
        match v {
            RdpValue::Int(i) => out.push_str(&format!("{k}:i:{i}\r\n")),
            RdpValue::Str(s) => out.push_str(&format!("{k}:s:{s}\r\n")),
        }
    }
    Ok(out)
}

/// The file as bytes: UTF-16 LE with BOM.
pub fn encode_utf16le(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + text.len() * 2);
    out.extend_from_slice(&[0xFF, 0xFE]);
    for unit in text.encode_utf16() {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

/// Renders and encodes a file.
pub fn render(target: &RdpTarget, settings: &[(String, RdpValue)]) -> Result<Vec<u8>, RdpError> {
    Ok(encode_utf16le(&render_text(target, settings)?))
}

/// A safe download name: `w11-lab-07.rdp`; anything but ASCII letters, digits, `-`, `_`, `.` becomes
/// `_`, at most 64 characters, never empty.
pub fn file_name(vm_name: &str, vmid: u32) -> String {
    let mut base: String = vm_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    base = base
        .trim_matches(|c| c == '.' || c == '_')
        .chars()
        .take(64)
        .collect();
    if base.is_empty() {
        base = format!("vm-{vmid}");
    }
    format!("{base}.rdp")
}

/// UTF-16 text from its bytes, two a unit, read by `unit` (little- or big-endian).
fn utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> Option<String> {
    let units: Vec<u16> = bytes.chunks_exact(2).map(|c| unit([c[0], c[1]])).collect();
    String::from_utf16(&units).ok()
}

/// Decodes a file by its BOM (UTF-16 LE/BE, UTF-8 with or without BOM), as a reader would.
pub fn decode(bytes: &[u8]) -> Option<String> {
    match bytes {
        [0xFF, 0xFE, rest @ ..] => utf16(rest, u16::from_le_bytes),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, u16::from_be_bytes),
        [0xEF, 0xBB, 0xBF, rest @ ..] => String::from_utf8(rest.to_vec()).ok(),
        other => String::from_utf8(other.to_vec()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(ip: &str, port: u16) -> RdpTarget {
        RdpTarget {
            address: ip.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn utf16le_bom_crlf_and_round_trip_with_a_non_ascii_user() {
        let settings = vec![("username".to_string(), RdpValue::Str("SCHOOL\\jörg".into()))];
        let bytes = render(&target("198.51.100.7", 3389), &settings).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xFE]);
        let text = decode(&bytes).unwrap();
        assert!(text.starts_with("full address:s:198.51.100.7:3389\r\n"), "{text}");
        assert!(text.contains("username:s:SCHOOL\\jörg\r\n"));
        assert!(text.contains("prompt for credentials:i:1\r\n"));
        assert!(text.contains("screen mode id:i:2\r\n"));
        assert!(!text.to_lowercase().contains("password"));
        assert!(
            text.split("\r\n").all(|l| !l.contains('\n')),
            "only CRLF line ends"
        );
        assert!(text.ends_with("\r\n"));
    }

    #[test]
    fn pure_ascii_content_is_also_valid_utf8() {
        let text = render_text(&target("198.51.100.7", 3389), &[]).unwrap();
        assert!(text.is_ascii());
        assert_eq!(decode(text.as_bytes()).unwrap(), text);
    }

    #[test]
    fn ipv6_is_bracketed_and_port_kept() {
        assert_eq!(full_address(&target("2001:db8::7", 3390)), "[2001:db8::7]:3390");
        assert_eq!(full_address(&target("198.51.100.7", 3390)), "198.51.100.7:3390");
    }

    #[test]
    fn line_injection_and_passwords_are_refused_by_key() {
        let evil = vec![(
            "username".to_string(),
            RdpValue::Str("bob\r\nfull address:s:203.0.113.66".into()),
        )];
        assert_eq!(
            render_text(&target("198.51.100.7", 3389), &evil),
            Err(RdpError::ControlCharacter {
                key: "username".into()
            })
        );
        let pw = vec![("password 51".to_string(), RdpValue::Str("01000000d08c".into()))];
        assert!(matches!(
            render_text(&target("198.51.100.7", 3389), &pw),
            Err(RdpError::Password { .. })
        ));
        let addr = vec![("full address".to_string(), RdpValue::Str("203.0.113.66".into()))];
        assert!(matches!(
            render_text(&target("198.51.100.7", 3389), &addr),
            Err(RdpError::Reserved { .. })
        ));
        let key = vec![("user:name".to_string(), RdpValue::Int(1))];
        assert!(matches!(
            render_text(&target("198.51.100.7", 3389), &key),
            Err(RdpError::BadKey { .. })
        ));
    }

    #[test]
    fn script_settings_override_defaults_in_place() {
        let s = vec![
            ("screen mode id".to_string(), RdpValue::Int(1)),
            ("desktopwidth".to_string(), RdpValue::Int(1920)),
        ];
        let text = render_text(&target("198.51.100.7", 3389), &s).unwrap();
        assert_eq!(text.matches("screen mode id").count(), 1);
        assert!(text.contains("screen mode id:i:1\r\n"));
        assert!(text.contains("desktopwidth:i:1920\r\n"));
    }

    #[test]
    fn odd_vm_names_give_safe_file_names() {
        assert_eq!(file_name("w11-lab-07", 7), "w11-lab-07.rdp");
        assert_eq!(file_name("Jörg's \"lab\" VM", 7), "J_rg_s__lab__VM.rdp");
        assert_eq!(file_name("../../etc/passwd", 7), "etc_passwd.rdp");
        assert_eq!(file_name("", 42), "vm-42.rdp");
        assert_eq!(file_name(&"x".repeat(300), 1).len(), 68);
    }
}
