//! The keys and tokens a local run needs, standing in for what a cluster provides: an issuer
//! of users' tokens (an identity provider's part; only with `up --auth`) and an issuer of the
//! services' own tokens (the API server's part: projected ServiceAccount tokens). Keys are
//! Ed25519, made on first use and kept under the data folder, so tokens survive a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use msa_service_kit::signing::{Grant, SigningKey};

/// `iss` and `aud` of users' tokens in a local run.
pub const USER_ISSUER: &str = "msa-local";
pub const USER_AUDIENCE: &str = "msa";
/// `iss` of the services' tokens, the order service's subject, and the product service's
/// audience (the names a cluster would give: ServiceAccount and Service).
pub const SERVICE_ISSUER: &str = "msa-local-services";
pub const ORDER_SUBJECT: &str = "msa-local:order";
pub const PRODUCT_AUDIENCE: &str = "msa-product";
/// The product service's subject, and the order service's audience: the product service asks
/// the order service whether an order was cancelled before its sold stock comes back.
pub const PRODUCT_SUBJECT: &str = "msa-local:product";
pub const ORDER_AUDIENCE: &str = "msa-order";
/// Routes open without a token at the gateway: signing up and reading the catalogue.
pub const PUBLIC_ROUTES: &str = "POST /users,GET /products,GET /products/{id}";
/// How long a service's token lives; it is issued again well before.
pub const SERVICE_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
pub const SERVICE_TOKEN_RENEWAL: Duration = Duration::from_secs(600);

/// Where an issuer's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuer {
    pub key: PathBuf,
    pub jwks: PathBuf,
}

impl Issuer {
    /// The users' issuer under `data_dir`.
    pub fn users(data_dir: &Path) -> Self {
        Self::named(data_dir, "users")
    }

    pub fn services(data_dir: &Path) -> Self {
        Self::named(data_dir, "services")
    }

    fn named(data_dir: &Path, name: &str) -> Self {
        let dir = data_dir.join("identity");
        Issuer {
            key: dir.join(format!("{name}.key")),
            jwks: dir.join(format!("{name}.jwks.json")),
        }
    }

    /// The key, made when there is none yet; its JWKS is written when missing (issuing a token
    /// rewrites nothing the components read).
    pub fn key(&self) -> anyhow::Result<SigningKey> {
        let kid = self
            .key
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("key")
            .to_owned();
        let key = match std::fs::read(&self.key) {
            Ok(pkcs8) => SigningKey::from_pkcs8(&pkcs8, &kid)
                .with_context(|| format!("{} is not a key msa-local made", self.key.display()))?,
            Err(_) => {
                let key = SigningKey::generate(&kid)?;
                write_atomically(&self.key, key.pkcs8(), true)?;
                // A new key replaces any JWKS an older one left.
                write_atomically(&self.jwks, key.jwks().as_bytes(), false)?;
                key
            }
        };
        if !self.jwks.is_file() {
            write_atomically(&self.jwks, key.jwks().as_bytes(), false)?;
        }
        Ok(key)
    }

    /// The key when it exists (never makes one).
    pub fn existing_key(&self) -> anyhow::Result<SigningKey> {
        if !self.key.is_file() {
            anyhow::bail!(
                "no signing key at {}: start `msa-local up --auth` with this data folder first",
                self.key.display()
            );
        }
        self.key()
    }
}

/// The order service's token file (for the product service).
pub fn order_token(data_dir: &Path) -> PathBuf {
    data_dir.join("identity").join("order.token")
}

/// The product service's token file (for the order service).
pub fn product_token(data_dir: &Path) -> PathBuf {
    data_dir.join("identity").join("product.token")
}

/// Issues each service's token for the peer it calls into its file: the order service's for
/// the product service, the product service's for the order service.
pub fn issue_service_tokens(data_dir: &Path) -> anyhow::Result<()> {
    let key = Issuer::services(data_dir).key()?;
    for (subject, audience, file) in [
        (ORDER_SUBJECT, PRODUCT_AUDIENCE, order_token(data_dir)),
        (PRODUCT_SUBJECT, ORDER_AUDIENCE, product_token(data_dir)),
    ] {
        let token = key.issue(&Grant {
            issuer: SERVICE_ISSUER,
            audience,
            subject,
            roles: &[],
            lifetime: SERVICE_TOKEN_LIFETIME,
        })?;
        write_atomically(&file, token.as_bytes(), true)?;
    }
    Ok(())
}

/// A user's token from the users' issuer under `data_dir`.
pub fn user_token(
    data_dir: &Path,
    subject: &str,
    admin: bool,
    lifetime: Duration,
) -> anyhow::Result<String> {
    if subject.is_empty()
        || subject.len() > 255
        || !subject.bytes().all(|b| (0x21..=0x7e).contains(&b))
    {
        anyhow::bail!("--user must be 1-255 visible ASCII characters (a user's id)");
    }
    let roles: &[&str] = if admin { &["admin"] } else { &[] };
    Issuer::users(data_dir).existing_key()?.issue(&Grant {
        issuer: USER_ISSUER,
        audience: USER_AUDIENCE,
        subject,
        roles,
        lifetime,
    })
}

/// Writes through a temporary file and a rename, so a reader never sees half a key or token
/// (or half an address list); secrets are readable by their owner only.
pub(crate) fn write_atomically(path: &Path, contents: &[u8], secret: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().context("a file in a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::io::Write::write_all(&mut file, contents)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("msa-identity-{}", uuid::Uuid::new_v4()));
        assert!(user_token(&dir, "a", false, Duration::from_secs(60)).is_err());
        let first = Issuer::users(&dir).key().unwrap();
        let again = Issuer::users(&dir).key().unwrap();
        assert_eq!(
            first.pkcs8(),
            again.pkcs8(),
            "the key is kept, not made again"
        );
        let mode = std::fs::metadata(&Issuer::users(&dir).key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(user_token(&dir, "a", true, Duration::from_secs(60)).is_ok());
        issue_service_tokens(&dir).unwrap();
        for token in [order_token(&dir), product_token(&dir)] {
            assert_eq!(
                std::fs::read_to_string(token).unwrap().split('.').count(),
                3
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
