//! `GET /rdp/{vmid}.rdp` through the real router with the shipped `scripts/rdp/default.rhai`: a snapshot
//! of the default file, FreeRDP reading a served UTF-16 file (host, port, user name), IPv6 and odd VM names,
//! and who may download it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod connect_common;

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use connect_common::{OTHER_VM, Portal, VM, VM_IP, guest, portal};
use serde_json::json;
use web::connect::{ConnectConfig, Scripts};

const WINDOWS_VM: u32 = 4005;
const ODD_VM: u32 = 4003;
const STOPPED_VM: u32 = 4004;

fn scripts() -> Scripts {
    let host = Arc::new(script::NullHost::new(tokio::runtime::Handle::current()));
    let runtime = script::ScriptRuntime::new(host, script::Limits::default());
    let sources = script::SetSources {
        defaults: Some(testkit::workspace_root().join("scripts")),
        ..Default::default()
    };
    let set = runtime
        .load_set(&sources)
        .unwrap_or_else(|e| panic!("{}", script::format_load_errors(&e)));
    Scripts {
        runtime,
        set: Arc::new(Arc::new(set)),
    }
}

/// The portal with the RDP script, VM 4001 (Windows, RDP moved to `rdp_port` by a tag), a Windows VM
/// without tags, a VM with an odd name and an IPv6 address, and a stopped VM — all but 4002 the student's.
async fn rdp_portal(rdp_port: u16) -> Portal {
    let mut odd = guest(ODD_VM, "Jörg's \"lab\" VM #1", "win11", "");
    odd["agent"] = json!({"interfaces": [
        {"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": [{"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128}]},
        {"name": "Ethernet", "hardware-address": "bc:24:11:40:0f:a3", "ip-addresses": [
            {"ip-address": "fe80::be24:11ff:fe40:fa3", "ip-address-type": "ipv6", "prefix": 64},
            {"ip-address": "2001:db8::7", "ip-address-type": "ipv6", "prefix": 64}]}]});
    let mut stopped = guest(STOPPED_VM, "w11-stopped", "win11", "");
    stopped["status"] = json!("stopped");
    let guests = vec![
        guest(VM, "w11-lab-01", "win11", &format!("rdp-port-{rdp_port}")),
        guest(OTHER_VM, "w11-lab-02", "win11", ""),
        odd,
        stopped,
        guest(WINDOWS_VM, "w11-lab-07", "win11", ""),
    ];
    let p = portal(guests, ConnectConfig::default(), Some(scripts())).await;
    for vmid in [ODD_VM, STOPPED_VM, WINDOWS_VM] {
        p.store
            .create_assignment(store::AssignmentRecord {
                cluster: "lab".into(),
                vmid,
                user: "stud".into(),
                ..Default::default()
            })
            .unwrap();
    }
    p.state.auth.rebuild_index();
    p
}

fn decode(bytes: &[u8]) -> String {
    assert_eq!(&bytes[..2], &[0xFF, 0xFE], "UTF-16 LE with BOM");
    web::rdp::decode(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_file_from_the_default_script_is_served_only_to_the_vms_users() {
    let p = rdp_portal(3390).await;
    let (status, headers, body) = p.get(Some("stud"), &format!("/rdp/{WINDOWS_VM}.rdp")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-rdp");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"w11-lab-07.rdp\""
    );
    let text = decode(&body);
    assert!(
        text.split_inclusive('\n').all(|l| l.ends_with("\r\n")),
        "CRLF lines only"
    );
    insta::assert_snapshot!("default_rdp_file", text.replace("\r\n", "⏎\n"));

    // Moved port (tag rdp-port-3390) and the user name hint.
    let (_, _, body) = p.get(Some("stud"), &format!("/rdp/{VM}.rdp")).await;
    let text = decode(&body);
    assert!(
        text.starts_with(&format!("full address:s:{VM_IP}:3390\r\n")),
        "{text}"
    );
    assert!(text.contains("username:s:stud\r\n"));

    // IPv6 in brackets; an odd name gives a safe file name and a valid title line.
    let (status, headers, body) = p.get(Some("stud"), &format!("/rdp/{ODD_VM}.rdp")).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"J_rg_s__lab__VM__1.rdp\""
    );
    let text = decode(&body);
    assert!(
        text.starts_with("full address:s:[2001:db8::7]:3389\r\n"),
        "{text}"
    );
    assert!(text.contains("title:s:Jörg's \"lab\" VM #1\r\n"), "{text}");
    assert!(!text.to_lowercase().contains("password"), "never a password");

    // Who may download: the owner; not another student (404), not anonymous (401). A stopped VM: 409.
    assert_eq!(p.get(Some("stud2"), &format!("/rdp/{VM}.rdp")).await.0, 404);
    assert_eq!(p.get(None, &format!("/rdp/{VM}.rdp")).await.0, 401);
    assert_eq!(
        p.get(Some("root"), &format!("/rdp/{VM}.rdp")).await.0,
        200,
        "admins may"
    );
    assert_eq!(
        p.get(Some("stud"), &format!("/rdp/{STOPPED_VM}.rdp")).await.0,
        409
    );
    assert_eq!(p.get(Some("stud"), "/rdp/not-a-vm.rdp").await.0, 404);
    assert_eq!(p.get(Some("stud"), &format!("/rdp/{VM}.txt")).await.0, 404);
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freerdp_reads_a_served_file_with_the_vms_address_port_and_user() {
    assert!(
        have("xfreerdp") && have("xvfb-run"),
        "xfreerdp/xvfb-run missing: run dev/setup (freerdp2-x11 xvfb)"
    );
    // Something listens where the file points: the VM's loopback address and its tagged RDP port.
    let listener = TcpListener::bind((VM_IP, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let p = rdp_portal(port).await;
    let (status, _, body) = p.get(Some("stud"), &format!("/rdp/{VM}.rdp")).await;
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w11-lab-01.rdp");
    std::fs::write(&file, &body).unwrap();
    let got = tokio::task::spawn_blocking(move || {
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
            .unwrap();
        let got = accept.join().unwrap();
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
        got
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        !got.is_empty(),
        "FreeRDP did not connect: it could not parse the served file"
    );
    assert!(text.contains("Cookie: mstshash=stud"), "{text:?}");
}

/// The set of a site whose RDP script returns one fixed address, changed by the test between calls.
struct SiteScripts {
    runtime: script::ScriptRuntime,
    dir: tempfile::TempDir,
    set: std::sync::Mutex<Arc<script::ScriptSet>>,
}

impl SiteScripts {
    fn new() -> Arc<SiteScripts> {
        let host = Arc::new(script::NullHost::new(tokio::runtime::Handle::current()));
        let runtime = script::ScriptRuntime::new(host, script::Limits::default());
        let site = SiteScripts {
            runtime,
            dir: tempfile::tempdir().unwrap(),
            set: std::sync::Mutex::new(Arc::new(script::ScriptSet::default())),
        };
        site.returning("127.0.0.1");
        Arc::new(site)
    }

    /// Makes the RDP script return `address` for every VM (a typo, a leftover test value).
    fn returning(&self, address: &str) {
        self.with_body(&format!(
            "#{{ address: \"{address}\", port: 3389, username: user.name }}"
        ));
    }

    /// Makes the RDP script's `rdp_settings(vm, user)` body `body`.
    fn with_body(&self, body: &str) {
        std::fs::create_dir_all(self.dir.path().join("rdp")).unwrap();
        std::fs::write(
            self.dir.path().join("rdp/default.rhai"),
            format!("fn rdp_settings(vm, user) {{ {body} }}\n"),
        )
        .unwrap();
        let sources = script::SetSources {
            defaults: Some(testkit::workspace_root().join("scripts")),
            site: Some(self.dir.path().to_path_buf()),
            ..Default::default()
        };
        let set = self
            .runtime
            .load_set(&sources)
            .unwrap_or_else(|e| panic!("{}", script::format_load_errors(&e)));
        *self.set.lock().unwrap() = Arc::new(set);
    }
}

impl web::connect::ScriptSetSource for SiteScripts {
    fn current_set(&self) -> Arc<script::ScriptSet> {
        self.set.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_files_never_point_at_loopback_link_local_or_the_portal_itself_and_a_scripts_refusal_reaches_the_student()
 {
    let site = SiteScripts::new();
    let scripts = Scripts {
        runtime: site.runtime.clone(),
        set: site.clone(),
    };
    let p = portal(vec![], ConnectConfig::default(), Some(scripts)).await;
    let own = web::connect::own_addresses()
        .into_iter()
        .find(|a| !a.is_loopback())
        .map(|a| a.to_string());
    let mut refused = vec!["127.0.0.1", "::1", "169.254.10.20", "fe80::1", "0.0.0.0"];
    if let Some(own) = &own {
        refused.push(own.as_str());
    }
    for address in refused {
        site.returning(address);
        let (status, _, body) = p.get(Some("stud"), &format!("/rdp/{VM}.rdp")).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 409, "{address}: {body}");
        assert!(body.contains(address), "the refusal names the address: {body}");
        let audit = p.store.audit_recent(1).unwrap();
        assert_eq!(audit[0].action, "vm.rdp");
        assert!(audit[0].result.starts_with("refused:"), "{audit:?}");
    }
    // A routed address a site's script gives (a gateway the students' clients reach) stays allowed.
    site.returning("198.18.4.7");
    let (status, _, body) = p.get(Some("stud"), &format!("/rdp/{VM}.rdp")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    // A script that refuses with a status: the student gets that status, code and message.
    site.with_body(
        r#"throw #{status: 409, code: "no_rdp_today", message: "Remote Desktop is closed during the exam."}"#,
    );
    let (status, _, body) = p.get(Some("stud"), &format!("/rdp/{VM}.rdp")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "no_rdp_today");
    assert_eq!(v["error"]["message"], "Remote Desktop is closed during the exam.");
    // Without a status it is the site script's fault: not the student's request.
    site.with_body(r#"throw "oops""#);
    let (status, _, _) = p.get(Some("stud"), &format!("/rdp/{VM}.rdp")).await;
    assert_eq!(status, 500);
}
