//! Secret masking. Every line the tool prints — its own messages, the streamed
//! output of children, error chains, JSON — goes through [`redact`] inside
//! the output layer (`output.rs`); nothing prints with `eprintln!`/`println!`.

use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// What a secret is replaced with.
pub const MASK: &str = "********";

/// Remember a secret value so it is masked from now on. Values shorter than
/// 6 characters are ignored: masking them would mangle ordinary text.
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.len() < 6 {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_owned());
        // Longest first, so a secret that contains another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret replaced by [`MASK`].
pub fn redact(text: &str) -> String {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_owned();
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    out
}

/// An access key id shown as `AKIA…WXYZ`: enough to tell keys apart.
pub fn key_hint(key_id: &str) -> String {
    let chars: Vec<char> = key_id.chars().collect();
    if chars.len() <= 8 {
        return "…".to_owned();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_registered_secrets_longest_first() {
        register("abcdefghij");
        register("abcdefghijKLMNOP");
        let out = redact("x=abcdefghijKLMNOP y=abcdefghij z=abc");
        assert_eq!(out, format!("x={MASK} y={MASK} z=abc"));
    }

    #[test]
    fn short_values_are_not_secrets() {
        register("abc");
        assert_eq!(redact("abc"), "abc");
    }

    #[test]
    fn key_hint_keeps_ends_only() {
        assert_eq!(key_hint("AKIDABCDEFGHIJKLWXYZ"), "AKID…WXYZ");
        assert_eq!(key_hint("short"), "…");
    }
}
