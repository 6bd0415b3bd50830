#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the parsers of untrusted PVE text (issue 7, "bad input"): UPIDs, task status and
//! exit statuses, error classification, property strings (`netN` MACs, disk specs, sizes), tags,
//! guest-agent / LXC interface answers, `/cluster/resources` rows and certificate fingerprints.
//!
//! Each property feeds generated valid values (which must parse to exactly the fields they were made
//! from) and arbitrary text or JSON (which must give a typed answer — a value whose fields are
//! consistent with the input, or an error — and never panic).

use std::fmt::Write as _;

use proptest::prelude::*;
use pve::{
    AgentInterface, ClusterResource, Fingerprint, GuestConfig, GuestKind, LxcInterface, PveError, Tags,
    TaskOutcome, TaskStatus, Upid, classify, classify_task_failure, parse_size,
};
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON, up to a few levels deep, with the shapes PVE answers have (objects of scalars,
/// lists of objects) and plenty of odd strings.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
        "[0-9]{1,25}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z-]{1,16}",
                    Just("vmid".to_string()),
                    Just("type".to_string()),
                    Just("node".to_string()),
                    Just("status".to_string()),
                    Just("ip-addresses".to_string()),
                    Just("ip-address".to_string()),
                    Just("prefix".to_string()),
                    Just("name".to_string()),
                    Just("tags".to_string()),
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn hex_upper(n: u64, width: usize) -> String {
    format!("{n:0width$X}")
}

proptest! {
    #![proptest_config(config())]

    /// A UPID made from any valid fields parses back to exactly those fields, and prints and
    /// serializes as the original string.
    #[test]
    fn upid_from_valid_fields_round_trips(
        node in "[a-zA-Z0-9][a-zA-Z0-9.-]{0,20}",
        pid in any::<u32>(),
        pstart in any::<u64>(),
        starttime in any::<u64>(),
        kind in "[a-z]{1,12}",
        id in "[A-Za-z0-9._-]{0,10}",
        user in "[a-z]{1,8}@[a-z]{1,6}(![a-z0-9]{1,6})?",
        lower in any::<bool>(),
    ) {
        let mut s = format!(
            "UPID:{node}:{}:{}:{}:{kind}:{id}:{user}:",
            hex_upper(u64::from(pid), 8),
            hex_upper(pstart, 8),
            hex_upper(starttime, 8)
        );
        if lower {
            s = s.replace(&hex_upper(u64::from(pid), 8), &hex_upper(u64::from(pid), 8).to_lowercase());
        }
        let u: Upid = s.parse().unwrap();
        prop_assert_eq!(&u.node, &node);
        prop_assert_eq!(u.pid, pid);
        prop_assert_eq!(u.pstart, pstart);
        prop_assert_eq!(u.starttime, starttime);
        prop_assert_eq!(&u.kind, &kind);
        prop_assert_eq!(&u.id, &id);
        prop_assert_eq!(&u.user, &user);
        prop_assert_eq!(u.to_string(), s.clone());
        let json = serde_json::to_string(&u).unwrap();
        prop_assert_eq!(serde_json::from_str::<Upid>(&json).unwrap(), u);
    }

    /// Any text parses either to a UPID whose fields are exactly the text's `:`-separated parts (hex
    /// numbers decoded, nothing invented) or to an error that quotes the text; never a panic.
    #[test]
    fn upid_garbage_is_refused_or_parsed_consistently(s in prop_oneof![
        ".{0,80}",
        "UPID:[^:]{0,6}:[0-9A-Fa-fx]{0,18}:[0-9A-F]{0,18}:[0-9A-Fg]{0,18}:[a-z]{0,4}:[^:]{0,4}:[^:]{0,6}:.{0,2}",
    ]) {
        match s.parse::<Upid>() {
            Ok(u) => {
                let parts: Vec<&str> = s.split(':').collect();
                prop_assert_eq!(parts.len(), 9);
                prop_assert_eq!(parts[0], "UPID");
                prop_assert_eq!(parts[8], "");
                prop_assert!(!u.node.is_empty() && !u.kind.is_empty() && !u.user.is_empty());
                prop_assert_eq!(u.node.as_str(), parts[1]);
                prop_assert_eq!(u64::from(u.pid), u64::from_str_radix(parts[2], 16).unwrap());
                prop_assert_eq!(u.pstart, u64::from_str_radix(parts[3], 16).unwrap());
                prop_assert_eq!(u.starttime, u64::from_str_radix(parts[4], 16).unwrap());
                prop_assert_eq!((u.kind.as_str(), u.id.as_str(), u.user.as_str()), (parts[5], parts[6], parts[7]));
                prop_assert_eq!(u.as_str(), s.as_str());
            }
            Err(e) => prop_assert!(e.starts_with("invalid UPID"), "{e}"),
        }
        // Through serde (a task answer's `upid` field) the same text gives the same verdict.
        let via_serde = serde_json::from_value::<Upid>(Value::String(s.clone()));
        prop_assert_eq!(via_serde.is_ok(), s.parse::<Upid>().is_ok());
    }

    /// One character inserted anywhere into a valid UPID is either refused or still gives fields
    /// consistent with the text (a `:` or non-hex digit in a number field is always refused).
    #[test]
    fn upid_with_one_inserted_character(at in 0usize..60, c in any::<char>()) {
        let base = "UPID:pve1:0001A2B3:00C0FFEE:65A1B2C3:qmstart:101:portal@pve!lab:";
        let at = at.min(base.len());
        let mut s = base.to_string();
        s.insert(at, c);
        match s.parse::<Upid>() {
            Ok(u) => {
                let parts: Vec<&str> = s.split(':').collect();
                prop_assert_eq!(u.node.as_str(), parts[1]);
                prop_assert_eq!(u.pid, u32::from_str_radix(parts[2], 16).unwrap());
                prop_assert_eq!(u.user.as_str(), parts[7]);
                prop_assert_ne!(c, ':');
            }
            Err(e) => prop_assert!(e.contains("invalid UPID"), "{e}"),
        }
    }

    /// `exitstatus`: `OK` and `WARNINGS: n` (any surrounding blanks) are successes with the right count;
    /// any other text is a failure that keeps the text.
    #[test]
    fn task_exitstatus_is_typed(
        n in any::<u32>(),
        pad in "[ \t\n]{0,3}",
        text in ".{0,40}",
    ) {
        prop_assert_eq!(TaskOutcome::from_exitstatus(&format!("{pad}OK{pad}")), Some(TaskOutcome::Ok));
        prop_assert_eq!(
            TaskOutcome::from_exitstatus(&format!("{pad}WARNINGS: {n}{pad}")),
            Some(TaskOutcome::Warnings(n))
        );
        let got = TaskOutcome::from_exitstatus(&text);
        let t = text.trim();
        match got {
            Some(TaskOutcome::Ok) => prop_assert_eq!(t, "OK"),
            Some(TaskOutcome::Warnings(w)) => {
                let rest = t.strip_prefix("WARNINGS:").unwrap().trim();
                prop_assert_eq!(rest.parse::<u32>().unwrap(), w);
            }
            None => prop_assert!(t != "OK" && !t.starts_with("WARNINGS:") || t.strip_prefix("WARNINGS:").is_some_and(|r| r.trim().parse::<u32>().is_err())),
        }
        let st = TaskStatus { status: "stopped".into(), exitstatus: Some(text.clone()), ..TaskStatus::default() };
        match st.outcome().unwrap() {
            Ok(o) => prop_assert_eq!(Some(o), got),
            Err(msg) => {
                prop_assert!(got.is_none());
                prop_assert_eq!(msg, text.trim_end());
            }
        }
        let running = TaskStatus { status: "running".into(), exitstatus: Some(text), ..TaskStatus::default() };
        prop_assert!(running.outcome().is_none());
    }

    /// A task status answer of any JSON shape deserializes or errors, never panics; a stopped task
    /// without an exit status is a failure, never a success.
    #[test]
    fn task_status_from_any_json(v in any_json(), exit in proptest::option::of(".{0,12}")) {
        let _ = serde_json::from_value::<TaskStatus>(v);
        let st: TaskStatus = serde_json::from_value(json!({"status": "stopped", "exitstatus": exit})).unwrap();
        let out = st.outcome().unwrap();
        if exit.is_none() {
            prop_assert_eq!(out, Err("unknown".to_string()));
        }
    }

    /// Error texts: any status and message give a typed error that keeps PVE's wording; the lock name
    /// of `… is locked (x)` is found anywhere in a message; unclassified task failures keep the text.
    #[test]
    fn error_classification_keeps_the_message(
        status in 400u16..600,
        msg in ".{0,60}",
        lock in "[a-z][a-z-]{0,11}",
        before in "[a-zA-Z0-9 ]{0,20}",
    ) {
        let e = classify(status, &msg);
        match status {
            403 => prop_assert!(matches!(e, PveError::PermissionDenied(ref m) if m == msg.trim_end())),
            404 => prop_assert!(matches!(e, PveError::NotFound(ref m) if m == msg.trim_end())),
            401 => prop_assert!(matches!(e, PveError::AuthExpired)),
            _ => prop_assert!(!e.to_string().is_empty()),
        }
        let text = format!("{before}VM 101 is locked ({lock})");
        match classify_task_failure("UPID:x", &text) {
            PveError::Locked { lock: l, message } => {
                prop_assert_eq!(l, lock);
                prop_assert_eq!(message, text.trim_end());
            }
            // The agent / lock-timeout wordings take precedence; the generated prefix never has them.
            other => prop_assert!(false, "{other:?}"),
        }
        if let PveError::TaskFailed { upid, exitstatus } = classify_task_failure("UPID:y", &msg) {
            prop_assert_eq!(upid, "UPID:y");
            prop_assert_eq!(exitstatus, msg.trim_end());
        }
    }

    /// PVE sizes: `n` with any unit gives n × unit bytes (or `None` on overflow); any text gives a
    /// value or `None`, never a panic.
    #[test]
    fn sizes_parse_exactly(n in any::<u32>(), unit in prop::sample::select(vec!["", "K", "M", "G", "T", "B", "k", "g"]), junk in ".{0,16}") {
        let mult: u64 = match unit {
            "K" | "k" => 1 << 10,
            "M" => 1 << 20,
            "G" | "g" => 1 << 30,
            "T" => 1 << 40,
            _ => 1,
        };
        prop_assert_eq!(parse_size(&format!("{n}{unit}")), u64::from(n).checked_mul(mult));
        prop_assert_eq!(parse_size(&format!(" {n}{unit} ")), u64::from(n).checked_mul(mult));
        let _ = parse_size(&junk);
        prop_assert_eq!(parse_size(&format!("-{n}{unit}")).filter(|_| n != 0), None);
    }

    /// `netN` property strings: the QEMU `model=MAC` form and the LXC `hwaddr=` form give the model,
    /// the MAC in lower case, the bridge and the VLAN tag, whatever the order of the other options.
    #[test]
    fn nic_property_strings_round_trip(
        index in 0u32..32,
        mac in prop::array::uniform6(any::<u8>()),
        model in prop::sample::select(vec!["virtio", "e1000", "rtl8139", "vmxnet3"]),
        bridge in "vmbr[0-9]{1,3}",
        tag in proptest::option::of(1u32..4095),
        lxc in any::<bool>(),
        firewall in any::<bool>(),
    ) {
        let mac_s = mac.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
        let mut value = if lxc {
            format!("name=eth0,bridge={bridge},hwaddr={mac_s},ip=dhcp,type=veth")
        } else {
            format!("{model}={mac_s},bridge={bridge}")
        };
        if let Some(t) = tag {
            write!(value, ",tag={t}").unwrap();
        }
        if firewall {
            value.push_str(",firewall=1");
        }
        let cfg = GuestConfig(serde_json::from_value(json!({ format!("net{index}"): value, "netx": "junk" })).unwrap());
        let nics = cfg.nics();
        prop_assert_eq!(nics.len(), 1);
        let nic = &nics[0];
        prop_assert_eq!(nic.index, index);
        prop_assert_eq!(nic.mac.clone(), Some(mac_s.to_lowercase()));
        prop_assert_eq!(nic.bridge.clone(), Some(bridge));
        prop_assert_eq!(nic.tag, tag);
        prop_assert_eq!(nic.model.as_deref(), Some(if lxc { "veth" } else { model }));
        prop_assert_eq!(nic.ip.clone(), None);
    }

    /// Disk specs: storage, volume, format and size come back exactly; `none` drives are left out.
    #[test]
    fn disk_specs_round_trip(
        storage in "[a-z][a-z0-9-]{0,12}",
        vmid in 100u32..999_999,
        disk in 0u32..8,
        fmt in prop::sample::select(vec!["qcow2", "raw", "vmdk"]),
        gib in 1u32..4096,
        bus in prop::sample::select(vec!["scsi", "sata", "virtio", "ide"]),
        extra in "(,iothread=1)?(,cache=none)?",
    ) {
        let volume = format!("{storage}:{vmid}/vm-{vmid}-disk-{disk}.{fmt}");
        let cfg = GuestConfig(serde_json::from_value(json!({
            format!("{bus}0"): format!("{volume}{extra},size={gib}G"),
            format!("{bus}1"): "none,media=cdrom",
        })).unwrap());
        let disks = cfg.disks();
        prop_assert_eq!(disks.len(), 1);
        let d = &disks[0];
        prop_assert_eq!(&d.volume, &volume);
        prop_assert_eq!(d.storage.clone(), Some(storage));
        prop_assert_eq!(d.format.as_deref(), Some(fmt));
        prop_assert_eq!(d.size_bytes, Some(u64::from(gib) << 30));
        prop_assert!(!d.is_cdrom && !d.is_unused && !d.is_efi);
    }

    /// Any guest config (any keys, any JSON values, any property-string garbage) gives NICs and disks
    /// whose fields are consistent with the input, and never panics.
    #[test]
    fn guest_config_of_garbage_is_consistent(
        values in prop::collection::btree_map(
            prop_oneof![
                "(net|scsi|sata|ide|virtio|unused|mp|efidisk)[0-9]{1,2}",
                Just("rootfs".to_string()),
                Just("agent".to_string()),
                Just("memory".to_string()),
                Just("tags".to_string()),
                "[a-z]{1,8}",
            ],
            prop_oneof![
                "[^\\u{0}]{0,40}".prop_map(Value::String),
                "([a-z=:/.,0-9A-F]){0,40}".prop_map(Value::String),
                any_json(),
            ],
            0..10,
        ),
    ) {
        let cfg = GuestConfig(values.clone().into_iter().collect());
        for nic in cfg.nics() {
            // `net00` and `net0` both name NIC 0; some `net<digits>` key gave it.
            let named = values.keys().any(|k| {
                k.strip_prefix("net").and_then(|d| d.parse::<u32>().ok()) == Some(nic.index)
            });
            prop_assert!(named);
            if let Some(mac) = &nic.mac {
                prop_assert_eq!(mac.clone(), mac.to_ascii_lowercase());
            }
        }
        for d in cfg.disks() {
            prop_assert!(values.contains_key(&d.key));
            prop_assert!(!d.volume.is_empty() && d.volume != "none");
            if let Some(s) = &d.storage {
                let head = format!("{s}:");
                prop_assert!(d.volume.starts_with(&head));
            }
        }
        let _ = (cfg.agent_enabled(), cfg.memory_mib(), cfg.cores(), cfg.tags(), cfg.name(), cfg.onboot());
    }

    /// Tags: parsing PVE's form gives a set whose PVE form parses back to the same set; no tag holds a
    /// separator or blank; equality ignores ASCII case and order.
    #[test]
    fn tags_round_trip(s in "[a-zA-Z0-9;, _.\\-\u{e9}\u{4e2d}]{0,40}") {
        let t = Tags::parse(&s);
        for tag in t.iter() {
            prop_assert!(!tag.is_empty());
            prop_assert!(!tag.contains([';', ',']) && !tag.contains(char::is_whitespace));
        }
        prop_assert_eq!(Tags::parse(&t.to_pve_string()), t.clone());
        prop_assert_eq!(Tags::parse(&s.to_ascii_uppercase()), t.clone());
        let json = serde_json::to_value(&t).unwrap();
        prop_assert_eq!(serde_json::from_value::<Tags>(json).unwrap(), t);
    }

    /// Guest-agent and LXC interface answers: generated interfaces come back with their addresses and
    /// prefixes (numbers or numeric strings); any JSON gives interfaces or an error, never a panic.
    #[test]
    fn agent_interfaces_parse(
        name in "[a-zA-Z0-9 ]{1,12}",
        ips in prop::collection::vec((any::<[u8; 4]>(), 0u8..=32, any::<bool>()), 0..4),
        null_list in any::<bool>(),
        garbage in any_json(),
    ) {
        let addrs: Vec<Value> = ips.iter().map(|(o, p, as_str)| json!({
            "ip-address": format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3]),
            "ip-address-type": "ipv4",
            "prefix": if *as_str { json!(p.to_string()) } else { json!(p) },
        })).collect();
        let list = if null_list && addrs.is_empty() { Value::Null } else { Value::Array(addrs) };
        let v: Vec<AgentInterface> = serde_json::from_value(json!([
            {"name": name, "hardware-address": "BC:24:11:00:00:01", "ip-addresses": list}
        ])).unwrap();
        prop_assert_eq!(v.len(), 1);
        prop_assert_eq!(&v[0].name, &name);
        prop_assert_eq!(v[0].ip_addresses.len(), ips.len());
        for (got, (o, p, _)) in v[0].ip_addresses.iter().zip(&ips) {
            prop_assert_eq!(&got.ip_address, &format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3]));
            prop_assert_eq!(got.prefix, *p);
            prop_assert!(!got.is_ipv6());
        }
        let _ = serde_json::from_value::<Vec<AgentInterface>>(garbage.clone());
        let _ = serde_json::from_value::<Vec<LxcInterface>>(garbage.clone());
        // A prefix that is not a u8 is an error, never a wrapped value.
        let bad = serde_json::from_value::<Vec<AgentInterface>>(json!([
            {"name": "x", "ip-addresses": [{"ip-address": "10.0.0.1", "prefix": 300}]}
        ]));
        prop_assert!(bad.is_err());
    }

    /// `/cluster/resources` rows with PVE's loose typing (numbers as strings, 0/1 booleans) give the
    /// right fields; any JSON row gives a row or an error.
    #[test]
    fn cluster_resources_parse(
        vmid in 100u32..1_000_000_000,
        node in "[a-z][a-z0-9-]{0,10}",
        mem in any::<u64>(),
        as_strings in any::<bool>(),
        lxc in any::<bool>(),
        template in any::<bool>(),
        garbage in any_json(),
    ) {
        let num = |n: u64| if as_strings { json!(n.to_string()) } else { json!(n) };
        let kind = if lxc { "lxc" } else { "qemu" };
        let row = json!({
            "id": format!("{kind}/{vmid}"), "vmid": num(u64::from(vmid)), "type": kind, "node": node,
            "mem": num(mem), "template": if as_strings { json!(u8::from(template).to_string()) } else { json!(u8::from(template)) },
            "status": "running", "tags": "a;B;a",
        });
        let r: ClusterResource = serde_json::from_value(row).unwrap();
        prop_assert_eq!(r.vmid, vmid);
        prop_assert_eq!(&r.node, &node);
        prop_assert_eq!(r.mem, mem);
        prop_assert_eq!(r.template, template);
        prop_assert_eq!(r.kind, if lxc { GuestKind::Lxc } else { GuestKind::Qemu });
        prop_assert_eq!(r.tags.len(), 2);
        let _ = serde_json::from_value::<Vec<ClusterResource>>(garbage.clone());
        let _ = serde_json::from_value::<ClusterResource>(garbage);
        // A VMID past u32 is refused, not wrapped.
        let big = json!({"id": "qemu/1", "vmid": u64::from(u32::MAX) + 1 + u64::from(vmid), "type": "qemu", "node": "n"});
        prop_assert!(serde_json::from_value::<ClusterResource>(big).is_err());
    }

    /// Certificate fingerprints from a config file: any text gives a fingerprint or a config error
    /// naming the text — never a panic (multi-byte characters next to the `sha256:` prefixes included);
    /// every spelling of a real fingerprint (case, colons, prefixes) gives the same 32 bytes.
    #[test]
    fn fingerprints_parse_or_are_refused(
        bytes in any::<[u8; 32]>(),
        lower in any::<bool>(),
        colons in any::<bool>(),
        prefix in prop::sample::select(vec!["", "sha256:", "SHA256 Fingerprint=", "sha-256:", "sha256="]),
        junk in prop_oneof![".{0,40}", "[a-zA-Z0-9]{0,24}[\u{e9}\u{4e2d}\u{1f600}][a-zA-Z0-9:]{0,70}"],
    ) {
        let mut hexs: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
        if lower {
            hexs = hexs.iter().map(|h| h.to_lowercase()).collect();
        }
        let text = format!("{prefix}{}", hexs.join(if colons { ":" } else { "" }));
        let fp: Fingerprint = text.parse().unwrap();
        prop_assert_eq!(fp.as_bytes(), &bytes);
        prop_assert_eq!(fp.to_string().parse::<Fingerprint>().unwrap(), fp);
        match junk.parse::<Fingerprint>() {
            Ok(f) => prop_assert_eq!(f.as_bytes().len(), 32),
            Err(e) => {
                prop_assert!(matches!(e, PveError::Config(_)), "{e:?}");
                prop_assert!(e.to_string().contains(&junk), "{e}");
            }
        }
    }
}

/// Fixed cases found by the properties above: a multi-byte character straddling the end of a
/// `sha256…` prefix length used to panic the fingerprint parser (a `str` sliced inside a character).
#[test]
fn fingerprint_with_multibyte_character_at_prefix_boundary_is_an_error_not_a_panic() {
    for s in [
        "abcdef\u{e9}",
        "AAAAAAAAAAAAAAAAAA\u{e9}xyz",
        "sha25\u{4e2d}",
        "\u{1f600}AAAA",
    ] {
        let r = std::panic::catch_unwind(|| s.parse::<Fingerprint>());
        let r = r.unwrap_or_else(|_| panic!("parsing {s:?} panicked"));
        assert!(matches!(r, Err(PveError::Config(_))), "{s:?}: {r:?}");
    }
}

/// Numbers that do not fit a field are an error, never a silently clamped value (module doc of the
/// lenient helpers): a `mem` of 1e30 or `"inf"` must not become `u64::MAX`.
#[test]
fn oversized_numbers_are_refused_not_saturated() {
    for mem in [json!(1e30), json!("1e30"), json!("inf"), json!(-1), json!("-5")] {
        let row = json!({"id": "qemu/1", "vmid": 1, "type": "qemu", "node": "n", "mem": mem});
        let r = serde_json::from_value::<ClusterResource>(row);
        assert!(r.is_err(), "mem {mem} gave {:?}", r.map(|r| r.mem));
    }
}
