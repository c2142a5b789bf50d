//! `completions` and `man`: generated from the same clap definitions the
//! tool parses with, so they list every verb and flag; they need no project.

use std::io::Read;
use std::process::{Command, Stdio};

const VERBS: &[&str] = &[
    "all",
    "infra",
    "import",
    "image",
    "backend-url",
    "status",
    "history",
    "rollback",
    "logs",
    "sandbox",
    "whoami",
    "doctor",
];

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_casey-deploy"))
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn completion_scripts_name_every_verb() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, stdout, stderr) = run(&["completions", shell]);
        assert_eq!(code, Some(0), "{shell}: {stderr}");
        for verb in VERBS {
            assert!(stdout.contains(verb), "{shell} completion lacks `{verb}`");
        }
        assert!(stdout.contains("refresh-only"), "{shell} completion lacks infra's flags");
    }
    let (code, _, stderr) = run(&["completions", "nosh"]);
    assert_eq!(code, Some(2), "an unknown shell is a usage error");
    assert!(stderr.contains("possible values: bash"), "{stderr}");
}

#[test]
fn the_man_page_documents_every_verb_and_its_options() {
    let (code, page, stderr) = run(&["man"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(page.starts_with(".ie") || page.contains(".TH casey-deploy"), "roff: {}", &page[..page.len().min(200)]);
    for verb in VERBS {
        assert!(page.contains(&format!("casey\\-deploy {}", verb.replace('-', "\\-"))), "no section for `{verb}`");
    }
    for flag in ["refresh\\-only", "\\-\\-allow\\-dirty", "\\-\\-check", "\\-\\-sequential", "\\-\\-admin\\-principal"]
    {
        assert!(page.contains(flag), "the page lacks {flag}");
    }
}

#[test]
fn a_reader_that_goes_away_is_not_an_error() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_casey-deploy"))
        .arg("man")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // like `casey-deploy man | head -0`
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(!stderr.contains("crashed"), "{stderr}");
}
