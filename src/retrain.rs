//! `[train]`: the service retrains its models on a schedule. Every
//! `train.every`, from the start, it runs `tripline train --from-topics
//! --declare NAME` for each model of `train.models`, over the rule files it
//! runs, as a child process (a failing or slow training cannot touch the
//! service, and it runs exactly what a user runs by hand). A version goes
//! on trial by being declared in the rule files, which the service reloads.

use anyhow::Result;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tripline::adapters::worker::{Stop, Worker};
use tripline::config::Config;

/// `tripline train`'s arguments for model `name` under `config`.
fn arguments(config: &Config, name: &str) -> Vec<OsString> {
    let t = &config.train;
    let mut args: Vec<OsString> = [
        "train",
        "--from-topics",
        "--declare",
        name,
        "--delay",
        &t.delay,
        "--train",
        &t.span,
        "--test",
        &t.test,
        "--python",
        &t.python,
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if let Some(file) = &config.file {
        args.extend(["--config".into(), file.into()]);
    }
    if !t.out.is_empty() {
        args.extend(["--out".into(), t.out.clone().into()]);
    }
    for p in &config.rules.paths {
        args.extend(["-r".into(), p.into()]);
    }
    args
}

/// The last `n` lines of `text`, on one line each.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Runs `exe args` to its end, or kills it when the service stops; its
/// outcome goes to the log.
///
/// The training writes large temporary files (a copy of the feature log,
/// the training set) and runs Python: it runs in a process group of its
/// own with `TMPDIR` set to a directory this function owns, so that a stop
/// mid-training kills the Python as well and leaves no file behind.
fn run(exe: &Path, args: &[OsString], name: &str, stop: &Stop) {
    let work = tempfile::Builder::new().prefix("tripline-train-").tempdir();
    let (Ok(work), Ok(out), Ok(err)) = (work, tempfile::tempfile(), tempfile::tempfile()) else {
        tracing::warn!(
            model = name,
            "train: no temporary directory or file to run it in"
        );
        return;
    };
    let (Ok(out_w), Ok(err_w)) = (out.try_clone(), err.try_clone()) else {
        return;
    };
    let child = Command::new(exe)
        .args(args)
        .env("TMPDIR", work.path())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out_w)
        .stderr(err_w)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(model = name, "train: cannot run {}: {e}", exe.display());
            return;
        }
    };
    tracing::info!(model = name, pid = child.id(), "train: retraining");
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if stop.requested() => {
                let group = rustix::process::Pid::from_child(&child);
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                let _ = child.wait();
                tracing::info!(model = name, "train: stopped with the service");
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                tracing::warn!(model = name, "train: cannot wait for it: {e}");
                return;
            }
        }
    };
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        let _ = f.rewind().and_then(|_| f.read_to_string(&mut s));
        s
    };
    let (stdout, stderr) = (read(out), read(err));
    if status.success() {
        tracing::info!(model = name, "train: {}", tail(&stdout, 4));
    } else if stderr.contains("never overwritten") {
        tracing::info!(
            model = name,
            "train: this day's version exists already; the next run trains the next"
        );
    } else {
        tracing::warn!(model = name, %status, "train: failed: {}", tail(&stderr, 6));
    }
}

/// Starts the schedule, when `train.models` names a model.
pub fn start(config: &Config) -> Result<Option<Worker>> {
    let t = &config.train;
    if t.models.is_empty() {
        return Ok(None);
    }
    let exe = std::env::current_exe()?;
    let every = tripline::rules::parse_duration(&t.every).unwrap_or(7 * 86_400_000);
    let every = Duration::from_millis(every.max(1) as u64);
    let runs: Vec<(String, Vec<OsString>)> = (t.models.iter())
        .map(|m| (m.clone(), arguments(config, m)))
        .collect();
    let worker = Worker::spawn("tripline-train", move |stop| {
        while !stop.requested() {
            #[allow(clippy::disallowed_methods)]
            let next = std::time::Instant::now() + every;
            for (name, args) in &runs {
                if !stop.requested() {
                    run(&exe, args, name, &stop);
                }
            }
            #[allow(clippy::disallowed_methods)]
            while !stop.requested() && std::time::Instant::now() < next {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    })?;
    Ok(Some(worker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_runs_what_a_user_runs_by_hand() {
        let mut config = Config::default();
        config.train.out = "/var/models".into();
        config.file = Some("/etc/tripline.toml".into());
        config.rules.paths = vec!["rules".into(), "more.tl".into()];
        let args: Vec<String> = arguments(&config, "card_rf")
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args.join(" "),
            "train --from-topics --declare card_rf --delay 7d --train 7d --test 7d \
             --python python3 --config /etc/tripline.toml --out /var/models -r rules -r more.tl"
        );
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
    }
}
