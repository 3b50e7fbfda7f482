//! Registry binaries and the processes started from them: a test needs to kill -9 a registry,
//! restart it on the same ports and data, and read its log when an assertion fails.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a registry binary (`etcd`, `consul`, `rnacos`). Panics with the fix when missing.
pub fn binary(name: &str) -> PathBuf {
    let env = format!("CHI_{}_BIN", name.trim_start_matches('r').to_uppercase());
    if let Ok(p) = std::env::var(&env) {
        return PathBuf::from(p);
    }
    let cache = std::env::var("CHI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/chi")
        });
    let path = cache.join("bin").join(name);
    assert!(
        path.exists(),
        "registry binary `{name}` not found at {} (nor ${env}); run `scripts/registry install` \
         (the README's test command does)",
        path.display()
    );
    path
}

/// A child process killed when dropped.
pub struct Proc {
    /// A name for messages.
    pub name: String,
    cmd: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `program args...`, output appended to `log`.
    pub fn spawn(name: &str, program: &std::path::Path, args: &[String], log: PathBuf) -> Proc {
        let mut cmd = vec![program.display().to_string()];
        cmd.extend(args.iter().cloned());
        let mut p = Proc {
            name: name.to_owned(),
            cmd,
            log,
            child: None,
        };
        p.start();
        p
    }

    /// (Re)starts the process with the same command line.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
