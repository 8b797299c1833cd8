//! Prometheus' own linter on an exposition, for tests (`promtool check metrics`, from Debian's
//! `prometheus` package, which `make unit` installs).

use std::io::Write;
use std::process::{Command, Stdio};

/// `Ok` when `promtool check metrics` finds nothing to say about `exposition` (classic text
/// format); otherwise what it said. Fails clearly when promtool is not installed.
pub fn check_metrics(exposition: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run promtool ({e}); install Debian's prometheus package (make unit does)"
            )
        })?;
    child
        .stdin
        .take()
        .ok_or("promtool has no stdin")?
        .write_all(exposition.as_bytes())
        .map_err(|e| e.to_string())?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}
