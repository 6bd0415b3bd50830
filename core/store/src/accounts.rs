//! Accounts, sessions, API tokens and VM assignments: the operations on the `users`, `sessions`,
//! `api_tokens` and `assignments` trees that keep their invariants, plus [`vm_name_from`] (names that pass
//! PVE's DNS-name check).
//!
//! Invariants kept here:
//! - a local user name never contains `@` (so it cannot pose as a Proxmox-realm user `name@realm`);
//! - changing a password or disabling a user bumps its `session_generation` and deletes its sessions, so
//!   every browser session of the old password is dead at once;
//! - sessions and tokens are keyed by the SHA-256 hex of their secret, computed by the caller: this crate
//!   never sees a raw session id or token secret.
//!
//! Time stamps are Unix seconds passed in by the caller (so tests control time).

use crate::{ApiTokenRecord, AssignmentRecord, Result, Role, SessionRecord, Store, StoreError, UserRecord};

/// Longest accepted user name (local or realm), bytes.
pub const MAX_USER_NAME: usize = 128;

/// Checks a local user name: 1–64 characters of ASCII letters, digits, `.`, `_`, `-`, starting with a
/// letter or digit, and never `@` (reserved for realm users `user@pam`, `user@pve`, `user@<ldap realm>`).
///
/// Errors: a sentence naming what is wrong, for the CLI or the admin page.
pub fn validate_local_name(name: &str) -> std::result::Result<(), String> {
    if name.contains('@') {
        return Err(format!(
            "local user names may not contain '@' ({name:?}); '@' marks Proxmox realm users such as alice@pve"
        ));
    }
    if name.is_empty() || name.len() > 64 {
        return Err("a user name has 1 to 64 characters".into());
    }
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "user name {name:?} may use only letters, digits, '.', '_' and '-', and must start with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks free text people give a name or a description (display names, class names, descriptions):
/// trims it and accepts 1 (or 0 when `allow_empty`) to `max_chars` characters, any script, quotes and
/// symbols, but no control characters (NUL, ESC, line breaks, ...), which would corrupt logs, terminals
/// and files such as `.rdp` titles. Returns the trimmed text.
///
/// Errors: a sentence naming `what` and the rule broken.
pub fn validate_text(
    what: &str,
    text: &str,
    max_chars: usize,
    allow_empty: bool,
) -> std::result::Result<String, String> {
    let t = text.trim();
    if t.is_empty() && !allow_empty {
        return Err(format!("{what} must not be empty"));
    }
    if t.chars().count() > max_chars {
        return Err(format!("{what} has at most {max_chars} characters"));
    }
    if let Some(c) = t.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{what} may not contain control characters (found U+{:04X})",
            c as u32
        ));
    }
    Ok(t.to_string())
}

/// Splits a realm user name `user@realm` into `(user, realm)`; `None` for local names. The realm keeps
/// its case (`alice@LDAP-School` stays as it is).
pub fn split_realm(name: &str) -> Option<(&str, &str)> {
    let (user, realm) = name.rsplit_once('@')?;
    if user.is_empty() || realm.is_empty() {
        return None;
    }
    Some((user, realm))
}

impl Store {
    /// A throw-away database in a temporary file that sled deletes when the last handle drops (for
    /// servers built without a data dir, such as benchmarks, and for tests).
    pub fn open_temporary() -> Result<Store> {
        let path = std::env::temp_dir().join(format!("proxlab-temporary-{}", std::process::id()));
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        let store = Store::from_db(db, path)?;
        crate::schema::migrate(&store)?;
        Ok(store)
    }

    /// The user `name` (exact key: local names are stored lower-case, realm names as PVE spells them).
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.users.get(name)
    }

    /// Every user, ordered by name.
    pub fn users_all(&self) -> Result<Vec<UserRecord>> {
        self.users.values()
    }

    /// True when at least one enabled local account has the admin role (used by `serve` before it
    /// accepts a non-loopback listen address).
    pub fn admin_exists(&self) -> Result<bool> {
        for item in self.users.iter() {
            let (_, u) = item?;
            if u.role == Role::Admin && !u.disabled && u.realm == "local" {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Creates a local user. `user.name` must pass [`validate_local_name`] (lower-cased first); `realm`
    /// is set to `local`.
    ///
    /// Errors: [`StoreError::Rejected`] for a bad name, [`StoreError::Conflict`] if the name is taken.
    pub fn create_local_user(&self, mut user: UserRecord) -> Result<UserRecord> {
        user.name = user.name.to_ascii_lowercase();
        validate_local_name(&user.name).map_err(StoreError::Rejected)?;
        user.realm = "local".into();
        self.users.insert_new(&user.name, &user)?;
        Ok(user)
    }

    /// Creates or refreshes a Proxmox-realm user after PVE accepted its password: a new record gets
    /// `role`; an existing one keeps its role unless `role` is [`Role::Admin`] (granted by config) or the
    /// stored role was admin and `role` is not (the config no longer lists it: it drops to `fallback`).
    /// `groups` are the PVE groups seen at this login.
    ///
    /// Errors: [`StoreError::Rejected`] if `name` is not `user@realm`.
    pub fn upsert_realm_user(
        &self,
        name: &str,
        role: Role,
        fallback: Role,
        groups: Vec<String>,
        now: u64,
    ) -> Result<UserRecord> {
        if split_realm(name).is_none() || name.len() > MAX_USER_NAME {
            return Err(StoreError::Rejected(format!(
                "{name:?} is not a realm user name (user@realm)"
            )));
        }
        let out = self.users.update(name, |old| {
            let mut u = old.unwrap_or_else(|| UserRecord {
                name: name.to_string(),
                display_name: name.to_string(),
                role,
                realm: "pve".into(),
                created_at: now,
                ..UserRecord::default()
            });
            if role == Role::Admin {
                u.role = Role::Admin;
            } else if u.role == Role::Admin {
                u.role = fallback;
            }
            u.realm_groups = groups.clone();
            Ok(Some(u))
        })?;
        out.ok_or_else(|| StoreError::NotFound {
            what: format!("user {name}"),
        })
    }

    /// Read-modify-write of one user; [`StoreError::NotFound`] if it does not exist.
    pub fn update_user(&self, name: &str, mut f: impl FnMut(&mut UserRecord)) -> Result<UserRecord> {
        let out = self.users.update(name, |old| match old {
            Some(mut u) => {
                f(&mut u);
                Ok(Some(u))
            }
            None => Err(StoreError::NotFound {
                what: format!("user {name}"),
            }),
        })?;
        out.ok_or_else(|| StoreError::NotFound {
            what: format!("user {name}"),
        })
    }

    /// Sets a new password hash (PHC string), bumps the session generation and deletes every session of
    /// the user. `revoke_sessions = false` keeps sessions (used for a transparent re-hash at login).
    pub fn set_password_hash(&self, name: &str, hash: String, revoke_sessions: bool) -> Result<UserRecord> {
        let u = self.update_user(name, |u| {
            u.password_hash = Some(hash.clone());
            if revoke_sessions {
                u.session_generation += 1;
            }
        })?;
        if revoke_sessions {
            self.remove_user_sessions(name)?;
        }
        Ok(u)
    }

    /// Disables (or re-enables) a user. Disabling bumps the session generation and deletes its sessions;
    /// its API tokens stop working because token checks read the user's `disabled` flag.
    pub fn set_user_disabled(&self, name: &str, disabled: bool) -> Result<UserRecord> {
        let u = self.update_user(name, |u| {
            if disabled && !u.disabled {
                u.session_generation += 1;
            }
            u.disabled = disabled;
        })?;
        if disabled {
            self.remove_user_sessions(name)?;
        }
        Ok(u)
    }

    /// Stores a session under `key` (SHA-256 hex of the session id).
    pub fn put_session(&self, key: &str, session: &SessionRecord) -> Result<()> {
        self.sessions.insert(key, session)
    }

    /// The session stored under `key`, if any.
    pub fn session(&self, key: &str) -> Result<Option<SessionRecord>> {
        self.sessions.get(key)
    }

    /// Deletes one session.
    pub fn remove_session(&self, key: &str) -> Result<()> {
        self.sessions.remove(key).map(|_| ())
    }

    /// Deletes every session of `user`; returns how many.
    pub fn remove_user_sessions(&self, user: &str) -> Result<usize> {
        let mut keys = Vec::new();
        for item in self.sessions.iter() {
            let (k, s) = item?;
            if s.user == user {
                keys.push(k);
            }
        }
        let changes: Vec<(String, Option<&SessionRecord>)> = keys.iter().map(|k| (k.clone(), None)).collect();
        self.sessions.apply(&changes)?;
        Ok(keys.len())
    }

    /// Deletes sessions idle since before `idle_before` or created before `created_before` (Unix s).
    /// Returns how many were deleted.
    pub fn purge_sessions(&self, idle_before: u64, created_before: u64) -> Result<usize> {
        let mut keys = Vec::new();
        for item in self.sessions.iter() {
            let (k, s) = item?;
            if s.last_seen_at < idle_before || s.created_at < created_before {
                keys.push(k);
            }
        }
        let changes: Vec<(String, Option<&SessionRecord>)> = keys.iter().map(|k| (k.clone(), None)).collect();
        self.sessions.apply(&changes)?;
        Ok(keys.len())
    }

    /// Stores a new API token under `key` (SHA-256 hex of the secret).
    ///
    /// Errors: [`StoreError::NotFound`] if the token's user does not exist.
    pub fn create_token(&self, key: &str, token: &ApiTokenRecord) -> Result<()> {
        if self.users.get(&token.user)?.is_none() {
            return Err(StoreError::NotFound {
                what: format!("user {}", token.user),
            });
        }
        self.api_tokens.insert_new(key, token)
    }

    /// The token stored under `key`, if any (revoked and expired ones included: the caller decides).
    pub fn token(&self, key: &str) -> Result<Option<ApiTokenRecord>> {
        self.api_tokens.get(key)
    }

    /// Every token (no secrets: only their hashes are stored), oldest first.
    pub fn tokens_all(&self) -> Result<Vec<ApiTokenRecord>> {
        let mut all = self.api_tokens.values()?;
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    /// Marks the token with public id `id` (`tok_…`) revoked. Errors: [`StoreError::NotFound`].
    pub fn revoke_token(&self, id: &str) -> Result<ApiTokenRecord> {
        for item in self.api_tokens.iter() {
            let (k, t) = item?;
            if t.id == id {
                let out = self.api_tokens.update(&k, |old| {
                    Ok(old.map(|mut t| {
                        t.revoked = true;
                        t
                    }))
                })?;
                return out.ok_or_else(|| StoreError::NotFound {
                    what: format!("token {id}"),
                });
            }
        }
        Err(StoreError::NotFound {
            what: format!("token {id}"),
        })
    }

    /// Stores a new assignment, giving it a fresh id (`a<number>`) and returning it.
    ///
    /// Errors: [`StoreError::Conflict`] if the same user already has the same VM (`cluster`, `vmid`);
    /// [`StoreError::NotFound`] if a non-empty `user` does not exist.
    pub fn create_assignment(&self, mut rec: AssignmentRecord) -> Result<AssignmentRecord> {
        if !rec.user.is_empty() && self.users.get(&rec.user)?.is_none() {
            return Err(StoreError::NotFound {
                what: format!("user {}", rec.user),
            });
        }
        for item in self.assignments.iter() {
            let (_, a) = item?;
            if a.cluster == rec.cluster
                && a.vmid == rec.vmid
                && a.user == rec.user
                && a.class_id == rec.class_id
            {
                return Err(StoreError::Conflict {
                    what: format!("assignment of VM {}/{} to {:?}", rec.cluster, rec.vmid, rec.user),
                });
            }
        }
        rec.id = format!("a{}", self.next_id()?);
        self.assignments.insert_new(&rec.id, &rec)?;
        Ok(rec)
    }

    /// Every assignment, by id.
    pub fn assignments_all(&self) -> Result<Vec<AssignmentRecord>> {
        self.assignments.values()
    }

    /// Deletes an assignment; returns it. Errors: [`StoreError::NotFound`].
    pub fn remove_assignment(&self, id: &str) -> Result<AssignmentRecord> {
        self.assignments.remove(id)?.ok_or_else(|| StoreError::NotFound {
            what: format!("assignment {id}"),
        })
    }
}

/// Derives a Proxmox VE guest name from a display name (a user's name, a class name) that passes PVE's
/// DNS-name check.
///
/// PVE checks `name` with its `dns-name` format: every dot-separated label must match
/// `[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?`. The rule here: umlauts and other Latin letters are
/// transliterated to their base letter (`ö` → `o`, `ß` → `ss`), letters are lower-cased, `_`, spaces and
/// every other character become `-`, runs of `-` collapse to one, each label is trimmed of `-` and
/// truncated to 63 characters, empty labels are dropped, the whole name is kept under 254 characters; an
/// empty result becomes `vm-<vmid>`. A leading digit is allowed (PVE allows it). Put the original display
/// name into the VM's description, which takes any UTF-8.
pub fn vm_name_from(display: &str, vmid: u32) -> String {
    let mut labels: Vec<String> = Vec::new();
    for raw in display.split('.') {
        let mut label = String::new();
        for c in raw.chars() {
            let t = transliterate(c);
            for tc in t.chars() {
                if tc.is_ascii_alphanumeric() {
                    label.push(tc.to_ascii_lowercase());
                } else if !label.ends_with('-') {
                    label.push('-');
                }
            }
        }
        let trimmed: String = label.trim_matches('-').chars().take(63).collect();
        let trimmed = trimmed.trim_end_matches('-').to_string();
        if !trimmed.is_empty() {
            labels.push(trimmed);
        }
    }
    let mut name = String::new();
    for l in labels {
        if name.len() + l.len() + 1 > 253 {
            break;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&l);
    }
    if name.is_empty() {
        format!("vm-{vmid}")
    } else {
        name
    }
}

/// ASCII spelling of one character: itself for ASCII, the base letter for common Latin letters with
/// diacritics, `-` for anything else.
fn transliterate(c: char) -> String {
    if c.is_ascii() {
        return c.to_string();
    }
    let s = match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' | 'Ā' | 'Ă' | 'Ą' => "a",
        'æ' | 'Æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' | 'Ç' | 'Ć' | 'Ĉ' | 'Ċ' | 'Č' => "c",
        'ď' | 'đ' | 'Ď' | 'Đ' | 'ð' | 'Ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'È' | 'É' | 'Ê' | 'Ë' | 'Ē' | 'Ĕ' | 'Ė' | 'Ę' | 'Ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' | 'Ĝ' | 'Ğ' | 'Ġ' | 'Ģ' => "g",
        'ĥ' | 'ħ' | 'Ĥ' | 'Ħ' => "h",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'Ì' | 'Í' | 'Î' | 'Ï' | 'Ĩ' | 'Ī' | 'Ĭ' | 'Į' | 'İ' => "i",
        'ĵ' | 'Ĵ' => "j",
        'ķ' | 'Ķ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' | 'Ĺ' | 'Ļ' | 'Ľ' | 'Ŀ' | 'Ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' | 'Ñ' | 'Ń' | 'Ņ' | 'Ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'Ø' | 'Ō' | 'Ŏ' | 'Ő' => "o",
        'œ' | 'Œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' | 'Ŕ' | 'Ŗ' | 'Ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' | 'Ś' | 'Ŝ' | 'Ş' | 'Š' | 'ș' | 'Ș' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' | 'Ţ' | 'Ť' | 'Ŧ' | 'ț' | 'Ț' => "t",
        'þ' | 'Þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'Ù' | 'Ú' | 'Û' | 'Ü' | 'Ũ' | 'Ū' | 'Ŭ' | 'Ů' | 'Ű' | 'Ų' => "u",
        'ŵ' | 'Ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' | 'Ý' | 'Ÿ' | 'Ŷ' => "y",
        'ź' | 'ż' | 'ž' | 'Ź' | 'Ż' | 'Ž' => "z",
        _ => "-",
    };
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn free_text_is_trimmed_bounded_and_free_of_control_characters() {
        assert_eq!(
            validate_text("a class name", "  Netz 101 — «B» \"x\" '<y>' 陈 ", 100, false).unwrap(),
            "Netz 101 — «B» \"x\" '<y>' 陈"
        );
        assert_eq!(validate_text("a description", "  ", 500, true).unwrap(), "");
        assert!(
            validate_text("a class name", "  ", 100, false)
                .unwrap_err()
                .contains("a class name must not be empty")
        );
        assert!(
            validate_text("a display name", &"é".repeat(129), 128, false)
                .unwrap_err()
                .contains("at most 128")
        );
        assert!(validate_text("a display name", &"é".repeat(128), 128, false).is_ok());
        for bad in ["a\u{0}b", "a\u{1b}[31mb", "a\nb", "a\rb", "a\u{7f}b", "a\u{85}b"] {
            let e = validate_text("a display name", bad, 128, false).unwrap_err();
            assert!(e.contains("control characters"), "{bad:?}: {e}");
        }
    }

    /// Display name → PVE guest name, by the DNS-name rule.
    #[test]
    fn vm_names_from_user_names_pass_pve_dns_name_rules() {
        let long = "a".repeat(70);
        let cases: &[(&str, u32, &str)] = &[
            ("max_mustermann-lab1", 100, "max-mustermann-lab1"),
            ("Jörg Müller", 101, "jorg-muller"),
            ("2604-kdcs-002", 102, "2604-kdcs-002"),
            ("lab.course-a", 103, "lab.course-a"),
            ("-x-", 104, "x"),
            (&long, 105, &long[..63]),
            ("", 106, "vm-106"),
            ("___", 107, "vm-107"),
            ("Straße  ..  Œuvre", 108, "strasse.oeuvre"),
            ("日本語", 109, "vm-109"),
        ];
        let label = |l: &str| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        };
        for (input, vmid, want) in cases {
            let got = vm_name_from(input, *vmid);
            assert_eq!(&got, want, "input {input:?}");
            assert!(got.split('.').all(label), "{got:?} breaks the dns-name rule");
        }
    }

    #[test]
    fn local_names_with_at_are_refused_so_they_cannot_pose_as_realm_users() {
        let (_d, s) = store();
        let err = s
            .create_local_user(UserRecord {
                name: "root@pam".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("'@'"), "{err}");
        let u = s
            .create_local_user(UserRecord {
                name: "Alice".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.realm, "local");
        assert!(matches!(
            s.create_local_user(UserRecord {
                name: "alice".into(),
                ..Default::default()
            }),
            Err(StoreError::Conflict { .. })
        ));
    }

    #[test]
    fn password_change_and_disable_bump_generation_and_drop_sessions() {
        let (_d, s) = store();
        s.create_local_user(UserRecord {
            name: "bob".into(),
            ..Default::default()
        })
        .unwrap();
        let sess = SessionRecord {
            user: "bob".into(),
            ..Default::default()
        };
        s.put_session("k1", &sess).unwrap();
        s.put_session(
            "k2",
            &SessionRecord {
                user: "carol".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let u = s.set_password_hash("bob", "$argon2id$x".into(), true).unwrap();
        assert_eq!(u.session_generation, 1);
        assert!(s.session("k1").unwrap().is_none());
        assert!(s.session("k2").unwrap().is_some());
        s.put_session("k3", &sess).unwrap();
        let u = s.set_user_disabled("bob", true).unwrap();
        assert_eq!(u.session_generation, 2);
        assert!(u.disabled);
        assert!(s.session("k3").unwrap().is_none());
    }

    #[test]
    fn realm_user_admin_role_follows_the_config_not_the_password() {
        let (_d, s) = store();
        let u = s
            .upsert_realm_user("Alice@LDAP-School", Role::Student, Role::Student, vec![], 1)
            .unwrap();
        assert_eq!(u.role, Role::Student);
        assert_eq!(u.name, "Alice@LDAP-School", "realm names keep their case");
        let u = s
            .upsert_realm_user("Alice@LDAP-School", Role::Admin, Role::Student, vec![], 2)
            .unwrap();
        assert_eq!(u.role, Role::Admin);
        // Taken off the admin list: back to the fallback role at the next login.
        let u = s
            .upsert_realm_user("Alice@LDAP-School", Role::Student, Role::Student, vec![], 3)
            .unwrap();
        assert_eq!(u.role, Role::Student);
        assert!(
            s.upsert_realm_user("alice", Role::Student, Role::Student, vec![], 1)
                .is_err()
        );
    }

    #[test]
    fn tokens_are_listed_and_revoked_by_public_id() {
        let (_d, s) = store();
        s.create_local_user(UserRecord {
            name: "ops".into(),
            ..Default::default()
        })
        .unwrap();
        let t = ApiTokenRecord {
            id: "tok_1".into(),
            user: "ops".into(),
            ..Default::default()
        };
        s.create_token("hash1", &t).unwrap();
        assert!(
            s.create_token(
                "hash2",
                &ApiTokenRecord {
                    user: "ghost".into(),
                    ..Default::default()
                }
            )
            .is_err()
        );
        assert_eq!(s.tokens_all().unwrap().len(), 1);
        s.revoke_token("tok_1").unwrap();
        assert!(s.token("hash1").unwrap().unwrap().revoked);
        assert!(matches!(
            s.revoke_token("tok_9"),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn assignments_get_ids_and_duplicates_are_refused() {
        let (_d, s) = store();
        s.create_local_user(UserRecord {
            name: "stud".into(),
            ..Default::default()
        })
        .unwrap();
        let a = AssignmentRecord {
            cluster: "lab".into(),
            vmid: 4001,
            user: "stud".into(),
            ..Default::default()
        };
        let made = s.create_assignment(a.clone()).unwrap();
        assert!(made.id.starts_with('a'));
        assert!(matches!(s.create_assignment(a), Err(StoreError::Conflict { .. })));
        assert_eq!(s.assignments_all().unwrap().len(), 1);
        s.remove_assignment(&made.id).unwrap();
        assert!(s.assignments_all().unwrap().is_empty());
    }
}
