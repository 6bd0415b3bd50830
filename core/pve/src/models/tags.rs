//! [`Tags`]: a guest's PVE tags as a case-insensitive set (';'-separated in PVE, so comma input causes no
//! endless diffs).

use std::collections::BTreeSet;
use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A guest's tags (config key `tags`, also in `/cluster/resources`), as a set.
///
/// PVE stores tags `;`-separated (`course-a;group-3;student-x`). [`Tags::parse`] also splits user input
/// on `,` and whitespace. Equality is set equality ignoring ASCII case, so a sync that compares the
/// wanted and the current tags writes nothing when only order or case differ. Each tag keeps the
/// spelling it was first inserted with. Serializes as a JSON list of strings and deserializes from
/// either PVE's string form or such a list (null / missing → empty).
#[derive(Clone, Default)]
pub struct Tags(BTreeSet<String>);

impl Tags {
    /// An empty tag set.
    pub fn new() -> Self {
        Tags(BTreeSet::new())
    }

    /// Parses PVE's `;`-separated form, also accepting `,` and whitespace as separators (user input).
    /// Empty pieces are dropped; duplicates (ignoring case) are kept once.
    pub fn parse(s: &str) -> Self {
        let mut tags = Tags::new();
        for piece in s.split(|c: char| c == ';' || c == ',' || c.is_whitespace()) {
            tags.insert(piece);
        }
        tags
    }

    /// Adds a tag (trimmed); returns false if it was empty or already present ignoring case.
    pub fn insert(&mut self, tag: &str) -> bool {
        let tag = tag.trim();
        if tag.is_empty() || self.contains(tag) {
            return false;
        }
        self.0.insert(tag.to_owned())
    }

    /// True if the set holds `tag`, ignoring ASCII case.
    pub fn contains(&self, tag: &str) -> bool {
        self.0.iter().any(|t| t.eq_ignore_ascii_case(tag.trim()))
    }

    /// The form PVE stores and accepts on writes: tags joined with `;`, sorted.
    pub fn to_pve_string(&self) -> String {
        self.0.iter().map(String::as_str).collect::<Vec<_>>().join(";")
    }

    /// The tags, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Number of tags.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if there are no tags.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn folded(&self) -> BTreeSet<String> {
        self.0.iter().map(|t| t.to_ascii_lowercase()).collect()
    }
}

impl PartialEq for Tags {
    fn eq(&self, other: &Self) -> bool {
        self.folded() == other.folded()
    }
}

impl Eq for Tags {}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

impl fmt::Display for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_pve_string())
    }
}

impl<S: AsRef<str>> FromIterator<S> for Tags {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut tags = Tags::new();
        for t in iter {
            tags.insert(t.as_ref());
        }
        tags
    }
}

impl Serialize for Tags {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Null => Ok(Tags::new()),
            Value::String(s) => Ok(Tags::parse(&s)),
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(D::Error::custom(format!("tag must be a string, got {other}"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.iter().collect()),
            other => Err(D::Error::custom(format!(
                "tags must be a string or a list, got {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semicolon_list_parses_to_a_set() {
        let t = Tags::parse("course-a;group-3;student-x");
        assert_eq!(t.iter().collect::<Vec<_>>(), ["course-a", "group-3", "student-x"]);
    }

    #[test]
    fn comma_and_space_input_give_the_same_set_and_no_write() {
        let current = Tags::parse("course-a;group-3;student-x");
        let wanted: Tags = ["group-3", "course-a", "student-x"].into_iter().collect();
        assert_eq!(current, wanted);
        assert_eq!(Tags::parse("group-3, course-a student-x"), current);
        assert_eq!(
            Tags::parse("Course-A;GROUP-3;student-x"),
            current,
            "case-insensitive"
        );
        assert_ne!(Tags::parse("course-a;group-3"), current);
    }

    #[test]
    fn writes_join_with_semicolons() {
        let t = Tags::parse("b, a ,c");
        assert_eq!(t.to_pve_string(), "a;b;c");
        assert_eq!(Tags::parse(";;").to_pve_string(), "");
    }

    #[test]
    fn sixty_tags_round_trip_without_truncation() {
        let many: Vec<String> = (0..60).map(|i| format!("tag-{i:02}")).collect();
        let t: Tags = many.iter().collect();
        assert_eq!(t.len(), 60);
        let back = Tags::parse(&t.to_pve_string());
        assert_eq!(back, t);
        assert_eq!(back.len(), 60);
        assert_eq!(back.to_pve_string(), many.join(";"));
    }

    #[test]
    fn duplicate_tags_differing_in_case_are_kept_once() {
        let t = Tags::parse("Lab;lab;LAB");
        assert_eq!(t.len(), 1);
        assert!(t.contains("lAb"));
    }

    #[test]
    fn serde_reads_string_list_or_null_and_writes_a_list() {
        let t: Tags = serde_json::from_str("\"a;b\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"["a","b"]"#);
        let back: Tags = serde_json::from_str(r#"["b","a"]"#).unwrap();
        assert_eq!(back, t);
        let none: Tags = serde_json::from_str("null").unwrap();
        assert!(none.is_empty());
    }
}
