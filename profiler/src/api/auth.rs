//! The control API's token: with `--token-file`, every route but the kubelet's probes
//! (`/healthz`, `/readyz`) needs `Authorization: Bearer <token>`.
//!
//! Why a token on a loopback-only API: in Kubernetes the agent shares the node's network
//! namespace, and so does every other hostNetwork pod on the node (the benchmark's own twins
//! included), so loopback alone would let any of them attach programs. The token comes from a
//! Secret mounted into the agent and is read by `netprof k8s run` (RBAC: `get` on that one
//! Secret), which sends it through the port-forward.

use std::path::{Path, PathBuf};

/// Tokens shorter than this are refused: a guessable token is no protection.
pub const MIN_TOKEN_LEN: usize = 16;

/// The routes the kubelet probes without credentials; they say nothing a caller could misuse.
pub const OPEN_ROUTES: [&str; 2] = ["/healthz", "/readyz"];

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the API token in {path} has {len} characters; give at least {MIN_TOKEN_LEN} printable characters \
         without spaces (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    Weak { path: PathBuf, len: usize },
}

/// The shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The file's content without surrounding white space (a Secret's value often ends in a
    /// newline).
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::new(text.trim()).map_err(|len| TokenError::Weak {
            path: path.to_owned(),
            len,
        })
    }

    /// A token from its text; `Err(length)` when it is too short or has white space or
    /// control characters inside.
    pub fn new(text: &str) -> Result<Self, usize> {
        let printable = text.bytes().all(|b| b.is_ascii_graphic());
        if text.len() < MIN_TOKEN_LEN || !printable {
            return Err(text.len());
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `Authorization` header's value for this token.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether an `Authorization` header carries this token. The comparison takes the same
    /// time wherever the first difference is.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(given) = authorization.and_then(|h| {
            let (scheme, rest) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        }) else {
            return false;
        };
        let (a, b) = (given.as_bytes(), self.0.as_bytes());
        let mut differ = a.len() ^ b.len();
        for (i, byte) in b.iter().enumerate() {
            differ |= usize::from(a.get(i).copied().unwrap_or(0) ^ byte);
        }
        differ == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let token = Token::new("0123456789abcdef-xyz").unwrap();
        assert!(token.accepts(Some("Bearer 0123456789abcdef-xyz")));
        assert!(token.accepts(Some("bearer  0123456789abcdef-xyz ")));
        for wrong in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer 0123456789abcdef-xy"),
            Some("Bearer 0123456789abcdef-xyzz"),
            Some("Basic 0123456789abcdef-xyz"),
            Some("0123456789abcdef-xyz"),
        ] {
            assert!(!token.accepts(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{token:?}"), "Token(..)", "never printed");
    }

    #[test]
    fn weak_tokens_and_missing_files_are_refused_by_name() {
        assert_eq!(Token::new("short"), Err(5));
        assert!(Token::new("with a space inside it").is_err());
        let dir = std::env::temp_dir().join(format!("netprof-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "abc\n").unwrap();
        let err = Token::from_file(&file).unwrap_err().to_string();
        assert!(
            err.contains("has 3 characters") && err.contains(&file.display().to_string()),
            "{err}"
        );
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        assert_eq!(
            Token::from_file(&file).unwrap().as_str(),
            "0123456789abcdef0123"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let err = Token::from_file(&dir.join("token"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read the API token file"), "{err}");
    }
}
