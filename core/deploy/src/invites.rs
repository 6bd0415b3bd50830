//! Invite links and joining: tokens of 256 random bits (only their SHA-256 is stored), expiry (7 days
//! by default) or never, revocable; joining gives the first free student VM in one sled transaction over
//! the assignments, so concurrent joins never share a VM; a full class puts the user on its waiting list.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use store::{AssignmentRecord, StoreError, WaitingEntry, vm_key};

use crate::Deployer;
use crate::error::{DeployError, Result};
use crate::trees::{ClassVm, InviteRecord, VmRole};

/// An invite token as given to the teacher once (`/join/{token}`). `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteToken(String);

impl InviteToken {
    /// The token text (43 URL-safe base64 characters) — put it in the URL, never in a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for InviteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InviteToken(***)")
    }
}

/// A freshly made invite: the token (shown once) and its record. `Debug` hides the token and path.
#[derive(Clone)]
pub struct Invite {
    /// The secret token.
    pub token: InviteToken,
    /// Path to give out: `/join/<token>` (the web layer prefixes the public URL).
    pub path: String,
    /// The stored record (id, class, expiry).
    pub record: InviteRecord,
}

impl fmt::Debug for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invite")
            .field("token", &self.token)
            .field("path", &"/join/***")
            .field("record", &self.record)
            .finish()
    }
}

/// Longest lifetime of an invite link, and of any expiry Proxlab sets from a request or a config: one
/// year (365 days).
pub const MAX_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);

/// `now + ttl` in Unix seconds (at least one second later), if `ttl` is at most [`MAX_EXPIRY`].
/// Checked arithmetic: no overflow, whatever the inputs. `what` names the value in the error
/// (`expires_in_secs`). Errors: [`DeployError::Invalid`] (HTTP 400).
pub fn expiry_after(now: u64, ttl: Duration, what: &str) -> Result<u64> {
    let secs = ttl.as_secs().max(1);
    if ttl > MAX_EXPIRY {
        return Err(DeployError::Invalid(format!(
            "{what} {secs} is more than one year ({} s)",
            MAX_EXPIRY.as_secs()
        )));
    }
    now.checked_add(secs)
        .ok_or_else(|| DeployError::Invalid(format!("{what} {secs} overflows the clock")))
}

/// How long an invite lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InviteTtl {
    /// The configured default (7 days).
    #[default]
    Default,
    /// Until revoked.
    Never,
    /// This long.
    For(Duration),
}

/// A self-registration slot of an invite link, taken before the account is made
/// ([`Deployer::claim_registration`]); give it back with [`Deployer::release_registration`] when the
/// account could not be made.
#[derive(Debug)]
pub struct RegistrationClaim {
    hash: String,
}

/// What joining did.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JoinOutcome {
    /// The user got this VM now.
    Assigned {
        /// The VM.
        vm: ClassVm,
        /// Its assignment to the user.
        assignment: AssignmentRecord,
    },
    /// The user already had this VM of the class (joining twice is harmless).
    AlreadyMember {
        /// The VM.
        vm: ClassVm,
        /// Its assignment to the user.
        assignment: AssignmentRecord,
    },
}

/// SHA-256 hex of a token: the key of its record.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Deployer {
    /// Makes an invite link for class `id`. The token is returned once; only its SHA-256 is stored.
    /// Errors: [`DeployError::NotFound`]; [`DeployError::Invalid`] for a lifetime above [`MAX_EXPIRY`]
    /// (nothing is stored).
    ///
    /// `max_registrations`: most accounts students may create with the link (default: the class's
    /// free seats now, or its pool size while it deploys), at most [`crate::MAX_POOL`].
    pub fn create_invite(
        &self,
        id: &str,
        actor: &str,
        ttl: InviteTtl,
        max_registrations: Option<u64>,
    ) -> Result<Invite> {
        let class = self.class(id)?;
        let cap = match max_registrations {
            Some(n) if n > u64::from(crate::MAX_POOL) => {
                return Err(DeployError::Invalid(format!(
                    "max_registrations {n} is more than {}",
                    crate::MAX_POOL
                )));
            }
            Some(n) => n,
            None => self.free_seats(&class)?,
        };
        let now = self.now();
        let expires_at = match ttl {
            InviteTtl::Default => Some(expiry_after(now, self.inner.cfg.limits.invite_ttl, "invite_ttl")?),
            InviteTtl::Never => None,
            InviteTtl::For(d) => Some(expiry_after(now, d, "expires_in_secs")?),
        };
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let record = InviteRecord {
            id: format!("inv-{}", &token_hash(&token)[..12]),
            class_id: id.to_string(),
            created_by: actor.to_string(),
            created_at: now,
            expires_at,
            revoked: false,
            uses: 0,
            max_registrations: Some(cap),
            registrations: 0,
            recent_registrations: Vec::new(),
        };
        let hash = token_hash(&token);
        self.inner.invites.insert(&hash, &record)?;
        self.update_class(id, |c| {
            c.invite_hash = Some(hash.clone());
            c.invite_expires_at = expires_at;
        })?;
        tracing::info!(class = id, invite = %record.id, expires_at, "invite created");
        Ok(Invite {
            path: format!("/join/{token}"),
            token: InviteToken(token),
            record,
        })
    }

    /// The invites of a class (records only; tokens are not kept).
    pub fn invites(&self, id: &str) -> Result<Vec<InviteRecord>> {
        Ok(self
            .inner
            .invites
            .values()?
            .into_iter()
            .filter(|i| i.class_id == id)
            .collect())
    }

    /// Revokes invite `invite_id` of class `id` (the link stops working at once).
    /// Errors: [`DeployError::NotFound`].
    pub fn revoke_invite(&self, id: &str, invite_id: &str) -> Result<InviteRecord> {
        for (k, inv) in self.inner.invites.scan_prefix("")? {
            if inv.class_id == id && inv.id == invite_id {
                let out = self.inner.invites.update(&k, |r| {
                    Ok(r.map(|mut r| {
                        r.revoked = true;
                        r
                    }))
                })?;
                self.update_class(id, |c| {
                    if c.invite_hash.as_deref() == Some(k.as_str()) {
                        c.invite_hash = None;
                        c.invite_expires_at = None;
                    }
                })?;
                return out.ok_or_else(|| DeployError::not_found(format!("invite {invite_id}")));
            }
        }
        Err(DeployError::not_found(format!(
            "invite {invite_id} of class {id}"
        )))
    }

    /// Seats of a class nobody has: its pool size minus the student VMs assigned.
    fn free_seats(&self, class: &store::ClassRecord) -> Result<u64> {
        let taken = self
            .inner
            .store
            .assignments
            .values()?
            .into_iter()
            .filter(|a| a.class_id.as_deref() == Some(class.id.as_str()) && !a.user.is_empty())
            .filter(|a| a.role == store::AssignmentRole::Student)
            .count() as u64;
        Ok(u64::from(class.pool_size).saturating_sub(taken))
    }

    /// Takes one self-registration slot of invite `token` for a new account, atomically (one
    /// compare-and-swap on the invite record, so concurrent registrations never pass the cap): at most
    /// the invite's cap in all, and at most `limits.registrations_per_minute` in any minute.
    /// Errors: [`DeployError::InviteInvalid`]; [`DeployError::Forbidden`] when the class does not allow
    /// self-registration; [`DeployError::LimitReached`] (409) when the cap is used up;
    /// [`DeployError::RateLimited`] (429) past the per-minute limit.
    pub fn claim_registration(&self, token: &str) -> Result<RegistrationClaim> {
        let (hash, inv) = self.valid_invite(token)?;
        let class = self
            .class(&inv.class_id)
            .map_err(|_| DeployError::InviteInvalid)?;
        if !class.self_registration {
            return Err(DeployError::Forbidden(
                "this invite link does not allow creating an account; ask your teacher for an account".into(),
            ));
        }
        let legacy_cap = match inv.max_registrations {
            Some(_) => 0,
            None => self.free_seats(&class)?,
        };
        let now = self.now();
        let per_minute = u64::from(self.inner.cfg.limits.registrations_per_minute.max(1));
        let mut refusal: Option<DeployError> = None;
        self.inner.invites.update(&hash, |r| {
            refusal = None;
            let Some(mut r) = r else {
                refusal = Some(DeployError::InviteInvalid);
                return Ok(None);
            };
            let cap = r.max_registrations.unwrap_or(legacy_cap);
            r.recent_registrations.retain(|t| now.saturating_sub(*t) < 60);
            if r.registrations >= cap {
                refusal = Some(DeployError::LimitReached(format!(
                    "this invite link allows {cap} new accounts and all were made; ask your teacher for a new link"
                )));
            } else if r.recent_registrations.len() as u64 >= per_minute {
                refusal = Some(DeployError::RateLimited(format!(
                    "this invite link already made {per_minute} accounts in the last minute; wait a minute and try again"
                )));
            } else {
                r.registrations += 1;
                r.recent_registrations.push(now);
            }
            Ok(Some(r))
        })?;
        match refusal {
            Some(e) => {
                tracing::warn!(class = %inv.class_id, invite = %inv.id, error = %e, "self-registration refused");
                Err(e)
            }
            None => Ok(RegistrationClaim { hash }),
        }
    }

    /// Gives back a slot taken by [`Deployer::claim_registration`] whose account was not made (the
    /// per-minute count keeps the attempt).
    pub fn release_registration(&self, claim: RegistrationClaim) -> Result<()> {
        self.inner.invites.update(&claim.hash, |r| {
            Ok(r.map(|mut r| {
                r.registrations = r.registrations.saturating_sub(1);
                r
            }))
        })?;
        Ok(())
    }

    /// The class an invite token opens, if the token is valid now (for the join page).
    /// Errors: [`DeployError::InviteInvalid`] for unknown, revoked and expired tokens alike.
    pub fn invite_class(&self, token: &str) -> Result<store::ClassRecord> {
        let (_, inv) = self.valid_invite(token)?;
        self.class(&inv.class_id).map_err(|_| DeployError::InviteInvalid)
    }

    /// The record of a valid invite token: its public id (`inv-…`) is what logs name, never the token.
    /// Errors: [`DeployError::InviteInvalid`] for unknown, revoked and expired tokens alike.
    pub fn invite_record(&self, token: &str) -> Result<InviteRecord> {
        self.valid_invite(token).map(|(_, inv)| inv)
    }

    fn valid_invite(&self, token: &str) -> Result<(String, InviteRecord)> {
        if token.is_empty() || token.len() > 128 {
            return Err(DeployError::InviteInvalid);
        }
        let hash = token_hash(token);
        let inv = self.inner.invites.get(&hash)?.ok_or(DeployError::InviteInvalid)?;
        if inv.revoked || inv.expires_at.is_some_and(|e| self.now() >= e) {
            return Err(DeployError::InviteInvalid);
        }
        Ok((hash, inv))
    }

    /// Joins `user` to the class of invite `token`: assigns the first free student VM (see
    /// [`Deployer::assign`]). Errors: [`DeployError::InviteInvalid`], [`DeployError::ClassFull`] (the user
    /// is then on the waiting list), [`DeployError::NotFound`] for an unknown user.
    pub fn join(&self, token: &str, user: &str) -> Result<JoinOutcome> {
        let (hash, inv) = self.valid_invite(token)?;
        let out = self.assign(&inv.class_id, user)?;
        if matches!(out, JoinOutcome::Assigned { .. }) {
            self.inner.invites.update(&hash, |r| {
                Ok(r.map(|mut r| {
                    r.uses += 1;
                    r
                }))
            })?;
        }
        Ok(out)
    }

    /// Gives `user` the first free student VM of class `id` (lowest slot) that is not being reset
    /// ([`ClassVm::reset_job`]), atomically: one sled transaction reads the class's student assignments
    /// and VM records and writes the chosen assignment, so concurrent
    /// callers never get the same VM and a user never gets two. A user who already has a VM of the class
    /// gets [`JoinOutcome::AlreadyMember`]. When no VM is free, the user is put on the class's waiting
    /// list and [`DeployError::ClassFull`] is returned.
    pub fn assign(&self, id: &str, user: &str) -> Result<JoinOutcome> {
        if self.inner.store.users.get(user)?.is_none() {
            return Err(DeployError::not_found(format!("user {user}")));
        }
        let class = self.class(id)?;
        if class.state == "deleting" {
            return Err(DeployError::Conflict(format!("class {id} is being deleted")));
        }
        let mut students: Vec<ClassVm> = self
            .class_vms(id)?
            .into_iter()
            .filter(|v| v.role == VmRole::Student && !v.assignment_id.is_empty())
            .collect();
        students.sort_by_key(|v| (v.slot, v.vmid));
        let ids: Vec<(String, String)> = students
            .iter()
            .map(|v| (v.assignment_id.clone(), vm_key(&v.cluster, v.vmid)))
            .collect();
        let now = self.now();
        // One transaction over the assignments and the class VMs: a VM that an unassign marks for a
        // reset at the same moment is never handed out (the mark and the cleared user commit together).
        let trees = (self.inner.store.assignments.raw(), &self.inner.vms.tree);
        let result: std::result::Result<Option<(usize, AssignmentRecord, bool)>, TransactionError<String>> =
            trees.transaction(|(tx, vtx)| {
                let mut free: Option<(usize, AssignmentRecord)> = None;
                for (i, (aid, vkey)) in ids.iter().enumerate() {
                    let Some(bytes) = tx.get(aid.as_bytes())? else {
                        continue;
                    };
                    let a: AssignmentRecord = serde_json::from_slice(&bytes)
                        .map_err(|e| ConflictableTransactionError::Abort(format!("assignment {aid}: {e}")))?;
                    if a.user == user {
                        return Ok(Some((i, a, false)));
                    }
                    if !a.user.is_empty() || free.is_some() {
                        continue;
                    }
                    let resetting = match vtx.get(vkey.as_bytes())? {
                        Some(vb) => serde_json::from_slice::<ClassVm>(&vb)
                            .map_err(|e| {
                                ConflictableTransactionError::Abort(format!("class VM {vkey}: {e}"))
                            })?
                            .reset_job
                            .is_some(),
                        None => true,
                    };
                    if !resetting {
                        free = Some((i, a));
                    }
                }
                let Some((i, mut a)) = free else { return Ok(None) };
                a.user = user.to_string();
                a.created_at = now;
                let bytes =
                    serde_json::to_vec(&a).map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                tx.insert(a.id.as_bytes(), bytes)?;
                Ok(Some((i, a, true)))
            });
        let found = match result {
            Ok(f) => f,
            Err(TransactionError::Abort(m)) => return Err(DeployError::Store(StoreError::Rejected(m))),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        match found {
            Some((i, assignment, true)) => {
                self.update_class(id, |c| c.waiting.retain(|w| w.user != user))?;
                tracing::info!(class = id, user, vmid = students[i].vmid, "student joined");
                Ok(JoinOutcome::Assigned {
                    vm: students[i].clone(),
                    assignment,
                })
            }
            Some((i, assignment, false)) => Ok(JoinOutcome::AlreadyMember {
                vm: students[i].clone(),
                assignment,
            }),
            None => {
                let c = self.update_class(id, |c| {
                    if !c.waiting.iter().any(|w| w.user == user) {
                        c.waiting.push(WaitingEntry {
                            user: user.to_string(),
                            since: now,
                        });
                    }
                })?;
                let position = c
                    .waiting
                    .iter()
                    .position(|w| w.user == user)
                    .map(|p| p + 1)
                    .unwrap_or(c.waiting.len());
                Err(DeployError::ClassFull {
                    class: id.to_string(),
                    size: students.len(),
                    user: user.to_string(),
                    position,
                })
            }
        }
    }

    /// The waiting list of a class, oldest first.
    pub fn waiting_list(&self, id: &str) -> Result<Vec<WaitingEntry>> {
        Ok(self.class(id)?.waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_hides_the_secret() {
        let t = InviteToken("abc".into());
        assert_eq!(format!("{t:?}"), "InviteToken(***)");
    }

    #[test]
    fn token_hash_is_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
