//! Generated .rdp files read by a real RDP client: FreeRDP (`xfreerdp`, under `xvfb-run`) parses the file
//! and connects to the address in it; a plain TCP listener receives its first packet, an X.224 connection
//! request carrying `Cookie: mstshash=<username>` (see shared notes: checking-rdp-files).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use web::rdp::{RdpTarget, RdpValue, render, render_text};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs xfreerdp on `bytes` and returns what the listener received.
fn first_packet(bytes: &[u8], listener: TcpListener) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lab vm.rdp");
    std::fs::write(&file, bytes).unwrap();
    listener.set_nonblocking(false).unwrap();
    let accept = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = sock.read(&mut buf).unwrap_or(0);
        buf.truncate(n);
        buf
    });
    let mut child = Command::new("timeout")
        .args(["20", "xvfb-run", "-a", "xfreerdp"])
        .arg(&file)
        .args(["/cert:ignore", "/timeout:5000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("xfreerdp");
    let got = accept.join().unwrap();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    got
}

fn check(user: &str, port_offset: bool) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(!port_offset || port != 3389);
    let target = RdpTarget {
        address: "127.0.0.1".parse().unwrap(),
        port,
    };
    let settings = vec![("username".to_string(), RdpValue::Str(user.into()))];
    let bytes = render(&target, &settings).unwrap();
    let packet = first_packet(&bytes, listener);
    let text = String::from_utf8_lossy(&packet);
    assert!(
        !packet.is_empty(),
        "FreeRDP did not connect: it could not parse the file"
    );
    // FreeRDP puts the user name (without the domain) in the X.224 cookie.
    let bare = user.rsplit('\\').next().unwrap();
    assert!(
        text.contains(&format!("Cookie: mstshash={bare}")),
        "cookie for {user:?} missing in {text:?}"
    );
}

#[test]
fn freerdp_reads_our_utf16_file_with_host_port_and_user() {
    if !have("xfreerdp") || !have("xvfb-run") {
        panic!("xfreerdp/xvfb-run missing: run dev/setup (Debian packages freerdp2-x11 xvfb)");
    }
    check("SCHOOL\\student7", true);
    // Pure ASCII text is valid UTF-8 as well; FreeRDP reads that form too.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let target = RdpTarget {
        address: "127.0.0.1".parse().unwrap(),
        port,
    };
    let text = render_text(
        &target,
        &[("username".to_string(), RdpValue::Str("student8".into()))],
    )
    .unwrap();
    let packet = first_packet(text.as_bytes(), listener);
    assert!(String::from_utf8_lossy(&packet).contains("Cookie: mstshash=student8"));
}
