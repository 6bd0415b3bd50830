//! Proxlab's persistent state: a sled 0.34 database with one typed tree per entity of DESIGN §2.
//!
//! This crate owns the on-disk format: the entity records ([`records`]), their JSON codec, the schema
//! version with forward migrations ([`schema`]) and the few multi-tree updates whose invariant spans trees.
//! It must never depend on another Proxlab crate, never know about HTTP, Proxmox or scripts, and never
//! overwrite a database it does not understand: a corrupt or newer-than-known database is refused with a
//! clear [`StoreError`], and nothing already stored is touched.
//!
//! Keys that name a VM always carry the cluster (`cluster/vmid`), because VMIDs are unique only inside a
//! cluster.

pub mod accounts;
pub mod records;
pub mod schema;
mod tree;

use std::path::{Path, PathBuf};

pub use accounts::{split_realm, validate_local_name, vm_name_from};
pub use records::*;
pub use tree::Tree;

/// Errors of the store. Every variant names what is wrong; none is ever answered by overwriting data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database files exist but sled cannot read them.
    #[error(
        "the database at {path} is corrupt or unreadable ({detail}); it was left untouched — restore a backup or move it away"
    )]
    Corrupt { path: PathBuf, detail: String },
    /// Another process holds the database's lock (another Proxlab on the same data dir).
    #[error(
        "the database at {path} is in use by another process ({detail}); is another proxlab running with this data_dir? Nothing was changed"
    )]
    Locked { path: PathBuf, detail: String },
    /// The database was written by a newer Proxlab.
    #[error(
        "the database at {path} has schema version {found}, newer than this Proxlab knows ({supported}); upgrade Proxlab or point it at another data dir"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// A stored record could not be decoded.
    #[error("record {key} in tree {tree} cannot be decoded: {detail}")]
    Decode {
        tree: String,
        key: String,
        detail: String,
    },
    /// A record could not be encoded (never expected for our types).
    #[error("record for tree {tree} cannot be encoded: {detail}")]
    Encode { tree: String, detail: String },
    /// An entity that must exist does not.
    #[error("{what} not found")]
    NotFound { what: String },
    /// An entity that must be new already exists.
    #[error("{what} already exists")]
    Conflict { what: String },
    /// A multi-tree transaction was aborted by its own rule.
    #[error("{0}")]
    Rejected(String),
    /// An I/O error from sled.
    #[error("database I/O error: {0}")]
    Io(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The opened database with one typed tree per entity.
///
/// Cheap to clone (sled handles are reference counted). All trees share one sled `Db`, so a
/// [`sled::Transactional`] over several trees is atomic.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    /// Connected Proxmox clusters, by cluster id.
    pub clusters: Tree<ClusterRecord>,
    /// Nodes' SSH access and storage paths, key `cluster/node`.
    pub nodes: Tree<NodeRecord>,
    /// The last known inventory, key `cluster/vmid` (zero-padded vmid so keys sort numerically).
    pub inventory: Tree<GuestRecord>,
    /// Accounts, by user name (`alice` for local users, `alice@pve` for realm users).
    pub users: Tree<UserRecord>,
    /// Browser sessions, by SHA-256 hex of the session id.
    pub sessions: Tree<SessionRecord>,
    /// API tokens, by SHA-256 hex of the token secret.
    pub api_tokens: Tree<ApiTokenRecord>,
    /// Classes, by class id.
    pub classes: Tree<ClassRecord>,
    /// Registered templates, key `cluster/vmid`.
    pub templates: Tree<TemplateRecord>,
    /// VM assignments, by assignment id.
    pub assignments: Tree<AssignmentRecord>,
    /// Long operations (deploy, publish, delete) with their per-VM step journal, by job id.
    pub jobs: Tree<JobRecord>,
    /// Audit log, key = zero-padded microsecond timestamp + sequence, so it iterates in time order.
    pub audit: Tree<AuditRecord>,
    /// Class hours settings (timetable, quota), by class id; a class without one has no class hours.
    pub class_hours: Tree<ClassHoursRecord>,
    /// The last class-hours action performed per class, by class id.
    pub hours_marks: Tree<HoursMarkRecord>,
    /// Usage-hour accounting per student VM, key [`usage_key`] (`class/user`).
    pub usage: Tree<UsageRecord>,
    meta: sled::Tree,
    /// Group commit of [`Store::flush_covering`]: flushes begun, and the index of the last one done.
    flushes_begun: std::sync::Arc<std::sync::atomic::AtomicU64>,
    flush_done: std::sync::Arc<std::sync::Mutex<u64>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// sled's page cache size (64 MiB).
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// sled's answer when another process holds the database's file lock.
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

impl Store {
    /// Opens (or creates) the database in directory `path`.
    ///
    /// Errors: [`StoreError::Locked`] when another process holds the database (after waiting up to 2 s for
    /// a process that is exiting), [`StoreError::Corrupt`] when sled cannot read the files, [`StoreError::TooNew`] when the
    /// schema version is newer than [`schema::CURRENT`]. An older schema is migrated forward in place, one
    /// version at a time, each step in one transaction.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let config = sled::Config::new()
            .path(&path)
            .mode(sled::Mode::HighThroughput)
            // The page cache: sled's default (1 GiB) would let a busy server grow far past its working set.
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(Some(500));
        // The lock of a process that just died (kill -9) is released by the kernel as it exits; a restart
        // racing that exit waits briefly rather than failing.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) if is_lock_error(&e) => {
                    return Err(StoreError::Locked {
                        path: path.clone(),
                        detail: e.to_string(),
                    });
                }
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        path: path.clone(),
                        detail: e.to_string(),
                    });
                }
            }
        };
        let store = Store::from_db(db, path)?;
        schema::migrate(&store)?;
        Ok(store)
    }

    /// The typed trees over an opened sled database (no migration yet).
    pub(crate) fn from_db(db: sled::Db, path: PathBuf) -> Result<Store> {
        let meta = db.open_tree("meta")?;
        let open = |name: &str| -> Result<sled::Tree> { Ok(db.open_tree(name)?) };
        let store = Store {
            clusters: Tree::new("clusters", open("clusters")?),
            nodes: Tree::new("nodes", open("nodes")?),
            inventory: Tree::new("inventory", open("inventory")?),
            users: Tree::new("users", open("users")?),
            sessions: Tree::new("sessions", open("sessions")?),
            api_tokens: Tree::new("api_tokens", open("api_tokens")?),
            classes: Tree::new("classes", open("classes")?),
            templates: Tree::new("templates", open("templates")?),
            assignments: Tree::new("assignments", open("assignments")?),
            jobs: Tree::new("jobs", open("jobs")?),
            audit: Tree::new("audit", open("audit")?),
            class_hours: Tree::new("class_hours", open("class_hours")?),
            hours_marks: Tree::new("hours_marks", open("hours_marks")?),
            usage: Tree::new("usage", open("usage")?),
            meta,
            db,
            path,
            flushes_begun: std::sync::Arc::default(),
            flush_done: std::sync::Arc::default(),
        };
        Ok(store)
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version stored in the database.
    pub fn schema_version(&self) -> Result<u32> {
        schema::read_version(&self.meta)
    }

    /// Flushes every dirty page to disk (called on shutdown).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Makes every write done before this call durable, sharing flushes between concurrent callers (group
    /// commit): a caller whose writes a flush begun after its arrival already covers returns when that
    /// flush ends instead of starting another. Blocking (fsync): call it off the async workers, e.g. in
    /// `spawn_blocking`. Errors: sled's I/O error.
    pub fn flush_covering(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let arrived = self.flushes_begun.load(Ordering::SeqCst);
        let mut done = self.flush_done.lock().unwrap_or_else(|e| e.into_inner());
        if *done > arrived {
            return Ok(()); // a flush that began after this caller's writes has completed
        }
        let index = self.flushes_begun.fetch_add(1, Ordering::SeqCst) + 1;
        self.db.flush()?;
        *done = index;
        Ok(())
    }

    /// A new unique id (monotonic within this database), for jobs, assignments and audit entries.
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }

    /// Appends an audit entry; key orders entries by time.
    pub fn audit(&self, entry: AuditRecord) -> Result<()> {
        let seq = self.next_id()?;
        let key = format!("{:020}-{:010}", entry.at_micros, seq);
        self.audit.insert(&key, &entry)
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit_recent(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.audit.iter_rev() {
            let (_, v) = item?;
            out.push(v);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub(crate) fn meta(&self) -> &sled::Tree {
        &self.meta
    }

    /// A tree another crate owns, by its name in [`schema::OWNED_TREES`] (the deployer's reservations,
    /// class VMs, invites and teacher limits). Errors: [`StoreError::Rejected`] for a name the schema
    /// does not declare, sled's I/O error.
    pub fn owned_tree(&self, name: &str) -> Result<sled::Tree> {
        if !schema::OWNED_TREES.iter().any(|t| t.name == name) {
            return Err(StoreError::Rejected(format!(
                "tree {name:?} is not declared in the store schema (store::schema::OWNED_TREES)"
            )));
        }
        Ok(self.db.open_tree(name)?)
    }

    /// The underlying sled database, for multi-tree transactions over [`Tree::raw`] handles.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

/// Key of a VM-scoped record: `cluster/vmid` with the VMID zero-padded to 10 digits.
pub fn vm_key(cluster: &str, vmid: u32) -> String {
    format!("{cluster}/{vmid:010}")
}

/// Key of a [`UsageRecord`]: `class/user` (class ids are DNS labels, so the first `/` separates).
pub fn usage_key(class: &str, user: &str) -> String {
    format!("{class}/{user}")
}

/// Parses a [`vm_key`] back into `(cluster, vmid)`.
pub fn parse_vm_key(key: &str) -> Option<(String, u32)> {
    let (cluster, vmid) = key.rsplit_once('/')?;
    Some((cluster.to_string(), vmid.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(cluster: &str, vmid: u32) -> GuestRecord {
        GuestRecord {
            cluster: cluster.into(),
            vmid,
            node: "pve1".into(),
            name: format!("vm-{vmid}"),
            status: "running".into(),
            ..GuestRecord::default()
        }
    }

    #[test]
    fn reopen_keeps_records_and_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.inventory.insert(&vm_key("a", 101), &guest("a", 101)).unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), schema::CURRENT);
        let g = s.inventory.get(&vm_key("a", 101)).unwrap().unwrap();
        assert_eq!(g.vmid, 101);
        assert_eq!(g.name, "vm-101");
    }

    #[test]
    fn same_vmid_in_two_clusters_are_two_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.inventory.insert(&vm_key("a", 101), &guest("a", 101)).unwrap();
        s.inventory.insert(&vm_key("b", 101), &guest("b", 101)).unwrap();
        assert_eq!(s.inventory.len(), 2);
        assert_eq!(s.inventory.scan_prefix("a/").count(), 1);
    }

    #[test]
    fn a_version_1_database_with_the_deployers_trees_opens_and_keeps_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let record = br#"{"class_id":"netsec","cluster":"lab","vmid":1201,"role":"student"}"#;
        {
            // What version 1 wrote: the deployer's trees opened raw, next to the store's.
            let s = Store::open(dir.path()).unwrap();
            schema::write_version(s.meta(), 1).unwrap();
            s.db()
                .open_tree("class_vms")
                .unwrap()
                .insert("netsec/lab/1201", &record[..])
                .unwrap();
            s.db()
                .open_tree("invites")
                .unwrap()
                .insert("ab12", &b"{}"[..])
                .unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), 2);
        let vms = s.owned_tree("class_vms").unwrap();
        assert_eq!(vms.get("netsec/lab/1201").unwrap().unwrap().as_ref(), &record[..]);
        assert_eq!(s.owned_tree("invites").unwrap().len(), 1);
        for t in schema::OWNED_TREES {
            assert!(s.owned_tree(t.name).is_ok(), "{}", t.name);
            assert!(t.since <= schema::CURRENT);
        }
        assert!(matches!(s.owned_tree("nonsense"), Err(StoreError::Rejected(_))));
    }

    #[test]
    fn typed_job_states_and_roles_read_and_write_the_stored_strings_unchanged() {
        // A job and an assignment as the tree holds them, with the state and role as strings.
        let job = r#"{"id":"j1","kind":"deploy","state":"failed","owner":"teach","class_id":"c1","steps":[{"name":"s01","cluster":"lab","vmid":1201,"state":"done","error":null,"attempts":1,"started_at":5,"finished_at":6,"role":"student","node":"pve1","detail":"","result":null}],"error":"boom","created_at":4,"finished_at":7,"cluster":"lab","params":null,"updated_at":7}"#;
        let rec: JobRecord = serde_json::from_str(job).unwrap();
        assert_eq!(rec.state, JobState::Failed);
        assert_eq!(rec.steps[0].state, JobState::Done);
        assert_eq!(serde_json::to_string(&rec).unwrap(), job);
        for (role, text) in [
            (AssignmentRole::Teacher, "\"teacher\""),
            (AssignmentRole::Base, "\"base\""),
            (AssignmentRole::Student, "\"student\""),
            (AssignmentRole::Direct, "\"direct\""),
        ] {
            assert_eq!(serde_json::to_string(&role).unwrap(), text);
            assert_eq!(serde_json::from_str::<AssignmentRole>(text).unwrap(), role);
        }
    }

    #[test]
    fn newer_schema_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.inventory.insert(&vm_key("a", 1), &guest("a", 1)).unwrap();
            schema::write_version(s.meta(), schema::CURRENT + 5).unwrap();
            s.flush().unwrap();
        }
        let err = Store::open(dir.path()).expect_err("must refuse");
        assert!(
            matches!(err, StoreError::TooNew { found, .. } if found == schema::CURRENT + 5),
            "{err}"
        );
        assert!(err.to_string().contains("newer than this Proxlab knows"));
        // Nothing was overwritten: the version and the record are still there.
        let db = sled::open(dir.path()).unwrap();
        let meta = db.open_tree("meta").unwrap();
        assert_eq!(schema::read_version(&meta).unwrap(), schema::CURRENT + 5);
        assert_eq!(db.open_tree("inventory").unwrap().len(), 1);
    }

    #[test]
    fn corrupt_database_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.inventory.insert(&vm_key("a", 1), &guest("a", 1)).unwrap();
            s.flush().unwrap();
        }
        // Scribble over the sled config/snapshot files.
        let conf = dir.path().join("conf");
        std::fs::write(&conf, b"this is not a sled config file at all").unwrap();
        let before = std::fs::read(&conf).unwrap();
        let err = Store::open(dir.path()).expect_err("must refuse");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()));
        assert_eq!(
            std::fs::read(&conf).unwrap(),
            before,
            "the corrupt file must be left as it was"
        );
    }

    #[test]
    fn concurrent_flushes_are_shared_and_cover_every_write() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let threads: Vec<_> = (0..32u32)
                .map(|i| {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        s.inventory.insert(&vm_key("a", i), &guest("a", i)).unwrap();
                        s.flush_covering().unwrap();
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let begun = s.flushes_begun.load(std::sync::atomic::Ordering::SeqCst);
            assert!((1..=32).contains(&begun), "{begun} flushes for 32 callers");
            // A later caller with nothing new still gets a flush that began after it arrived.
            s.flush_covering().unwrap();
            assert_eq!(
                s.flushes_begun.load(std::sync::atomic::Ordering::SeqCst),
                begun + 1
            );
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.inventory.len(),
            32,
            "every write before its flush_covering is on disk"
        );
    }

    #[test]
    fn a_database_in_use_is_named_as_locked_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        first.inventory.insert(&vm_key("a", 1), &guest("a", 1)).unwrap();
        first.flush().unwrap();
        let err = Store::open(dir.path()).expect_err("the lock is held");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another proxlab"), "{err}");
        assert!(!err.to_string().contains("corrupt"), "{err}");
        drop(first);
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.inventory.len(), 1, "nothing was lost");
    }

    #[test]
    fn undecodable_record_names_tree_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.db()
            .open_tree("users")
            .unwrap()
            .insert("bob", &b"{not json"[..])
            .unwrap();
        let err = s.users.get("bob").expect_err("decode error");
        assert!(
            err.to_string().contains("users") && err.to_string().contains("bob"),
            "{err}"
        );
    }

    #[test]
    fn audit_is_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for i in 0..5u64 {
            s.audit(AuditRecord {
                at_micros: 1_000 + i,
                action: format!("a{i}"),
                ..Default::default()
            })
            .unwrap();
        }
        let recent = s.audit_recent(3).unwrap();
        let names: Vec<_> = recent.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(names, ["a4", "a3", "a2"]);
    }

    #[test]
    fn hours_records_survive_a_reopen_and_a_class_without_one_has_none() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let hours = ClassHoursRecord {
                timetable: serde_json::json!({"zone": "Europe/London"}),
                quota_hours: Some(10),
                extra_minutes: [("bob".to_string(), 30)].into_iter().collect(),
            };
            s.class_hours.insert("net101", &hours).unwrap();
            let mark = HoursMarkRecord {
                at: 1_800_000_000,
                action: Some("warm_up".into()),
            };
            s.hours_marks.insert("net101", &mark).unwrap();
            let usage = UsageRecord {
                used_secs: 3600,
                running_since: Some(1_800_000_100),
                last_start: Some(1_800_000_100),
            };
            s.usage.insert(&usage_key("net101", "bob"), &usage).unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), schema::CURRENT);
        let hours = s.class_hours.get("net101").unwrap().unwrap();
        assert_eq!(hours.quota_hours, Some(10));
        assert_eq!(hours.extra_minutes.get("bob"), Some(&30));
        assert_eq!(hours.timetable["zone"], "Europe/London");
        let mark = s.hours_marks.get("net101").unwrap().unwrap();
        assert_eq!(mark.action.as_deref(), Some("warm_up"));
        let usage = s.usage.get(&usage_key("net101", "bob")).unwrap().unwrap();
        assert_eq!(usage.used_secs, 3600);
        assert!(s.class_hours.get("other").unwrap().is_none());
        assert_eq!(s.usage.scan_prefix("net101/").count(), 1);
    }

    #[test]
    fn vm_key_round_trips_and_sorts_numerically() {
        assert_eq!(parse_vm_key(&vm_key("lab-1", 42)), Some(("lab-1".into(), 42)));
        assert!(vm_key("c", 99) < vm_key("c", 100));
    }
}
