//! Bad input at the edges of the `chi` binary: absurd durations and worker counts, deep config
//! files, and registry data full of terminal escapes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{agent, register};
use crate::support::{chi, stderr, stdout, yaml};

/// Runs `cmd` for at most `limit`; `None` when it was still running (then killed).
fn bounded(mut cmd: Command, limit: Duration) -> Option<std::process::Output> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chi");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Some(out.expect("output")),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            None
        }
    }
}

/// `chi xds --restart-grace 18446744073709551615s` panicked in a follow task and kept serving a
/// dead endpoint; a memory TTL of `9223372036854775808s` passed `chi config check` and then
/// `chi agent` panicked (exit 101). Both are refused at the flag or field, exit 2.
#[test]
fn absurd_durations_are_refused_at_the_flag_and_the_field() {
    let mut cmd = chi();
    cmd.args([
        "xds",
        "--listen",
        "127.0.0.1:0",
        "--registry",
        "memory",
        "--restart-grace",
        "18446744073709551615s",
    ]);
    let out = bounded(cmd, Duration::from_secs(10)).expect("chi xds exits");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("must be at most 1 day (24h), got 18446744073709551615s"),
        "{}",
        stderr(&out)
    );

    let config = yaml(
        "service_discovery:\n  registration:\n    name: ttl\n    address: 127.0.0.1\n    port: 9\n  registries:\n    memory:\n      enabled: true\n      ttl: \"9223372036854775808s\"\n",
    );
    let mut check = chi();
    check.args(["config", "check"]).arg(&config.1);
    let out = bounded(check, Duration::from_secs(10)).expect("config check exits");
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(
            "service_discovery.registries.memory.ttl: must be at most 1 day (24h), got \"9223372036854775808s\""
        ),
        "{}",
        stderr(&out)
    );
    let mut agent = chi();
    agent
        .args(["agent", "--admin", "127.0.0.1:0", "-c"])
        .arg(&config.1);
    let out = bounded(agent, Duration::from_secs(10)).expect("chi agent exits");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `--workers` is bounded: each worker is a thread with its own event loop.
#[test]
fn workers_are_bounded() {
    let mut cmd = chi();
    cmd.args(["proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--registry", "memory", "--workers", "5000"]);
    let out = bounded(cmd, Duration::from_secs(10)).expect("chi proxy exits");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("5000 is not in 1..=256"),
        "{}",
        stderr(&out)
    );
}

/// A config nesting 200,000 levels took over 60 s to parse (quadratic); it is refused at once.
#[test]
fn deep_configs_are_refused_fast() {
    let n = 200_000;
    let config = yaml(&format!(
        "service_discovery: {}{}\n",
        "[".repeat(n),
        "]".repeat(n)
    ));
    let start = Instant::now();
    let mut cmd = chi();
    cmd.args(["config", "check"]).arg(&config.1);
    let out = bounded(cmd, Duration::from_secs(20)).expect("config check exits in time");
    let took = start.elapsed();
    println!("[bounds] config of {n} nested levels refused in {took:?}");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("nests deeper than 64 levels at line 1"),
        "{}",
        stderr(&out)
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// Registry data with terminal escapes (ESC, CSI, BEL, a right-to-left override) is printed
/// escaped by `chi discover` (table and JSON) and `chi watch`.
#[test]
fn registry_data_reaches_the_terminal_escaped() {
    let agent = agent(&[], &[]);
    let (status, body) = register(
        &agent.admin,
        "ansi",
        "ansi-1",
        80,
        r#","tags":["\u001b[2J\u001b]0;owned\u0007"],"meta":{"note":"\u009b31m\u202eevil"}"#,
    );
    assert_eq!(status, 204, "{body}");
    let hostile = ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'];
    for format in ["table", "json"] {
        let mut cmd = chi();
        cmd.args(["discover", "ansi", "-o", format, "--registry", &agent.url()]);
        let out = bounded(cmd, Duration::from_secs(10)).expect("discover exits");
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            !text.chars().any(|c| hostile.contains(&c)),
            "{format}: {text:?}"
        );
        assert!(text.contains("[2J"), "{format}: {text:?}");
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(
                v[0]["meta"]["note"], "\u{9b}31m\u{202e}evil",
                "the same value"
            );
        }
    }
    let mut cmd = chi();
    cmd.args(["watch", "ansi", "-o", "json", "--registry", &agent.url()]);
    let mut watch = crate::support::Proc::spawn(cmd);
    let line = watch.wait_line("the reset", |l| l.contains("reset"));
    assert!(!line.chars().any(|c| hostile.contains(&c)), "{line:?}");
}
