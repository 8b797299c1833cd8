//! `msa-local logs`: every component's log file of a run, merged in time order, optionally
//! only some components or one request (by its id: the gateway passes it on, so one request is
//! followed across every service), and followed as it grows. Lines are printed as written
//! (JSON or text), each after its component's name.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// Only these components (`gateway`, `order`, `product-1`...; a service's name takes all its
    /// replicas).
    components: Vec<String>,
    /// The run's data folder.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Only lines about this request (its `x-request-id`).
    #[arg(long)]
    request_id: Option<String>,
    /// Keep printing new lines until Ctrl-C.
    #[arg(long, short)]
    follow: bool,
}

/// One log line and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub instance: String,
    pub line: String,
}

impl Entry {
    /// When the line was written: the `timestamp` of a JSON line, the first word of a text
    /// line; lines without one sort first.
    fn time(&self) -> Option<jiff::Timestamp> {
        let text = if self.line.starts_with('{') {
            serde_json::from_str::<serde_json::Value>(&self.line)
                .ok()?
                .get("timestamp")?
                .as_str()?
                .to_owned()
        } else {
            self.line.split_whitespace().next()?.to_owned()
        };
        text.parse().ok()
    }
}

/// What to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub components: Vec<String>,
    pub request_id: Option<String>,
}

impl Filter {
    pub fn wants_instance(&self, instance: &str) -> bool {
        self.components.is_empty()
            || self.components.iter().any(|c| {
                instance == c
                    || instance
                        .strip_prefix(c.as_str())
                        .is_some_and(|rest| rest.starts_with('-'))
            })
    }

    /// A request id is matched as a whole quoted value, as both log formats write it.
    pub fn wants_line(&self, line: &str) -> bool {
        self.request_id
            .as_ref()
            .is_none_or(|id| line.contains(&format!("\"{id}\"")))
    }
}

/// `entries` in time order (stable: lines of one file keep their order when times tie).
pub fn merge(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by_cached_key(Entry::time);
    entries
}

pub fn run(args: LogsArgs) -> anyhow::Result<()> {
    let filter = Filter {
        components: args.components,
        request_id: args.request_id,
    };
    let logs = args.data_dir.join("logs");
    let files = log_files(&logs)?;
    if files.is_empty() {
        anyhow::bail!(
            "no logs in {}: start `msa-local up --data-dir {}` first",
            logs.display(),
            args.data_dir.display()
        );
    }
    let mut readers: BTreeMap<String, (PathBuf, u64)> = files
        .into_iter()
        .filter(|(instance, _)| filter.wants_instance(instance))
        .map(|(instance, path)| (instance, (path, 0)))
        .collect();
    loop {
        let mut batch = Vec::new();
        for (instance, (path, offset)) in &mut readers {
            for line in read_from(path, offset)? {
                if filter.wants_line(&line) {
                    batch.push(Entry {
                        instance: instance.clone(),
                        line,
                    });
                }
            }
        }
        for entry in merge(batch) {
            println!("{:<10} {}", entry.instance, entry.line);
        }
        if !args.follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `<instance>.log` files of the logs folder.
fn log_files(logs: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    let listing = match std::fs::read_dir(logs) {
        Ok(listing) => listing,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(error) => return Err(error).context(format!("cannot read {}", logs.display())),
    };
    for entry in listing {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            files.push((stem.to_owned(), path));
        }
    }
    files.sort();
    Ok(files)
}

/// The complete lines after `offset`, which moves past them (a partly written last line waits
/// for the next read).
fn read_from(path: &Path, offset: &mut u64) -> anyhow::Result<Vec<String>> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if file.metadata()?.len() < *offset {
        // The file was truncated or replaced: start again.
        *offset = 0;
    }
    file.seek(SeekFrom::Start(*offset))?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut buffer = String::new();
    loop {
        buffer.clear();
        let read = reader.read_line(&mut buffer)?;
        if read == 0 || !buffer.ends_with('\n') {
            break;
        }
        *offset += read as u64;
        lines.push(buffer.trim_end().to_owned());
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(instance: &str, line: &str) -> Entry {
        Entry {
            instance: instance.into(),
            line: line.into(),
        }
    }

    #[test]
    fn json_and_text_lines_merge_in_time_order() {
        let merged = merge(vec![
            entry(
                "gateway",
                r#"{"timestamp":"2026-11-30T10:00:03.000001Z","msg":"c"}"#,
            ),
            entry("user-0", "2026-11-30T10:00:01.5Z  INFO b"),
            entry(
                "order-0",
                r#"{"timestamp":"2026-11-30T10:00:01.000000Z","msg":"a"}"#,
            ),
            entry("order-0", "no timestamp"),
        ]);
        let order: Vec<&str> = merged.iter().map(|e| e.instance.as_str()).collect();
        assert_eq!(order, ["order-0", "order-0", "user-0", "gateway"]);
        assert_eq!(merged[0].line, "no timestamp");
    }

    #[test]
    fn components_take_their_replicas_and_ids_match_whole() {
        let filter = Filter {
            components: vec!["product".into(), "gateway".into()],
            request_id: Some("req-1".into()),
        };
        assert!(filter.wants_instance("product-1") && filter.wants_instance("gateway"));
        assert!(!filter.wants_instance("productive-0") && !filter.wants_instance("order-0"));
        assert!(filter.wants_line(r#"{"span":{"request_id":"req-1"}}"#));
        assert!(filter.wants_line(r#"request{request_id="req-1"}: handled"#));
        assert!(!filter.wants_line(r#"request{request_id="req-12"}: handled"#));
    }
}
