//! The console relay end to end: a WebSocket client speaking RFB as noVNC does → the real router →
//! the fake PVE's `vncproxy` (`websocket=1`) + `vncwebsocket` (a real RFB 3.8 server with VNC
//! authentication keyed by the ticket). The relay authenticates to PVE itself; the browser sees security
//! type None and never a ticket. Subprotocol rules on the browser leg (echo `binary` only when
//! offered, refuse `base64`); refusal for other users.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod connect_common;

use std::time::Duration;

use connect_common::{OTHER_VM, Portal, VM, Ws, portal};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use web::connect::ConnectConfig;

const SECS: Duration = Duration::from_secs(15);

/// Reads exactly `n` bytes of RFB from the relay (frames may split or join messages).
struct Rfb {
    ws: Ws,
    buf: Vec<u8>,
    /// Everything received, to check that no ticket ever shows.
    all: Vec<u8>,
}

impl Rfb {
    async fn read(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            match tokio::time::timeout(SECS, self.ws.next())
                .await
                .expect("RFB data in time")
            {
                Some(Ok(Message::Binary(b))) => {
                    self.all.extend_from_slice(&b);
                    self.buf.extend_from_slice(&b);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("relay ended or sent {other:?} while {n} bytes were expected"),
            }
        }
        self.buf.drain(..n).collect()
    }

    async fn send(&mut self, b: &[u8]) {
        self.ws.send(Message::binary(b.to_vec())).await.unwrap();
    }

    /// The client side of the RFB 3.8 handshake up to ServerInit; returns the desktop name and size.
    async fn handshake(&mut self) -> (String, u16, u16) {
        assert_eq!(self.read(12).await, b"RFB 003.008\n");
        self.send(b"RFB 003.008\n").await;
        assert_eq!(
            self.read(2).await,
            [1, 1],
            "the browser is offered exactly security type None"
        );
        self.send(&[1]).await;
        assert_eq!(self.read(4).await, [0, 0, 0, 0], "SecurityResult OK");
        self.send(&[1]).await; // ClientInit, shared
        let init = self.read(24).await;
        let (w, h) = (
            u16::from_be_bytes([init[0], init[1]]),
            u16::from_be_bytes([init[2], init[3]]),
        );
        let len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
        let name = String::from_utf8(self.read(len).await).unwrap();
        (name, w, h)
    }
}

async fn console(p: &Portal, user: &str, protocols: Option<&str>) -> Result<(Rfb, Option<String>), u16> {
    let token = p.token(user, VM, "console").await.unwrap();
    let (ws, resp) = p
        .ws(
            user,
            &format!("/ws/console/{VM}?token={token}"),
            Some(&p.origin),
            protocols,
            None,
        )
        .await?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((
        Rfb {
            ws,
            buf: Vec::new(),
            all: Vec::new(),
        },
        chosen,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_relays_pve_vnc_end_to_end_without_handing_out_the_ticket() {
    let p = portal(vec![], ConnectConfig::default(), None).await;
    let (mut rfb, chosen) = console(&p, "stud", Some("binary")).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("binary"), "binary offered: binary echoed");
    let (name, w, h) = rfb.handshake().await;
    assert_eq!(
        (name.as_str(), w, h),
        ("lab-vm-4001", 4, 2),
        "ServerInit of VM 4001"
    );
    // SetPixelFormat (32 bpp), SetEncodings (raw), FramebufferUpdateRequest: the framebuffer comes through.
    let mut pf = vec![
        0u8, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ];
    pf.truncate(20);
    rfb.send(&pf).await;
    rfb.send(&[2, 0, 0, 1, 0, 0, 0, 0]).await;
    rfb.send(&[3, 0, 0, 0, 0, 0, 0, 4, 0, 2]).await;
    // The fake answers with the 4x2 picture in raw encoding (BGRX pixels of bytes 0..24).
    let update = rfb.read(1 + 4 + 12 + 2 * 4 * 4 / 2 + 12 + 2 * 4 * 4 / 2).await;
    assert!(
        update.windows(4).any(|w| w == [2, 1, 0, 0]),
        "pixel data arrived: {update:?}"
    );
    // The browser never saw anything like a PVE ticket or its VNC challenge.
    let seen = String::from_utf8_lossy(&rfb.all);
    assert!(!seen.contains("PVEVNC") && !seen.contains("PVE:"), "{seen:?}");
    drop(rfb);

    // No subprotocol offered: 101 without the header, and the console still works.
    let (mut rfb, chosen) = console(&p, "stud", None).await.unwrap();
    assert_eq!(chosen, None);
    assert_eq!(rfb.handshake().await.0, "lab-vm-4001");
    drop(rfb);
    // Only base64 offered: refused, the relay never base64-encodes.
    assert_eq!(console(&p, "stud", Some("base64")).await.err(), Some(400));
    // Several offers including binary: binary chosen.
    let (_, chosen) = console(&p, "stud", Some("base64, binary")).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("binary"));

    // A message over 64 KiB from the browser closes the console with 1009; the portal keeps serving.
    let (mut rfb, _) = console(&p, "stud", Some("binary")).await.unwrap();
    rfb.handshake().await;
    let _ = rfb.ws.send(Message::binary(vec![0u8; 1024 * 1024])).await;
    let mut code = None;
    while let Ok(Some(m)) = tokio::time::timeout(SECS, rfb.ws.next()).await {
        match m {
            Ok(Message::Close(Some(f))) => {
                code = Some(u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(1009));
    let (status, _, _) = p.get(None, "/health").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_refuses_a_user_not_allowed_on_the_vm_and_foreign_origins() {
    let p = portal(vec![], ConnectConfig::default(), None).await;
    assert_eq!(
        p.token("stud2", VM, "console").await,
        Err(404),
        "no token for another student's VM"
    );
    let own = p.token("stud", VM, "console").await.unwrap();
    assert_eq!(
        p.ws(
            "stud2",
            &format!("/ws/console/{VM}?token={own}"),
            Some(&p.origin),
            None,
            None
        )
        .await
        .err(),
        Some(404)
    );
    let other = p.token("stud2", OTHER_VM, "console").await.unwrap();
    assert_eq!(
        p.ws(
            "stud",
            &format!("/ws/console/{VM}?token={other}"),
            Some(&p.origin),
            None,
            None
        )
        .await
        .err(),
        Some(403)
    );
    for bad in ["https://evil.example.net", "null"] {
        let t = p.token("stud", VM, "console").await.unwrap();
        assert_eq!(
            p.ws(
                "stud",
                &format!("/ws/console/{VM}?token={t}"),
                Some(bad),
                None,
                None
            )
            .await
            .err(),
            Some(403),
            "{bad}"
        );
    }
    // The page itself: 404 for the other student, the noVNC page for the owner.
    let (status, _, _) = p.get(Some("stud2"), &format!("/console/{VM}")).await;
    assert_eq!(status, 404);
    let (status, _, body) = p.get(Some("stud"), &format!("/console/{VM}")).await;
    assert_eq!(status, 200);
    // MiniJinja escapes `/` in attributes as `&#x2f;` (browsers decode it).
    let html = String::from_utf8(body).unwrap().replace("&#x2f;", "/");
    assert!(html.contains("/static/vendor/novnc/core/rfb.js"), "{html}");
    assert!(html.contains(&format!("/ws/console/{VM}?cluster=lab")));
    assert!(!html.contains("PVEVNC"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_an_open_console_with_1001() {
    let p = portal(vec![], ConnectConfig::default(), None).await;
    let (mut rfb, _) = console(&p, "stud", Some("binary")).await.unwrap();
    rfb.handshake().await;
    p.state.connect.begin_shutdown();
    let closed = loop {
        match tokio::time::timeout(SECS, rfb.ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(closed, (1001, "server restarting".to_string()));
}

/// The attack: a student keeps a VM console open after being signed out everywhere (all their
/// sessions revoked). The relay closes with 4009 within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_console_closes_with_4009_within_a_second_of_the_students_sessions_being_revoked() {
    let p = portal(vec![], ConnectConfig::default(), None).await;
    let (mut rfb, _) = console(&p, "stud", Some("binary")).await.unwrap();
    rfb.handshake().await;
    p.store.remove_user_sessions("stud").unwrap();
    let closed = loop {
        match tokio::time::timeout(Duration::from_millis(1500), rfb.ws.next())
            .await
            .expect("closed within 1.5 s")
        {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(closed, web::connect::close::SIGNED_OUT);
}
