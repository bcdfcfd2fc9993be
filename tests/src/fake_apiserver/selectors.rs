//! Label selectors (`a=b`, `a==b`, `a!=b`, `a`, `!a`, comma = and) and the field selectors
//! the orchestrator could use (`metadata.name`, `spec.nodeName`), as the API server reads them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// A parsed selector; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Term>);

impl Selector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let term = if let Some((k, v)) = part.split_once("!=") {
                Term::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Term::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some(k) = part.strip_prefix('!') {
                Term::Absent(k.trim().to_owned())
            } else if part.contains(' ') || part.contains('(') {
                return Err(format!("unable to parse requirement: {part:?} (set-based selectors are not served by the fake)"));
            } else {
                Term::Exists(part.to_owned())
            };
            terms.push(term);
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|term| match term {
            Term::Equals(k, v) => labels.get(k) == Some(v),
            Term::NotEquals(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
        })
    }

    /// As a field selector on a pod.
    pub fn matches_fields(&self, pod: &Pod) -> bool {
        let mut fields = BTreeMap::new();
        fields.insert(
            "metadata.name".to_owned(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        fields.insert(
            "metadata.namespace".to_owned(),
            pod.metadata.namespace.clone().unwrap_or_default(),
        );
        fields.insert(
            "spec.nodeName".to_owned(),
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
        );
        self.matches(&fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_as_the_api_server_reads_them() {
        let labels: BTreeMap<String, String> = [
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "x".to_owned()),
        ]
        .into();
        for (text, expected) in [
            ("", true),
            ("a=1", true),
            ("a==1,b=x", true),
            ("a=2", false),
            ("a!=2", true),
            ("a", true),
            ("c", false),
            ("!c", true),
            ("!a", false),
            ("a=1,!c", true),
        ] {
            assert_eq!(
                Selector::parse(text).unwrap().matches(&labels),
                expected,
                "{text}"
            );
        }
        assert!(Selector::parse("a in (1,2)").is_err());
    }
}
