//! Text a client stores (names, descriptions, emails): trimmed, bounded, and free of characters
//! that forge what a reader sees — control characters (NUL, escape sequences, bell) and the
//! bidirectional overrides and isolates that reorder text on screen (the "Trojan Source" class).
//! Emails are also brought to Unicode NFC, so two spellings that look the same are one address.

use unicode_normalization::UnicodeNormalization;

use crate::Problem;

/// Whether `c` may not appear in stored text. `multiline` allows line feeds and tabs.
fn forbidden(c: char, multiline: bool) -> bool {
    if multiline && matches!(c, '\n' | '\t') {
        return false;
    }
    c.is_control()
        || matches!(c,
            '\u{202A}'..='\u{202E}' // embeddings and overrides
            | '\u{2066}'..='\u{2069}' // isolates
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
        )
}

/// What a field accepts.
#[derive(Clone, Copy, Debug)]
pub struct TextRule {
    pub field: &'static str,
    /// At least one character once trimmed.
    pub required: bool,
    pub max_chars: usize,
    /// Line feeds and tabs allowed (descriptions).
    pub multiline: bool,
}

impl TextRule {
    pub const fn line(field: &'static str, max_chars: usize) -> Self {
        TextRule {
            field,
            required: true,
            max_chars,
            multiline: false,
        }
    }

    /// The trimmed text, or a 422 naming the field and the first offending character.
    pub fn check(&self, raw: &str) -> Result<String, Problem> {
        let field = self.field;
        let text = raw.trim();
        if self.required && text.is_empty() {
            return Err(Problem::invalid(
                field,
                format!("{field} must not be empty"),
            ));
        }
        if text.chars().count() > self.max_chars {
            return Err(Problem::invalid(
                field,
                format!("{field} must be at most {} characters", self.max_chars),
            ));
        }
        if let Some((at, c)) = text
            .chars()
            .enumerate()
            .find(|(_, c)| forbidden(*c, self.multiline))
        {
            return Err(Problem::invalid(
                field,
                format!(
                    "{field} contains the control or text-direction character U+{:04X} at position {at}; remove it",
                    u32::from(c)
                ),
            ));
        }
        Ok(text.to_owned())
    }
}

/// An email as stored and compared: lowercase, then NFC (so `É` typed as E + combining accent
/// and as one code point, in either case, are the same address).
pub fn normalise_email(raw: &str) -> String {
    raw.trim().to_lowercase().nfc().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_and_direction_characters_are_refused() {
        let rule = TextRule::line("name", 20);
        for bad in [
            "a\0b",
            "a\x1b[31mb",
            "bell\x07",
            "evil\u{202E}gnp.exe",
            "x\u{2066}y",
            "a\nb",
            "a\u{85}b",
        ] {
            let problem = rule.check(bad).unwrap_err();
            assert_eq!(
                (problem.status, problem.extra["field"].as_str()),
                (422, Some("name")),
                "{bad:?}"
            );
        }
        assert_eq!(rule.check("  Zoë Ω 漢字 ").unwrap(), "Zoë Ω 漢字");
        assert!(rule.check("   ").is_err());
        assert!(rule.check(&"x".repeat(21)).is_err());
        let description = TextRule {
            required: false,
            multiline: true,
            ..TextRule::line("description", 100)
        };
        assert_eq!(
            description.check("line 1\n\tline 2").unwrap(),
            "line 1\n\tline 2"
        );
        assert_eq!(description.check("").unwrap(), "");
        assert!(description.check("a\rb").is_err());
    }

    #[test]
    fn emails_that_look_the_same_are_the_same() {
        let composed = "ren\u{e9}@example.com";
        let decomposed = "rene\u{301}@example.com";
        assert_ne!(composed, decomposed);
        assert_eq!(normalise_email(decomposed), normalise_email(composed));
        assert_eq!(normalise_email(" RENÉ@Example.COM "), composed);
    }

    proptest! {
        /// Whatever a client sends, the answer is the trimmed text without a forbidden
        /// character, or a 422 — never a panic.
        #[test]
        fn accepted_text_is_clean(raw in any::<String>()) {
            let rule = TextRule::line("name", 50);
            match rule.check(&raw) {
                Ok(text) => {
                    prop_assert!(!text.is_empty() && text.chars().count() <= 50);
                    prop_assert!(!text.chars().any(|c| forbidden(c, false)));
                }
                Err(problem) => prop_assert_eq!(problem.status, 422),
            }
        }

        #[test]
        fn email_normalisation_is_idempotent(raw in any::<String>()) {
            let once = normalise_email(&raw);
            prop_assert_eq!(normalise_email(&once), once.clone());
        }
    }
}
