//! A logged-in vSphere session: service content, Login with the session cookie, re-login on
//! `NotAuthenticated` (SOAP) and on 401/403 to `/folder` or NFC reads (the endpoint's
//! [`Reauth`]), a keep-alive for long cycles, property retrieval with paging, task polling,
//! Logout.
//!
//! vCenter ends idle sessions (30 minutes by default) and an administrator may end one with
//! `SessionManager.TerminateSession`; a cycle that spends long in the transfer between SOAP
//! calls would lose its session. [`Session::keepalive`] sends `CurrentTime` at an interval,
//! as govmomi's `session/keepalive` handler does; whatever still expires is re-established on
//! the next call.

use crate::error::{Error, Result};
use crate::moref::MoRef;
use crate::soap::envelope as env;
use crate::soap::response::{
    self as resp, MAX_REPLY_BYTES, ObjectContent, ReplyError, ServiceContent, TaskInfo,
};
use crate::transport::{Endpoint, Reauth};
use crate::trust::TrustStore;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default keep-alive interval: well inside vCenter's default 30-minute idle timeout.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// `vsphere://USER@HOST[:PORT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceUrl {
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl SourceUrl {
    pub fn parse(s: &str) -> Result<Self> {
        let usage = |why: &str| {
            Error::Usage(format!(
                "source {s:?}: {why}; expected vsphere://USER@HOST[:PORT]"
            ))
        };
        let rest = s
            .strip_prefix("vsphere://")
            .ok_or_else(|| usage("not a vsphere:// URL"))?;
        let rest = rest.trim_end_matches('/');
        let (user, hostport) = rest.rsplit_once('@').ok_or_else(|| usage("no USER@"))?;
        if user.is_empty() {
            return Err(usage("empty user"));
        }
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h.split_once(']').ok_or_else(|| usage("unclosed ["))?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(usage("bad host"));
        }
        let port = match port {
            None => 443,
            Some(p) => p.parse().map_err(|_| usage("bad port"))?,
        };
        Ok(SourceUrl {
            user: user.to_string(),
            host,
            port,
        })
    }
}

/// A password that never shows in Debug output or logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What `connect` needs.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub url: SourceUrl,
    pub password: Secret,
    pub trust: TrustStore,
    pub max_parallel: usize,
    pub task_timeout: Duration,
}

/// Logs in on an endpoint; shared by the session (SOAP `NotAuthenticated`) and the endpoint
/// (401/403 on `/folder` and NFC), and serialised so that parallel readers that all see the
/// stale cookie cause one Login, not four.
struct Login {
    session_manager: MoRef,
    user: String,
    password: Secret,
    soap_action: String,
    /// `UserSession.key` of the current session.
    key: Mutex<Option<String>>,
    relogins: AtomicU32,
    lock: Mutex<()>,
}

impl Login {
    fn login(&self, ep: &Endpoint) -> Result<()> {
        ep.set_cookie(None);
        let body = env::login(&self.session_manager, &self.user, &self.password.0);
        let reply = ep.post_soap("Login", &self.soap_action, body, MAX_REPLY_BYTES)?;
        let key = resp::parse_login(&reply.body).map_err(|e| map_reply(ep, "Login", e))?;
        let cookie = reply.set_cookie.ok_or_else(|| {
            Error::malformed(
                &ep.authority(),
                "Login",
                "no vmware_soap_session cookie in the reply",
            )
        })?;
        ep.set_cookie(Some(cookie));
        *self.key.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(())
    }
}

impl Reauth for Login {
    fn relogin(&self, ep: &Endpoint, failed_cookie: Option<&str>) -> Result<()> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if ep.cookie().as_deref() != failed_cookie {
            return Ok(()); // someone else logged in since that request was sent
        }
        self.relogins.fetch_add(1, Ordering::Relaxed);
        self.login(ep)
    }
}

pub struct Session {
    ep: Arc<Endpoint>,
    sc: ServiceContent,
    login: Arc<Login>,
    pub trust: TrustStore,
    pub task_timeout: Duration,
}

impl Session {
    /// RetrieveServiceContent, then Login. Fails before any credential is sent when the
    /// certificate is not pinned.
    pub fn connect(opts: &ConnectOptions) -> Result<Session> {
        let pins = opts.trust.pins_for(&opts.url.host, opts.url.port);
        let ep = Arc::new(Endpoint::new(
            &opts.url.host,
            opts.url.port,
            pins,
            opts.max_parallel,
        )?);
        let reply = ep.post_soap(
            "RetrieveServiceContent",
            "\"urn:vim25\"",
            env::retrieve_service_content(),
            MAX_REPLY_BYTES,
        )?;
        let sc = resp::parse_service_content(&reply.body)
            .map_err(|e| map_reply(&ep, "RetrieveServiceContent", e))?;
        let login = Arc::new(Login {
            session_manager: sc.session_manager.clone(),
            user: opts.url.user.clone(),
            password: opts.password.clone(),
            soap_action: format!("\"urn:vim25/{}\"", sc.api_version),
            key: Mutex::new(None),
            relogins: AtomicU32::new(0),
            lock: Mutex::new(()),
        });
        login.login(&ep)?;
        ep.set_reauth(Some(login.clone()));
        Ok(Session {
            ep,
            sc,
            login,
            trust: opts.trust.clone(),
            task_timeout: opts.task_timeout,
        })
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.ep
    }

    pub fn service_content(&self) -> &ServiceContent {
        &self.sc
    }

    /// `true` for vCenter, `false` for a standalone ESXi host.
    pub fn is_vcenter(&self) -> bool {
        self.sc.api_type == "VirtualCenter"
    }

    /// How many times the session expired and was re-established.
    pub fn relogins(&self) -> u32 {
        self.login.relogins.load(Ordering::Relaxed)
    }

    /// `UserSession.key` of the current session (HasPrivilegeOnEntity, TerminateSession).
    pub fn session_key(&self) -> Option<String> {
        self.login
            .key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current session cookie (tests use it to end the session behind our back).
    pub fn cookie(&self) -> Option<String> {
        self.ep.cookie()
    }

    fn post(&self, method: &str, body: String) -> Result<Vec<u8>> {
        Ok(self
            .ep
            .post_soap(method, &self.login.soap_action, body, MAX_REPLY_BYTES)?
            .body)
    }

    /// Call `method`: build the envelope, parse the reply, and on `NotAuthenticated` log in
    /// again and retry once.
    pub fn call<T>(
        &self,
        method: &str,
        build: &dyn Fn(&ServiceContent) -> String,
        parse: &dyn Fn(&[u8]) -> std::result::Result<T, ReplyError>,
    ) -> Result<T> {
        let sent = self.ep.cookie();
        let first = self.post(method, build(&self.sc))?;
        match parse(&first) {
            Err(ReplyError::Fault { fault, .. }) if fault == "NotAuthenticated" => {
                tracing::info!(host = %self.ep.authority(), method, "session expired; logging in again");
                self.login.relogin(&self.ep, sent.as_deref())?;
                let again = self.post(method, build(&self.sc))?;
                parse(&again).map_err(|e| map_reply(&self.ep, method, e))
            }
            r => r.map_err(|e| map_reply(&self.ep, method, e)),
        }
    }

    /// RetrievePropertiesEx + ContinueRetrievePropertiesEx until no token is left. A page whose
    /// missingSet says NotAuthenticated (HTTP 200!) counts as an expired session.
    pub fn retrieve_all(
        &self,
        build: &dyn Fn(&ServiceContent) -> String,
    ) -> Result<Vec<ObjectContent>> {
        let parse = |b: &[u8]| {
            let r = resp::parse_retrieve_result(b, "RetrievePropertiesEx")?;
            if r.objects
                .iter()
                .any(|o| o.missing.iter().any(|m| m.fault == "NotAuthenticated"))
            {
                return Err(ReplyError::Fault {
                    fault: "NotAuthenticated".into(),
                    message: "missingSet: NotAuthenticated".into(),
                });
            }
            Ok(r)
        };
        let mut page = self.call("RetrievePropertiesEx", build, &parse)?;
        let mut out = std::mem::take(&mut page.objects);
        let mut pages = 1u32;
        while let Some(token) = page.token.take() {
            pages += 1;
            if pages > 100_000 {
                return Err(Error::malformed(
                    &self.ep.authority(),
                    "ContinueRetrievePropertiesEx",
                    "more than 100000 pages",
                ));
            }
            page = self.call(
                "ContinueRetrievePropertiesEx",
                &|sc| env::continue_retrieve_properties(&sc.property_collector, &token),
                &|b| resp::parse_retrieve_result(b, "ContinueRetrievePropertiesEx"),
            )?;
            out.append(&mut page.objects);
        }
        Ok(out)
    }

    /// Properties of one object.
    pub fn object_properties(&self, obj: &MoRef, paths: &[&str]) -> Result<ObjectContent> {
        let mut objs = self.retrieve_all(&|sc| {
            env::retrieve_object_properties(&sc.property_collector, obj, paths)
        })?;
        if objs.is_empty() {
            return Err(Error::NotFound {
                host: self.ep.authority(),
                what: obj.to_string(),
            });
        }
        Ok(objs.swap_remove(0))
    }

    /// Every object of `kind` under the root folder, with `paths`.
    pub fn all_of_kind(&self, kind: &str, paths: &[&str]) -> Result<Vec<ObjectContent>> {
        let view = self.call(
            "CreateContainerView",
            &|sc| env::create_container_view(&sc.view_manager, &sc.root_folder, kind, true),
            &|b| resp::parse_moref_reply(b, "CreateContainerView"),
        )?;
        let r = self.retrieve_all(&|sc| {
            env::retrieve_view_properties(&sc.property_collector, &view, kind, paths, 100)
        });
        let _ = self.call("DestroyView", &|_| env::destroy_view(&view), &|b| {
            resp::parse_empty_reply(b, "DestroyView")
        });
        r
    }

    /// Poll a task until `success` (returning its MoRef result) or `error`, within the timeout.
    pub fn wait_task(&self, task: &MoRef, what: &str) -> Result<Option<MoRef>> {
        let start = Instant::now();
        let mut wait = Duration::from_millis(50);
        loop {
            let o = self.object_properties(task, &["info"])?;
            let info: TaskInfo = match o.prop("info") {
                Some(v) => {
                    resp::parse_task_info(v).map_err(|e| map_reply(&self.ep, "task info", e))?
                }
                None => {
                    return Err(Error::malformed(
                        &self.ep.authority(),
                        "task info",
                        format!("task {task} has no info property"),
                    ));
                }
            };
            match info.state.as_str() {
                "success" => return Ok(info.result),
                "error" => {
                    return Err(Error::TaskFailed {
                        host: self.ep.authority(),
                        task: task.value.clone(),
                        what: what.to_string(),
                        fault: info.error_fault.unwrap_or_else(|| "UnknownFault".into()),
                        message: info.error_message.unwrap_or_default(),
                    });
                }
                _ => {}
            }
            if start.elapsed() > self.task_timeout {
                return Err(Error::Timeout {
                    host: self.ep.authority(),
                    what: format!("task {} ({what})", task.value),
                    seconds: self.task_timeout.as_secs(),
                });
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Run `work` while a thread sends `CurrentTime` every `interval` (re-logging in when the
    /// session was lost anyway). `None` runs `work` alone.
    pub fn keepalive<T>(&self, interval: Option<Duration>, work: impl FnOnce() -> T) -> T {
        let Some(interval) = interval else {
            return work();
        };
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let step = Duration::from_millis(50).min(interval);
                let mut since = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(step);
                    since += step;
                    if since < interval {
                        continue;
                    }
                    since = Duration::ZERO;
                    if let Err(e) = self.call("CurrentTime", &|_| env::current_time(), &|b| {
                        resp::parse_empty_reply(b, "CurrentTime")
                    }) {
                        tracing::warn!(host = %self.ep.authority(), error = %e, "session keep-alive failed");
                    }
                }
            });
            // Stop the thread however `work` ends (a panic too, or the scope would wait).
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _stop = Stop(&stop);
            work()
        })
    }

    /// `HasPrivilegeOnEntity` for this session: one answer per privilege, in order.
    pub fn has_privileges(&self, entity: &MoRef, privileges: &[&str]) -> Result<Vec<bool>> {
        let Some(am) = self.sc.authorization_manager.clone() else {
            return Err(Error::malformed(
                &self.ep.authority(),
                "RetrieveServiceContent",
                "the server names no AuthorizationManager; privileges cannot be checked",
            ));
        };
        let n = privileges.len();
        self.call(
            "HasPrivilegeOnEntity",
            &|_| {
                // The key is read per attempt: a re-login changes it.
                let key = self.session_key().unwrap_or_default();
                env::has_privilege_on_entity(&am, entity, &key, privileges)
            },
            &|b| resp::parse_bool_list(b, "HasPrivilegeOnEntity", n),
        )
    }

    /// Log out (session slots are limited). Errors are reported but harmless.
    pub fn logout(&self) -> Result<()> {
        let r = self.post("Logout", env::logout(&self.sc.session_manager))?;
        self.ep.set_reauth(None);
        self.ep.set_cookie(None);
        resp::parse_empty_reply(&r, "Logout").map_err(|e| map_reply(&self.ep, "Logout", e))
    }
}

/// Turn a reply error into a crate error naming host and method.
pub fn map_reply(ep: &Endpoint, method: &str, e: ReplyError) -> Error {
    match e {
        ReplyError::Fault { fault, message } => Error::Fault {
            host: ep.authority(),
            method: method.to_string(),
            fault,
            message,
        },
        ReplyError::Malformed(d) => Error::malformed(&ep.authority(), method, d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_urls() {
        let u = SourceUrl::parse("vsphere://admin@vc.local").unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port),
            ("admin", "vc.local", 443)
        );
        let u = SourceUrl::parse("vsphere://a@b.c@127.0.0.1:8443/").unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port),
            ("a@b.c", "127.0.0.1", 8443)
        );
        let u = SourceUrl::parse("vsphere://root@[::1]:9443").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9443));
        for bad in [
            "http://a@b",
            "vsphere://b",
            "vsphere://@b",
            "vsphere://a@b:x",
            "vsphere://a@",
        ] {
            assert!(SourceUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{:?}", Secret::new("pw".into())), "Secret(***)");
    }
}
