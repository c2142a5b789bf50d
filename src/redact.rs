//! Secret masking. Every line the tool prints — its own messages, the streamed
//! output of children, error chains — goes through [`redact`]: print with
//! [`say!`](crate::say) (stderr), [`out!`](crate::out) (stdout) or
//! [`prompt!`](crate::prompt) (stderr, no newline), never with
//! `eprintln!`/`println!` directly.

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

/// Print one masked line to stderr (the tool's messages).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::redact::say_line(&format!($($arg)*))
    };
}

/// Print one masked line to stdout (results: `KEY=value` lines, reports).
#[macro_export]
macro_rules! out {
    () => {
        $crate::redact::out_line("")
    };
    ($($arg:tt)*) => {
        $crate::redact::out_line(&format!($($arg)*))
    };
}

/// Print masked text to stderr without a newline, and flush (a question).
#[macro_export]
macro_rules! prompt {
    ($($arg:tt)*) => {
        $crate::redact::prompt_text(&format!($($arg)*))
    };
}

/// `text`, masked, on stderr.
pub fn say_line(text: &str) {
    eprintln!("{}", redact(text));
}

/// `text`, masked, on stdout.
pub fn out_line(text: &str) {
    println!("{}", redact(text));
}

/// `text`, masked, on stderr without a newline.
#[allow(dead_code)] // for `prompt!`: infra.rs asks its question with it
pub fn prompt_text(text: &str) {
    use std::io::Write;
    eprint!("{}", redact(text));
    std::io::stderr().flush().ok();
}

/// Mask panic messages too: a panic prints its payload, which may hold a value.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        say_line(&format!("casey-deploy crashed{place}: {payload}; please report this"));
    }));
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
