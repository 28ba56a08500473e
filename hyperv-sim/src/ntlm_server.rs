//! The server side of NTLM (NTLMv2 through `sspi`, the response checked by [`crate::ntlm_verify`])
//! for the simulator's `Authorization: Negotiate` handshake.

use godwit_hyperv::ntlm::{identity, message_type};
use sspi::{
    BufferType, CredentialUse, DataRepresentation, Ntlm, SecurityBuffer, SecurityStatus,
    ServerRequestFlags, Sspi, SspiImpl,
};

/// NEGOTIATE flags sspi's server insists on but Windows does not: NTLMSSP_REQUEST_TARGET (0x4)
/// and NTLMSSP_NEGOTIATE_NTLM (0x200). Go's NTLM client (Azure/go-ntlmssp, used by the
/// masterzen WinRM client) omits both and real Windows hosts accept it, so the simulator adds
/// them to a NEGOTIATE that lacks them before sspi sees it. Only a NEGOTIATE without a MIC
/// is ever changed that way (a client that sends a MIC, like pyspnego, sets both bits already).
pub const LENIENT_NEGOTIATE_FLAGS: u32 = 0x4 | 0x200;

/// A NEGOTIATE (type 1) with [`LENIENT_NEGOTIATE_FLAGS`] set; other tokens as they are.
pub fn lenient_negotiate(token: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if message_type(token) != Some(1) || token.len() < 16 {
        return std::borrow::Cow::Borrowed(token);
    }
    let flags = u32::from_le_bytes([token[12], token[13], token[14], token[15]]);
    if flags & LENIENT_NEGOTIATE_FLAGS == LENIENT_NEGOTIATE_FLAGS {
        return std::borrow::Cow::Borrowed(token);
    }
    let mut t = token.to_vec();
    t[12..16].copy_from_slice(&(flags | LENIENT_NEGOTIATE_FLAGS).to_le_bytes());
    std::borrow::Cow::Owned(t)
}

/// The server side of one handshake (simulator).
pub struct NtlmServer {
    ntlm: Ntlm,
    creds: Option<sspi::AuthIdentityBuffers>,
    user: String,
    password: String,
    /// The server challenge sent, for [`crate::ntlm_verify`].
    challenge: Option<[u8; 8]>,
}

impl std::fmt::Debug for NtlmServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmServer").finish_non_exhaustive()
    }
}

/// What the server made of a client token.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerStep {
    /// Send this CHALLENGE back (HTTP 401).
    Challenge(Vec<u8>),
    /// The client proved it knows the password.
    Authenticated,
}

impl NtlmServer {
    pub fn new(user: &str, password: &str) -> Result<Self, String> {
        let id = identity(user, password)?;
        let mut ntlm = Ntlm::new();
        let creds = ntlm
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Inbound)
            .with_auth_data(&id)
            .execute(&mut ntlm)
            .map_err(|e| format!("NTLM credentials: {e}"))?
            .credentials_handle;
        Ok(NtlmServer {
            ntlm,
            creds,
            user: user.to_string(),
            password: password.to_string(),
            challenge: None,
        })
    }

    /// Feed a client token (NEGOTIATE, then AUTHENTICATE).
    pub fn step(&mut self, token: &[u8]) -> Result<ServerStep, String> {
        let token = lenient_negotiate(token);
        // sspi proves the password only through a MIC, which not every client sends: check
        // the NTLMv2 response ourselves first, as Windows does.
        if message_type(&token) == Some(3) {
            let ch = self
                .challenge
                .ok_or("NTLM: AUTHENTICATE before any CHALLENGE")?;
            crate::ntlm_verify::verify_authenticate(&token, &ch, &self.user, &self.password)
                .map_err(|e| e.to_string())?;
        }
        let mut input = vec![SecurityBuffer::new(token.to_vec(), BufferType::Token)];
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let builder = self
            .ntlm
            .accept_security_context()
            .with_credentials_handle(&mut self.creds)
            .with_context_requirements(ServerRequestFlags::ALLOCATE_MEMORY)
            .with_target_data_representation(DataRepresentation::Native)
            .with_input(&mut input)
            .with_output(&mut output);
        let result = self
            .ntlm
            .accept_security_context_impl(builder)
            .and_then(|mut r| r.resolve_to_result())
            .map_err(|e| format!("NTLM: {e}"))?;
        match result.status {
            SecurityStatus::ContinueNeeded => {
                let ch = output
                    .into_iter()
                    .next()
                    .map(|b| b.buffer)
                    .unwrap_or_default();
                self.challenge =
                    Some(crate::ntlm_verify::server_challenge(&ch).map_err(|e| e.to_string())?);
                Ok(ServerStep::Challenge(ch))
            }
            SecurityStatus::CompleteNeeded | SecurityStatus::CompleteAndContinue => {
                self.ntlm
                    .complete_auth_token(&mut output)
                    .map_err(|e| format!("NTLM: {e}"))?;
                Ok(ServerStep::Authenticated)
            }
            SecurityStatus::Ok => Ok(ServerStep::Authenticated),
            other => Err(format!("NTLM: unexpected status {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use godwit_hyperv::ntlm::NtlmClient;

    #[test]
    fn a_negotiate_without_the_flags_sspi_wants_gets_them_and_nothing_else_changes() {
        // go-ntlmssp's NEGOTIATE: TARGET_INFO | 56 | 128 | UNICODE | EXTENDED_SESSION_SECURITY.
        let mut go = b"NTLMSSP\0\x01\0\0\0".to_vec();
        go.extend_from_slice(&0xa088_0001u32.to_le_bytes());
        go.extend_from_slice(&[0; 16]);
        let fixed = lenient_negotiate(&go);
        assert_eq!(&fixed[..12], &go[..12]);
        assert_eq!(
            u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]),
            0xa088_0001 | 0x4 | 0x200
        );
        assert_eq!(&fixed[16..], &go[16..]);
        // Ours (and pyspnego's) already carry them: untouched, not copied.
        let ours = NtlmClient::new("Administrator", "pw")
            .unwrap()
            .negotiate()
            .unwrap();
        assert!(matches!(
            lenient_negotiate(&ours),
            std::borrow::Cow::Borrowed(_)
        ));
        // Not a NEGOTIATE, or too short: as it is.
        assert!(matches!(
            lenient_negotiate(b"NTLMSSP\0\x03\0\0\0abcd"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert!(matches!(
            lenient_negotiate(b"NTLMSSP\0\x01"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    fn handshake(client_pw: &str) -> Result<ServerStep, String> {
        let mut c = NtlmClient::new("Administrator", client_pw)?;
        let mut s = NtlmServer::new("Administrator", "S3cret")?;
        let neg = c.negotiate()?;
        assert_eq!(message_type(&neg), Some(1));
        let ServerStep::Challenge(ch) = s.step(&neg)? else {
            panic!("no challenge");
        };
        let auth = c.authenticate(&ch)?;
        assert_eq!(message_type(&auth), Some(3));
        s.step(&auth)
    }

    #[test]
    fn right_password_authenticates_and_wrong_one_does_not() {
        assert_eq!(handshake("S3cret"), Ok(ServerStep::Authenticated));
        assert!(handshake("wrong").is_err());
        assert_eq!(message_type(b"NTLMSSP\0\x02\0\0\0"), Some(2));
        assert_eq!(message_type(b"garbage"), None);
        let mut c = NtlmClient::new("a", "b").unwrap();
        assert!(c.authenticate(b"NTLMSSP\0\x01\0\0\0").is_err());
    }
}
