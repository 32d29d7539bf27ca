//! Signed device tokens.
//!
//! A token is `v1|<user>|<device>|<expires_at_ms>|<hex HMAC-SHA256>` where
//! the MAC covers everything before the last `|` under the cluster's token
//! key. Ids never contain `|` (core id rules forbid it), so the fields
//! split unambiguously. Verification is constant-time in the MAC.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::AUTHORIZATION_HEADER;

const TOKEN_VERSION: &str = "v1";

/// The user and device a verified token names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceIdentity {
    pub user_id: String,
    pub device_id: String,
}

/// The reason a token was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the {AUTHORIZATION_HEADER} header is missing; send `authorization: Bearer <token>` from Register")]
    Missing,
    #[error("the {AUTHORIZATION_HEADER} header is not `Bearer <token>`")]
    NotBearer,
    #[error("the token is malformed; use the token Register or LinkDevice returned")]
    Malformed,
    #[error("the token's signature is invalid; it was not issued by this cluster")]
    Forged,
    #[error("the token expired at {expires_at_ms} ms since the epoch; register the device again")]
    Expired { expires_at_ms: u64 },
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> tonic::Status {
        tonic::Status::unauthenticated(error.to_string())
    }
}

/// Issues and verifies device tokens with one key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl TokenSigner {
    pub fn new(key: Vec<u8>) -> Self {
        TokenSigner { key }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    /// Returns a token for `identity` valid until `expires_at_ms`.
    pub fn issue(&self, identity: &DeviceIdentity, expires_at_ms: u64) -> String {
        let payload = format!(
            "{TOKEN_VERSION}|{}|{}|{expires_at_ms}",
            identity.user_id, identity.device_id
        );
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        format!("{payload}|{signature}")
    }

    /// Checks `token` and returns the identity it names.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<DeviceIdentity, AuthError> {
        let (payload, signature) = token.rsplit_once('|').ok_or(AuthError::Malformed)?;
        let signature = hex::decode(signature).map_err(|_| AuthError::Malformed)?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::Forged)?;

        let fields: Vec<&str> = payload.split('|').collect();
        let [version, user_id, device_id, expires_at_ms] = fields.as_slice() else {
            return Err(AuthError::Malformed);
        };
        if *version != TOKEN_VERSION || user_id.is_empty() || device_id.is_empty() {
            return Err(AuthError::Malformed);
        }
        let expires_at_ms: u64 = expires_at_ms.parse().map_err(|_| AuthError::Malformed)?;
        if expires_at_ms <= now_ms {
            return Err(AuthError::Expired { expires_at_ms });
        }
        Ok(DeviceIdentity {
            user_id: user_id.to_string(),
            device_id: device_id.to_string(),
        })
    }

    /// Verifies the bearer token in a request's metadata.
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        now_ms: u64,
    ) -> Result<DeviceIdentity, AuthError> {
        let value = metadata
            .get(AUTHORIZATION_HEADER)
            .ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
        let token = value.strip_prefix("Bearer ").ok_or(AuthError::NotBearer)?;
        self.verify(token.trim(), now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> DeviceIdentity {
        DeviceIdentity {
            user_id: "alice".into(),
            device_id: "phone".into(),
        }
    }

    #[test]
    fn issued_token_verifies() {
        let signer = TokenSigner::new(b"key".to_vec());
        let token = signer.issue(&alice(), 2_000);
        assert_eq!(signer.verify(&token, 1_000), Ok(alice()));
    }

    #[test]
    fn token_from_other_key_is_forged() {
        let token = TokenSigner::new(b"other".to_vec()).issue(&alice(), 2_000);
        let signer = TokenSigner::new(b"key".to_vec());
        assert_eq!(signer.verify(&token, 1_000), Err(AuthError::Forged));
    }

    #[test]
    fn edited_user_is_forged() {
        let signer = TokenSigner::new(b"key".to_vec());
        let token = signer
            .issue(&alice(), 2_000)
            .replacen("alice", "mallory", 1);
        assert_eq!(signer.verify(&token, 1_000), Err(AuthError::Forged));
    }

    #[test]
    fn expired_token_is_rejected() {
        let signer = TokenSigner::new(b"key".to_vec());
        let token = signer.issue(&alice(), 2_000);
        assert_eq!(
            signer.verify(&token, 2_000),
            Err(AuthError::Expired {
                expires_at_ms: 2_000
            })
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let signer = TokenSigner::new(b"key".to_vec());
        assert_eq!(signer.verify("nonsense", 0), Err(AuthError::Malformed));
        assert_eq!(signer.verify("a|zz", 0), Err(AuthError::Malformed));
    }

    #[test]
    fn missing_header_is_reported() {
        let signer = TokenSigner::new(b"key".to_vec());
        let metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(signer.authenticate(&metadata, 0), Err(AuthError::Missing));
    }
}
