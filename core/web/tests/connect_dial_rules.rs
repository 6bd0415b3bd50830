//! Attacks on the SSH terminal relay by a student who is root in their guest and makes its agent report
//! whatever address they like: the relay dials only guest-network or MAC-verified addresses, never the
//! portal itself, a node, loopback or a routed or IPv6 address outside the guest networks; it refuses
//! before the upgrade (HTTP 403 naming the reason), contacts nothing it refused, and writes an audit
//! entry for every decision. Also the per-user terminal limits, and the WebSocket size limits that keep
//! one browser from filling the portal's memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod connect_common;

use std::time::Duration;

use connect_common::{Portal, VM, guest, portal, portal_with};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use web::connect::{ClusterDial, ConnectConfig, IpCheck, MacCheck, VerifyScope};

/// A running guest whose agent reports exactly `address` on its own NIC.
fn reporting(vmid: u32, address: &str) -> Value {
    let mut g = guest(vmid, &format!("hostile-{vmid}"), "l26", "");
    let family = if address.contains(':') { "ipv6" } else { "ipv4" };
    g["agent"] = json!({"interfaces": [
        {"name": "ens18", "hardware-address": format!("bc:24:11:40:{:02x}:{:02x}", vmid / 256 % 256, vmid % 256),
         "ip-addresses": [{"ip-address": address, "ip-address-type": family, "prefix": 24}]}]});
    g
}

/// The audit entries of the terminal for `vmid`, newest first.
fn audits(p: &Portal, vmid: u32) -> Vec<store::AuditRecord> {
    p.store
        .audit_recent(500)
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "terminal.connect" && a.target.starts_with(&format!("lab/{vmid} ")))
        .collect()
}

/// A non-loopback address of this machine, if it has one.
fn own_address() -> Option<String> {
    web::connect::own_addresses()
        .into_iter()
        .find(|a| {
            !a.is_loopback()
                && !matches!(a, std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
        })
        .map(|a| a.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_refuses_every_address_a_hostile_guest_reports_outside_the_rules() {
    let own = own_address();
    // 192.0.2.10-12 are the fake cluster's node addresses in /cluster/status.
    let mut cases: Vec<(u32, String, &str)> = vec![
        (4011, "127.0.0.1".into(), "loopback"),
        (4013, "192.0.2.11".into(), "node_address"),
        (4014, "198.18.200.5".into(), "not_guest_network"),
        (4015, "2a01:4f8:c0c:1::7".into(), "not_guest_network"),
        (4016, "10.20.0.7".into(), "mac_mismatch"),
    ];
    if let Some(own) = &own {
        cases.push((4012, own.clone(), "own_address"));
    }
    let guests: Vec<Value> = cases.iter().map(|(v, a, _)| reporting(*v, a)).collect();
    let mut connect = ConnectConfig::default();
    connect.clusters.insert(
        "lab".into(),
        ClusterDial {
            guest_networks: vec!["10.20.0.0/16".parse().unwrap()],
            host_addresses: vec![],
        },
    );
    // Every address is probed by this scope, so only the dial rule keeps routed ones untouched.
    connect.verify.scope = VerifyScope::All;
    // The sync hands out loopback too here (as a site IP script could): the relay must refuse it itself.
    let p = portal_with(guests, connect, None, vec!["127.0.0.0/8".parse().unwrap()]).await;
    let vmids: Vec<u32> = cases.iter().map(|(v, _, _)| *v).collect();
    for vmid in &vmids {
        connect_common::assign_to(&p, "stud", *vmid);
    }
    let snap = p.state.inventory.snapshot();
    assert!(
        snap.clusters["lab"]
            .node_addresses
            .iter()
            .any(|a| a == "192.0.2.11"),
        "the fake cluster's nodes: {:?}",
        snap.clusters["lab"].node_addresses
    );
    assert!(
        !web::connect::net::is_on_link("198.18.200.5".parse().unwrap()).await,
        "the routed test address must not be on a network of this machine"
    );
    // The discovery found another machine's MAC at the guest-network address.
    let check = IpCheck {
        address: "10.20.0.7".into(),
        probed: true,
        reachable: true,
        method: Some("ping".into()),
        mac: MacCheck::Mismatch,
        seen_mac: Some("52:54:00:aa:bb:cc".into()),
        checked_at: sync::now_secs(),
        took_ms: 1,
        reason: None,
    };
    p.state
        .inventory
        .update_facts("lab", 4016, |f| f.check = Some(check))
        .await;
    for (vmid, address, code) in &cases {
        let g = snap.guest("lab", *vmid).unwrap();
        assert_eq!(
            g.ip.as_ref().map(|i| i.address.as_str()),
            Some(address.as_str()),
            "VM {vmid}"
        );
        let token = p.token("stud", *vmid, "ssh").await.unwrap();
        let (status, body) = p
            .ws_refused("stud", &format!("/ws/terminal/{vmid}?token={token}"))
            .await;
        assert_eq!(status, 403, "VM {vmid} at {address}: {body}");
        assert!(
            body.contains(address.as_str()),
            "the refusal names the address: {body}"
        );
        if *code == "not_guest_network" {
            assert!(
                body.contains("guest_networks"),
                "the refusal names the setting: {body}"
            );
        }
        let a = audits(&p, *vmid);
        assert_eq!(a.len(), 1, "one audit entry for VM {vmid}: {a:?}");
        assert_eq!(a[0].result, format!("refused: {code}"), "VM {vmid}");
        assert_eq!(a[0].user, "stud");
        assert!(a[0].target.contains(address.as_str()));
    }
    // Nothing refused was probed: the only check recorded is the one the test put there.
    for (vmid, _, _) in &cases {
        let facts = p.state.inventory.snapshot().facts("lab", *vmid);
        if *vmid == 4016 {
            assert_eq!(facts.check.unwrap().mac, MacCheck::Mismatch);
        } else {
            assert!(facts.check.is_none(), "VM {vmid} was probed: {:?}", facts.check);
        }
    }
    // The student's connect view does not reveal the other machine's MAC.
    let (status, _, body) = p.get(Some("stud"), "/api/vm/4016/connect").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["address"]["verification"]["seen_mac"], Value::Null, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_per_user_are_limited_at_once_and_per_minute_and_the_allowed_one_is_audited() {
    // No sshd: a connection that passes the rules fails at the guest later, which is enough here.
    let connect = ConnectConfig {
        max_terminals_per_user: 2,
        terminal_connects_per_minute: 3,
        hello_timeout: Duration::from_secs(60),
        ssh_port: testkit::free_port(connect_common::VM_IP),
        ..ConnectConfig::default()
    };
    let p = portal(vec![], connect, None).await;
    let path = |t: String| format!("/ws/terminal/{VM}?token={t}");
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(p.terminal("stud", VM).await.unwrap());
    }
    let a = audits(&p, VM);
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|a| a.result == "allowed: test range"), "{a:?}");
    // A third at once is over two open terminals.
    let token = p.token("stud", VM, "ssh").await.unwrap();
    let (status, body) = p.ws_refused("stud", &path(token)).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("terminals open"), "{body}");
    // A fourth within the minute is over three new connections per minute.
    let token = p.token("stud", VM, "ssh").await.unwrap();
    let (status, body) = p.ws_refused("stud", &path(token)).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("in the last minute"), "{body}");
    // Another student is not affected.
    connect_common::assign_to(&p, "stud2", VM);
    assert!(p.terminal("stud2", VM).await.is_ok());
    drop(open);
}

/// Resident memory of this process (the portal runs in it), bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// How a flooded connection ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The portal closed it with this code.
    Close(u16),
    /// The connection was reset after the portal closed it with unread input still queued.
    Reset,
    /// Still open after everything was sent.
    Open,
}

/// Sends 60 KiB frames without a `hello` until the portal closes (at most 16 MiB).
async fn flood(p: &Portal, user: &str) -> Ended {
    let ws = p.terminal(user, VM).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let chunk = vec![b'a'; 60 * 1024];
    let reader = tokio::spawn(async move {
        while let Some(m) = rx.next().await {
            match m {
                Ok(Message::Close(Some(f))) => return Ended::Close(u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return Ended::Reset,
            }
        }
        Ended::Reset
    });
    for _ in 0..(16 * 1024 / 60) {
        if tx.send(Message::binary(chunk.clone())).await.is_err() || reader.is_finished() {
            break;
        }
    }
    match tokio::time::timeout(Duration::from_secs(20), reader).await {
        Ok(Ok(end)) => end,
        _ => Ended::Open,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_ahead_floods_and_oversized_messages_close_with_1009_and_leave_memory_flat() {
    let connect = ConnectConfig {
        // The hello never comes; keep the server waiting for it the whole time.
        hello_timeout: Duration::from_secs(60),
        max_terminals_per_user: 25,
        max_sessions_per_user: 25,
        terminal_connects_per_minute: 100,
        ssh_port: testkit::free_port(connect_common::VM_IP),
        ..ConnectConfig::default()
    };
    let p = portal(vec![], connect, None).await;
    let before = rss();
    // One connection, then twenty at once. Each one is cut: with the close frame's 1009, or — when the
    // client is still sending as the portal closes — a reset that loses the frame.
    let mut ends = vec![flood(&p, "stud").await];
    let floods: Vec<_> = (0..20).map(|_| flood(&p, "stud")).collect();
    ends.extend(futures::future::join_all(floods).await);
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 32 * 1024 * 1024,
        "resident memory grew by {} MiB",
        grown / (1024 * 1024)
    );
    // One message over 64 KiB closes at once.
    let mut ws = p.terminal("stud", VM).await.unwrap();
    let _ = ws.send(Message::binary(vec![b'x'; 1024 * 1024])).await;
    let mut end = Ended::Open;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        match m {
            Ok(Message::Close(Some(f))) => {
                end = Ended::Close(u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => {
                end = Ended::Reset;
                break;
            }
        }
    }
    ends.push(end);
    assert!(
        ends.iter()
            .all(|e| matches!(e, Ended::Close(1009) | Ended::Reset)),
        "every connection is cut, and a close says 1009: {ends:?}"
    );
    assert!(ends.contains(&Ended::Close(1009)), "{ends:?}");
    // Every relay has ended on the portal's side.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while p.state.connect.active() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relays still open: {}",
            p.state.connect.active()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The portal still answers.
    let (status, _, _) = p.get(None, "/health").await;
    assert_eq!(status, 200);
}
