//! NTLM (NTLMv2, through the `sspi` crate) for WinRM over HTTPS: the client side of the
//! three-leg `Authorization: Negotiate <base64>` handshake. Over HTTPS no message sealing is
//! needed (WinRM seals only over HTTP/5985); the handshake must stay on one TCP connection,
//! which the caller ensures. The server side (the simulator's) is in `godwit-hyperv-sim`.

use sspi::{
    AuthIdentity, BufferType, ClientRequestFlags, CredentialUse, DataRepresentation, Ntlm,
    SecurityBuffer, SecurityStatus, Sspi, SspiImpl, Username,
};

/// NTLM message type (byte 8 of a token): 1 NEGOTIATE, 2 CHALLENGE, 3 AUTHENTICATE.
pub fn message_type(token: &[u8]) -> Option<u8> {
    if token.len() >= 12 && token.starts_with(b"NTLMSSP\0") {
        Some(token[8])
    } else {
        None
    }
}

/// The sspi identity of `user` (`user`, `DOMAIN\user` or `user@domain`).
pub fn identity(user: &str, password: &str) -> Result<AuthIdentity, String> {
    let username = Username::parse(user).map_err(|e| format!("user name {user:?}: {e}"))?;
    Ok(AuthIdentity {
        username,
        password: password.to_string().into(),
    })
}

/// The client side of one handshake.
pub struct NtlmClient {
    ntlm: Ntlm,
    creds: Option<sspi::AuthIdentityBuffers>,
}

impl std::fmt::Debug for NtlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmClient").finish_non_exhaustive()
    }
}

impl NtlmClient {
    /// `user` may be `user`, `DOMAIN\user` or `user@domain`.
    pub fn new(user: &str, password: &str) -> Result<Self, String> {
        let id = identity(user, password)?;
        let mut ntlm = Ntlm::new();
        let creds = ntlm
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Outbound)
            .with_auth_data(&id)
            .execute(&mut ntlm)
            .map_err(|e| format!("NTLM credentials: {e}"))?
            .credentials_handle;
        Ok(NtlmClient { ntlm, creds })
    }

    fn step(&mut self, input: Option<&[u8]>) -> Result<Vec<u8>, String> {
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let mut input_buf = input.map(|i| vec![SecurityBuffer::new(i.to_vec(), BufferType::Token)]);
        let mut builder = self
            .ntlm
            .initialize_security_context()
            .with_credentials_handle(&mut self.creds)
            .with_context_requirements(ClientRequestFlags::ALLOCATE_MEMORY)
            .with_target_data_representation(DataRepresentation::Native)
            .with_output(&mut output);
        if let Some(i) = input_buf.as_mut() {
            builder = builder.with_input(i);
        }
        let result = self
            .ntlm
            .initialize_security_context_impl(&mut builder)
            .and_then(|mut r| r.resolve_to_result())
            .map_err(|e| format!("NTLM: {e}"))?;
        if matches!(
            result.status,
            SecurityStatus::CompleteAndContinue | SecurityStatus::CompleteNeeded
        ) {
            self.ntlm
                .complete_auth_token(&mut output)
                .map_err(|e| format!("NTLM: {e}"))?;
        }
        Ok(output
            .into_iter()
            .next()
            .map(|b| b.buffer)
            .unwrap_or_default())
    }

    /// Leg 1: the NEGOTIATE token.
    pub fn negotiate(&mut self) -> Result<Vec<u8>, String> {
        self.step(None)
    }

    /// Leg 3: the AUTHENTICATE token answering the server's CHALLENGE.
    pub fn authenticate(&mut self, challenge: &[u8]) -> Result<Vec<u8>, String> {
        if message_type(challenge) != Some(2) {
            return Err("the server's token is not an NTLM CHALLENGE".into());
        }
        self.step(Some(challenge))
    }
}
