//! The real runner against real processes (`sh`, `sleep`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::builder::CaptureSink;

/// Live (not zombie) processes whose process group is `pgid`: (pid, name).
fn live_members(pgid: i32) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let (Some(state), Some(pgrp)) = (rest.first(), rest.get(2)) else {
            continue;
        };
        if *state != "Z" && *state != "X" && pgrp.parse::<i32>().ok() == Some(pgid) {
            found.push((pid, name));
        }
    }
    found
}

fn sh(script: &str) -> CommandSpec {
    CommandSpec::new("sh").args(["-c", script])
}

/// Starts `cmd` on a task; returns the task, the cancel token and the output.
fn start(
    runner: ProcessRunner,
    cmd: CommandSpec,
) -> (
    tokio::task::JoinHandle<Result<Completed, SpawnError>>,
    CancellationToken,
    Arc<CaptureSink>,
) {
    let sink = Arc::new(CaptureSink::default());
    let cancel = CancellationToken::new();
    let task = {
        let sink = sink.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { runner.run(&cmd, &*sink, &cancel).await })
    };
    (task, cancel, sink)
}

/// The first line of output, a pid the script echoed (`echo $$`).
async fn echoed_pid(sink: &CaptureSink) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&sink.contents()).into_owned();
        if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
            return line.trim().parse().expect("a pid");
        }
        assert!(Instant::now() < deadline, "the script printed no pid");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until group `pgid` has no live members, polling; panics with the survivors
/// if some are still alive after `within`. A zombie counts as gone: it runs nothing
/// and holds nothing, and when its reaper (PID 1, for a command's orphans) gets to it
/// is up to the machine, not to the runner.
async fn wait_group_gone(pgid: i32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let members = live_members(pgid);
        if members.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {pgid} still has live members after {within:?}: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the group has `n` live members (the script started its children).
async fn wait_members(pgid: i32, n: usize) -> Vec<(i32, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members = live_members(pgid);
        if members.len() >= n {
            return members;
        }
        assert!(Instant::now() < deadline, "group {pgid}: {members:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group() {
    let grace = Duration::from_secs(5);
    let (task, cancel, sink) = start(
        ProcessRunner::new(grace),
        sh("echo $$; sleep 100 & sleep 100"),
    );
    let pgid = echoed_pid(&sink).await;
    let members = wait_members(pgid, 3).await;
    let sleeps = members.iter().filter(|(_, name)| name == "sleep").count();
    assert_eq!(
        sleeps, 2,
        "both sleeps run in the command's own group: {members:?}"
    );
    // A group named after the shell's own pid: the shell leads a group of its own.

    cancel.cancel();
    // SIGTERM is enough: the whole group is gone before the grace period is over
    // (watched while the run goes on: how long the run itself takes also depends on
    // when PID 1 reaps the orphaned sleeps, which the runner waits for, up to the
    // grace period).
    wait_group_gone(pgid, grace).await;
    let done = tokio::time::timeout(grace + Duration::from_secs(5), task)
        .await
        .expect("the run ends")
        .expect("task")
        .expect("ran");
    assert!(done.cancelled);
    assert_eq!(done.status, ExitStatus::Signal(libc::SIGTERM));
    assert!(!LIVE_GROUPS.lock().expect("lock").contains(&pgid));
}

#[tokio::test]
async fn a_group_that_ignores_sigterm_gets_sigkill_after_the_grace_period() {
    let grace = Duration::from_millis(300);
    let (task, cancel, sink) = start(
        ProcessRunner::new(grace),
        sh("trap '' TERM; echo $$; sleep 100 & sleep 100"),
    );
    let pgid = echoed_pid(&sink).await;
    wait_members(pgid, 3).await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    let done = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the run ends")
        .expect("task")
        .expect("ran");
    let took = cancelled_at.elapsed();
    assert!(
        took >= grace,
        "SIGKILL only after the grace period: {took:?}"
    );
    assert!(took < grace + Duration::from_secs(3), "{took:?}");
    assert!(done.cancelled);
    assert_eq!(done.status, ExitStatus::Signal(libc::SIGKILL));
    // The run ends right after the SIGKILL, not when the killed processes are gone.
    wait_group_gone(pgid, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn output_of_both_streams_in_order_and_the_exit_status() {
    let runner = ProcessRunner::new(Duration::from_secs(1));
    let sink = CaptureSink::default();
    let never = CancellationToken::new();
    let cmd = sh("echo one; echo two >&2; echo three; printf 'no newline'; exit 3");
    let done = runner.run(&cmd, &sink, &never).await.expect("ran");
    assert_eq!(done.status, ExitStatus::Code(3));
    assert!(!done.cancelled);
    assert_eq!(
        String::from_utf8(sink.contents()).expect("utf8"),
        "one\ntwo\nthree\nno newline"
    );
    assert_eq!(done.tail, "one\ntwo\nthree\nno newline");

    let cwd = tempfile::tempdir().expect("tempdir");
    let cmd = sh("pwd; echo \"$HELIX_TEST_VAR\"; cat")
        .env("HELIX_TEST_VAR", "from the spec")
        .cwd(cwd.path());
    let sink = CaptureSink::default();
    let done = runner.run(&cmd, &sink, &never).await.expect("ran");
    assert!(done.status.success());
    let canonical = cwd.path().canonicalize().expect("canonical");
    assert_eq!(
        String::from_utf8(sink.contents()).expect("utf8"),
        format!("{}\nfrom the spec\n", canonical.display()),
        "runs in cwd, with env, and stdin is empty"
    );
}

#[tokio::test]
async fn processes_a_command_leaves_behind_do_not_outlive_it() {
    let grace = Duration::from_secs(2);
    let runner = ProcessRunner::new(grace);
    let never = CancellationToken::new();

    // Holding the output pipe: killed once the pipe stays open after the exit.
    let sink = CaptureSink::default();
    let started = Instant::now();
    let done = runner
        .run(&sh("echo $$; sleep 100 &"), &sink, &never)
        .await
        .expect("ran");
    assert!(done.status.success());
    // Not the sleep's 100 s: the pipe is given DRAIN_AFTER_EXIT, then the group is
    // killed, and the runner waits (at most the grace period) for PID 1 to reap it.
    let bound = DRAIN_AFTER_EXIT + grace + Duration::from_secs(3);
    assert!(
        started.elapsed() < bound,
        "{:?} (at most {bound:?})",
        started.elapsed()
    );
    let pgid: i32 = String::from_utf8_lossy(&sink.contents())
        .trim()
        .parse()
        .expect("pid");
    wait_group_gone(pgid, Duration::from_secs(5)).await;

    // Not holding it: SIGTERM to the group once the command exited.
    let sink = CaptureSink::default();
    let done = runner
        .run(&sh("echo $$; sleep 100 >/dev/null 2>&1 &"), &sink, &never)
        .await
        .expect("ran");
    assert!(done.status.success());
    let pgid: i32 = String::from_utf8_lossy(&sink.contents())
        .trim()
        .parse()
        .expect("pid");
    wait_group_gone(pgid, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error() {
    let runner = ProcessRunner::default();
    let err = runner
        .run(
            &CommandSpec::new("helix-no-such-program"),
            &CaptureSink::default(),
            &CancellationToken::new(),
        )
        .await
        .expect_err("missing");
    assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
    assert!(
        err.to_string()
            .starts_with("cannot run helix-no-such-program: "),
        "{err}"
    );
}

#[test]
fn the_tail_is_the_last_lines() {
    let mut tail = Tail::default();
    for i in 0..1000 {
        tail.push(format!("line {i}\n").as_bytes());
    }
    let lines = tail.lines(TAIL_LINES);
    assert_eq!(lines.lines().count(), 20);
    assert!(lines.starts_with("line 980\n"), "{lines}");
    assert!(lines.ends_with("line 999"), "{lines}");
    assert_eq!(
        last_lines("a\n\n  \nb\r\n10%\r50%\r100%\n", 5),
        "a\nb\n100%"
    );
    assert_eq!(last_lines("", 5), "");
    assert!(signal_group(0, 0).is_err() && signal_group(1, 0).is_err());
}

#[tokio::test]
async fn builds_left_by_a_dead_agent_are_stopped_at_start_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = tmp.path().join("storage");
    let work = tmp.path().join("work/job-1/src");
    std::fs::create_dir_all(&work).expect("work");
    // Two "builders" a dead agent left, each leading its own group: one names the
    // storage in its arguments, one works in a work dir.
    use std::os::unix::process::CommandExt;
    let mut on_storage = std::process::Command::new("sh")
        .args(["-c", "sleep 100; : \"$0\""])
        .arg(storage.join("root"))
        .process_group(0)
        .spawn()
        .expect("spawn");
    let mut in_work = std::process::Command::new("sleep")
        .arg("100")
        .current_dir(&work)
        .process_group(0)
        .spawn()
        .expect("spawn");
    let unrelated = std::process::Command::new("sleep")
        .arg("100")
        .process_group(0)
        .spawn();
    let mut unrelated = unrelated.expect("spawn");

    let stopped =
        stop_leftover_groups(&storage, &tmp.path().join("work"), Duration::from_secs(2)).await;
    assert_eq!(stopped, 2);
    assert!(on_storage.wait().expect("wait").signal().is_some());
    assert!(in_work.wait().expect("wait").signal().is_some());
    assert!(
        unrelated.try_wait().expect("try_wait").is_none(),
        "others are left alone"
    );
    let _ = unrelated.kill();
    let _ = unrelated.wait();
    assert_eq!(process_group_of("12 (a) b) S 1 77 77 0"), Some(77));
}

#[tokio::test]
async fn commands_do_not_inherit_the_join_token() {
    // Only this test sets the variable.
    std::env::set_var("HELIX_JOIN_TOKEN", "secret-from-the-environment");
    let (task, _cancel, sink) = start(
        ProcessRunner::new(Duration::from_secs(1)),
        sh("echo \"[${HELIX_JOIN_TOKEN-unset}] [${NOTIFY_SOCKET-unset}]\""),
    );
    let done = task.await.expect("task").expect("ran");
    std::env::remove_var("HELIX_JOIN_TOKEN");
    assert!(done.status.success());
    assert_eq!(
        String::from_utf8_lossy(&sink.contents()).trim(),
        "[unset] [unset]"
    );
}
