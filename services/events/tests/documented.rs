//! services/README.md documents every event type with one example; each example must be a valid
//! envelope of the type it is documented under, and every type must be documented.

use std::collections::BTreeSet;

use msa_events::EventType;
use msa_events::envelope::CloudEvent;

/// `(heading type, JSON)` for every "#### `<type>`" heading followed by a ```json block.
fn examples(readme: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(kind) = line
            .strip_prefix("#### `")
            .and_then(|rest| rest.strip_suffix('`'))
        else {
            continue;
        };
        let mut block = None;
        for line in lines.by_ref() {
            if line.starts_with("#### ") || line.starts_with("## ") {
                panic!("no ```json example under {kind}");
            }
            if line == "```json" {
                let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
                block = Some(body.join("\n"));
                break;
            }
        }
        found.push((kind.to_owned(), block.unwrap_or_default()));
    }
    found
}

#[test]
fn every_type_is_documented_with_an_example_that_parses_as_that_type() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("services/README.md");
    let examples = examples(&readme);
    let mut documented = BTreeSet::new();
    for (heading, json) in &examples {
        let (event, kind) = CloudEvent::parse(json.as_bytes())
            .unwrap_or_else(|error| panic!("the example of {heading}: {error}"));
        assert_eq!(kind.as_str(), heading, "an example under the wrong heading");
        assert_eq!(event.source, format!("/shop/{}", kind.service()));
        assert!(
            event.traceparent.is_some(),
            "{heading}: show the traceparent"
        );
        assert!(documented.insert(kind), "{heading} is documented twice");
    }
    let missing: Vec<_> = EventType::ALL
        .into_iter()
        .filter(|kind| !documented.contains(kind))
        .collect();
    assert!(missing.is_empty(), "undocumented event types: {missing:?}");
}

#[test]
fn a_wrong_example_would_be_caught() {
    let readme =
        "#### `dev.msa.user.deleted.v1`\n\ntext\n\n```json\n{\"specversion\": \"1.0\"}\n```\n";
    let examples = examples(readme);
    assert_eq!(examples.len(), 1);
    assert!(CloudEvent::parse(examples[0].1.as_bytes()).is_err());
}
