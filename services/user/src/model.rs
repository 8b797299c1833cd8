//! What a user is, and the rules a name and an email must follow (pure, unit-tested).

use msa_service_kit::Problem;
use msa_service_kit::text::{TextRule, normalise_email};
use serde::{Deserialize, Serialize};

pub const MAX_NAME: usize = 200;
pub const MAX_EMAIL: usize = 254;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    pub email: String,
}

/// `PUT /users/{id}`: only the fields present change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// A trimmed, non-empty name of at most 200 characters, on one line, with no control or
/// text-direction characters.
pub fn valid_name(raw: &str) -> Result<String, Problem> {
    TextRule::line("name", MAX_NAME).check(raw)
}

/// A plausible address (local@domain.tld, no spaces, at most 254 bytes), lowercased and in
/// Unicode NFC so that uniqueness ignores case and how accents were typed. Deliverability is
/// not checked here.
pub fn valid_email(raw: &str) -> Result<String, Problem> {
    let email = TextRule::line("email", MAX_EMAIL).check(&normalise_email(raw))?;
    let shown: String = raw.chars().take(60).collect();
    let invalid = |why: &str| {
        Err(Problem::invalid(
            "email",
            format!("email {shown:?} is not valid: {why}"),
        ))
    };
    if email.len() > MAX_EMAIL {
        return invalid("longer than 254 bytes");
    }
    if email.chars().any(char::is_whitespace) {
        return invalid("it contains spaces");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return invalid("it has no @");
    };
    if local.is_empty() || domain.contains('@') {
        return invalid("expected exactly one @ with a name before it");
    }
    if !domain.contains('.') || domain.split('.').any(str::is_empty) {
        return invalid("the domain must look like example.com");
    }
    Ok(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(valid_name("  Ada Lovelace ").unwrap(), "Ada Lovelace");
        assert_eq!(valid_name("   ").unwrap_err().status, 422);
        assert!(valid_name(&"x".repeat(MAX_NAME)).is_ok());
        assert!(valid_name(&"x".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn emails_are_checked_and_lowercased() {
        assert_eq!(valid_email(" Ada@Example.COM ").unwrap(), "ada@example.com");
        assert_eq!(
            valid_email("Rene\u{301}@example.com").unwrap(),
            valid_email("ren\u{e9}@example.com").unwrap()
        );
        for bad in [
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "ada@@example.com",
            "a da@example.com",
            "ada@example..com",
            "ada\0@example.com",
            "ada\u{202e}@example.com",
        ] {
            let problem = valid_email(bad).unwrap_err();
            assert_eq!(
                (problem.status, problem.extra["field"].as_str()),
                (422, Some("email")),
                "{bad}"
            );
        }
    }
}
