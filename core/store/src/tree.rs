//! A sled tree with typed values (JSON-encoded) and string keys.

use std::marker::PhantomData;

use serde::{Serialize, de::DeserializeOwned};

use crate::{Result, StoreError};

/// A typed view of one sled tree: string keys, values of type `V` stored as JSON.
#[derive(Clone)]
pub struct Tree<V> {
    name: &'static str,
    tree: sled::Tree,
    _v: PhantomData<fn() -> V>,
}

impl<V: Serialize + DeserializeOwned> Tree<V> {
    pub(crate) fn new(name: &'static str, tree: sled::Tree) -> Self {
        Tree {
            name,
            tree,
            _v: PhantomData,
        }
    }

    /// The tree's name in the database.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The raw sled tree, for multi-tree transactions ([`sled::Transactional`]).
    pub fn raw(&self) -> &sled::Tree {
        &self.tree
    }

    /// Encodes a value as stored in this tree.
    pub fn encode(&self, value: &V) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| StoreError::Encode {
            tree: self.name.into(),
            detail: e.to_string(),
        })
    }

    /// Decodes a stored value; the error names the tree and key.
    pub fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<V> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
            tree: self.name.into(),
            key: String::from_utf8_lossy(key).into_owned(),
            detail: e.to_string(),
        })
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<V>> {
        match self.tree.get(key.as_bytes())? {
            Some(bytes) => Ok(Some(self.decode(key.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores `value` at `key`, replacing what was there.
    pub fn insert(&self, key: &str, value: &V) -> Result<()> {
        let bytes = self.encode(value)?;
        self.tree.insert(key.as_bytes(), bytes)?;
        Ok(())
    }

    /// Stores `value` at `key` only if the key is free; [`StoreError::Conflict`] otherwise.
    pub fn insert_new(&self, key: &str, value: &V) -> Result<()> {
        let bytes = self.encode(value)?;
        match self
            .tree
            .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(bytes))?
        {
            Ok(()) => Ok(()),
            Err(_) => Err(StoreError::Conflict {
                what: format!("{} {key}", self.name),
            }),
        }
    }

    /// Removes `key`, returning the old value.
    pub fn remove(&self, key: &str) -> Result<Option<V>> {
        match self.tree.remove(key.as_bytes())? {
            Some(bytes) => Ok(Some(self.decode(key.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Read-modify-write of one key, atomic against concurrent writers of the same key (compare-and-swap
    /// loop). `f` gets the current value and returns the new one (`None` deletes). Returns the new value.
    pub fn update(&self, key: &str, mut f: impl FnMut(Option<V>) -> Result<Option<V>>) -> Result<Option<V>> {
        loop {
            let old = self.tree.get(key.as_bytes())?;
            let current = match &old {
                Some(b) => Some(self.decode(key.as_bytes(), b)?),
                None => None,
            };
            let new = f(current)?;
            let new_bytes = match &new {
                Some(v) => Some(self.encode(v)?),
                None => None,
            };
            if self
                .tree
                .compare_and_swap(key.as_bytes(), old, new_bytes)?
                .is_ok()
            {
                return Ok(new);
            }
        }
    }

    /// Writes several keys at once, atomically (one sled batch): `Some(v)` stores, `None` removes.
    pub fn apply(&self, changes: &[(String, Option<&V>)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (key, value) in changes {
            match value {
                Some(v) => batch.insert(key.as_bytes(), self.encode(v)?),
                None => batch.remove(key.as_bytes()),
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// True if the tree has no records.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// All records in key order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(String, V)>> + '_ {
        self.tree.iter().map(move |item| self.pair(item))
    }

    /// All records in reverse key order.
    pub fn iter_rev(&self) -> impl Iterator<Item = Result<(String, V)>> + '_ {
        self.tree.iter().rev().map(move |item| self.pair(item))
    }

    /// Records whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &str) -> impl Iterator<Item = Result<(String, V)>> + '_ {
        self.tree
            .scan_prefix(prefix.as_bytes())
            .map(move |item| self.pair(item))
    }

    /// All values, failing on the first undecodable record.
    pub fn values(&self) -> Result<Vec<V>> {
        self.iter().map(|r| r.map(|(_, v)| v)).collect()
    }

    fn pair(&self, item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<(String, V)> {
        let (k, v) = item?;
        let value = self.decode(&k, &v)?;
        Ok((String::from_utf8_lossy(&k).into_owned(), value))
    }
}
