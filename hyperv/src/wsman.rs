//! WS-Management / WinRS shell envelopes, sans I/O: builders and parsers for the requests
//! (Create, Command, Receive, Signal, Delete) and their replies, including SOAP faults.
//! The shapes follow what pywinrm 0.5 sends and what Windows answers
//! (`../shared/research/winrm-hyperv.md` §1). Every parser takes `&str` and has an encoder.

use crate::xml::{self, Element, XmlError, escape};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

pub const NS_SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const NS_ADDRESSING: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
pub const NS_WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
pub const NS_SHELL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell";
pub const NS_TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer";
pub const NS_WSMAN_FAULT: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault";
pub const RESOURCE_CMD: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";
pub const STATE_DONE: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done";
pub const STATE_RUNNING: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running";
pub const SIGNAL_TERMINATE: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate";
/// WSManFault code for "the operation timed out" (0x80338029): Receive again.
pub const CODE_OPERATION_TIMEOUT: u32 = 2_150_858_793;
/// WSManFault code for "the shell was not found" (0x8033805B).
pub const CODE_SHELL_NOT_FOUND: u32 = 2_150_858_843;
/// WSManFault code of "Access is denied" (ERROR_ACCESS_DENIED): the account is not allowed to
/// use WinRM remotely (not a local Administrator, or UAC filters its token).
pub const CODE_ACCESS_DENIED: u32 = 5;
/// wsman:QuotaLimit faults (MS-WSMV 3.1.4.5.2.1): ERROR_WSMAN_QUOTA_MAX_SHELLS (MaxShellsPerUser),
/// ERROR_WSMAN_QUOTA_MAX_OPERATIONS (MaxConcurrentOperationsPerUser),
/// ERROR_WSMAN_QUOTA_MAX_SHELLUSERS (MaxConcurrentUsers), ERROR_WSMAN_QUOTA_LIMIT; values from
/// Windows' wsman.h (windows-docs-rs `Win32::System::RemoteManagement` constants).
pub const CODE_QUOTA_MAX_SHELLS: u32 = 2_150_859_173;
pub const CODE_QUOTA_MAX_OPERATIONS: u32 = 2_150_859_174;
pub const CODE_QUOTA_MAX_SHELLUSERS: u32 = 2_150_859_179;
pub const CODE_QUOTA_LIMIT: u32 = 2_150_858_815;
/// What pywinrm sends and Windows accepts by default (150 KiB).
pub const DEFAULT_MAX_ENVELOPE_SIZE: u32 = 153_600;

/// A WS-Addressing message id (`uuid:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId(pub String);

impl MessageId {
    pub fn random() -> Self {
        MessageId(format!(
            "uuid:{}",
            uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase()
        ))
    }
}

/// A WinRS shell id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellId(pub String);

/// A WinRS command id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandId(pub String);

/// Seconds for `w:OperationTimeout` (`PT{n}S`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutSecs(pub u32);

/// Which WS-Man action a request performs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    CreateShell {
        codepage: u32,
    },
    Command {
        command: String,
        arguments: Vec<String>,
    },
    Receive {
        command_id: CommandId,
    },
    Signal {
        command_id: CommandId,
    },
    Delete,
}

impl Body {
    pub fn action_uri(&self) -> &'static str {
        match self {
            Body::CreateShell { .. } => "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create",
            Body::Command { .. } => {
                "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command"
            }
            Body::Receive { .. } => {
                "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive"
            }
            Body::Signal { .. } => "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal",
            Body::Delete => "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete",
        }
    }
}

/// One request envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub message_id: MessageId,
    pub max_envelope_size: u32,
    pub operation_timeout: TimeoutSecs,
    /// Every action except Create names its shell.
    pub shell_id: Option<ShellId>,
    pub body: Body,
}

/// Why an envelope could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("malformed envelope: {0}")]
    Xml(#[from] XmlError),
    #[error("malformed envelope: {0}")]
    Shape(String),
}

fn shape(s: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Shape(s.into())
}

const ENVELOPE_OPEN: &str = concat!(
    r#"<env:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance""#,
    r#" xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing""#,
    r#" xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd""#,
    r#" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell">"#
);

impl Request {
    pub fn new(body: Body, shell_id: Option<ShellId>, timeout: TimeoutSecs) -> Self {
        Request {
            message_id: MessageId::random(),
            max_envelope_size: DEFAULT_MAX_ENVELOPE_SIZE,
            operation_timeout: timeout,
            shell_id,
            body,
        }
    }

    /// The SOAP envelope, as pywinrm lays it out.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(2048);
        s.push_str(r#"<?xml version="1.0" encoding="utf-8"?>"#);
        s.push_str(ENVELOPE_OPEN);
        s.push_str("<env:Header>");
        s.push_str("<a:To>http://windows-host:5985/wsman</a:To>");
        s.push_str(r#"<a:ReplyTo><a:Address mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo>"#);
        s.push_str(&format!(
            r#"<w:MaxEnvelopeSize mustUnderstand="true">{}</w:MaxEnvelopeSize>"#,
            self.max_envelope_size
        ));
        s.push_str(&format!(
            "<a:MessageID>{}</a:MessageID>",
            escape(&self.message_id.0)
        ));
        s.push_str(r#"<w:Locale mustUnderstand="false" xml:lang="en-US"/><p:DataLocale mustUnderstand="false" xml:lang="en-US"/>"#);
        s.push_str(&format!(
            "<w:OperationTimeout>PT{}S</w:OperationTimeout>",
            self.operation_timeout.0
        ));
        s.push_str(&format!(
            r#"<w:ResourceURI mustUnderstand="true">{RESOURCE_CMD}</w:ResourceURI>"#
        ));
        s.push_str(&format!(
            r#"<a:Action mustUnderstand="true">{}</a:Action>"#,
            self.body.action_uri()
        ));
        if let Some(id) = &self.shell_id {
            s.push_str(&format!(
                r#"<w:SelectorSet><w:Selector Name="ShellId">{}</w:Selector></w:SelectorSet>"#,
                escape(&id.0)
            ));
        }
        match &self.body {
            Body::CreateShell { codepage } => s.push_str(&format!(
                r#"<w:OptionSet><w:Option Name="WINRS_NOPROFILE">FALSE</w:Option><w:Option Name="WINRS_CODEPAGE">{codepage}</w:Option></w:OptionSet>"#
            )),
            Body::Command { .. } => s.push_str(
                r#"<w:OptionSet><w:Option Name="WINRS_CONSOLEMODE_STDIN">TRUE</w:Option><w:Option Name="WINRS_SKIP_CMD_SHELL">FALSE</w:Option></w:OptionSet>"#,
            ),
            _ => {}
        }
        s.push_str("</env:Header><env:Body>");
        match &self.body {
            Body::CreateShell { .. } => s.push_str(
                "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>",
            ),
            Body::Command { command, arguments } => {
                s.push_str("<rsp:CommandLine><rsp:Command>");
                s.push_str(&escape(command));
                s.push_str("</rsp:Command>");
                if !arguments.is_empty() {
                    s.push_str("<rsp:Arguments>");
                    s.push_str(&escape(&arguments.join(" ")));
                    s.push_str("</rsp:Arguments>");
                }
                s.push_str("</rsp:CommandLine>");
            }
            Body::Receive { command_id } => s.push_str(&format!(
                r#"<rsp:Receive><rsp:DesiredStream CommandId="{}">stdout stderr</rsp:DesiredStream></rsp:Receive>"#,
                escape(&command_id.0)
            )),
            Body::Signal { command_id } => s.push_str(&format!(
                r#"<rsp:Signal CommandId="{}"><rsp:Code>{SIGNAL_TERMINATE}</rsp:Code></rsp:Signal>"#,
                escape(&command_id.0)
            )),
            Body::Delete => {}
        }
        s.push_str("</env:Body></env:Envelope>");
        s
    }
}

fn header_and_body(root: &Element) -> Result<(&Element, &Element), EnvelopeError> {
    if root.name != "Envelope" {
        return Err(shape(format!(
            "root element is <{}>, not <Envelope>",
            root.name
        )));
    }
    let body = root.child("Body").ok_or_else(|| shape("no <Body>"))?;
    let header = root.child("Header").ok_or_else(|| shape("no <Header>"))?;
    Ok((header, body))
}

fn parse_timeout(t: &str) -> Result<TimeoutSecs, EnvelopeError> {
    // PT20S, PT20.000S, PT60.5S: keep whole seconds.
    let inner = t
        .trim()
        .strip_prefix("PT")
        .and_then(|r| r.strip_suffix('S'))
        .ok_or_else(|| shape(format!("OperationTimeout {t:?} is not PT<n>S")))?;
    let whole = inner.split('.').next().unwrap_or("");
    whole
        .parse::<u32>()
        .map(TimeoutSecs)
        .map_err(|_| shape(format!("OperationTimeout {t:?} is not PT<n>S")))
}

/// Parse a request envelope (the simulator's side). Unknown actions are an error naming them.
pub fn parse_request(text: &str) -> Result<Request, EnvelopeError> {
    let root = xml::parse(text)?;
    let (header, body) = header_and_body(&root)?;
    let action = header
        .child("Action")
        .map(|a| a.text.trim().to_string())
        .ok_or_else(|| shape("no <Action> in the header"))?;
    let message_id = MessageId(
        header
            .child("MessageID")
            .map(|m| m.text.trim().to_string())
            .filter(|m| !m.is_empty())
            .ok_or_else(|| shape("no <MessageID> in the header"))?,
    );
    let max_envelope_size = match header.child("MaxEnvelopeSize") {
        Some(m) => m
            .text
            .trim()
            .parse::<u32>()
            .map_err(|_| shape(format!("MaxEnvelopeSize {:?} is not a number", m.text)))?,
        None => DEFAULT_MAX_ENVELOPE_SIZE,
    };
    let operation_timeout = match header.child("OperationTimeout") {
        Some(t) => parse_timeout(&t.text)?,
        None => TimeoutSecs(60),
    };
    let shell_id = header
        .find("Selector")
        .filter(|s| s.attr("Name") == Some("ShellId"))
        .map(|s| ShellId(s.text.trim().to_string()));
    let command_id_attr = |e: &Element, what: &str| -> Result<CommandId, EnvelopeError> {
        e.attr("CommandId")
            .map(|c| CommandId(c.to_string()))
            .ok_or_else(|| shape(format!("<{what}> has no CommandId")))
    };
    let body = match action.rsplit('/').next().unwrap_or("") {
        "Create" => {
            let codepage = header
                .descendants()
                .into_iter()
                .find(|e| e.name == "Option" && e.attr("Name") == Some("WINRS_CODEPAGE"))
                .map(|e| e.text.trim().parse::<u32>())
                .transpose()
                .map_err(|_| shape("WINRS_CODEPAGE is not a number"))?
                .unwrap_or(437);
            Body::CreateShell { codepage }
        }
        "Command" => {
            let line = body
                .find("CommandLine")
                .ok_or_else(|| shape("Command without <CommandLine>"))?;
            let command = line
                .child("Command")
                .map(|c| c.text.trim().to_string())
                .ok_or_else(|| shape("<CommandLine> without <Command>"))?;
            let arguments = line
                .children
                .iter()
                .filter(|c| c.name == "Arguments")
                .flat_map(|c| c.text.split_whitespace().map(str::to_string))
                .collect();
            Body::Command { command, arguments }
        }
        "Receive" => {
            let d = body
                .find("DesiredStream")
                .ok_or_else(|| shape("Receive without <DesiredStream>"))?;
            Body::Receive {
                command_id: command_id_attr(d, "DesiredStream")?,
            }
        }
        "Signal" => {
            let s = body
                .find("Signal")
                .ok_or_else(|| shape("Signal without <Signal>"))?;
            Body::Signal {
                command_id: command_id_attr(s, "Signal")?,
            }
        }
        "Delete" => Body::Delete,
        _ => return Err(shape(format!("unsupported action {action:?}"))),
    };
    if !matches!(body, Body::CreateShell { .. }) && shell_id.is_none() {
        return Err(shape(format!("{action} without a ShellId selector")));
    }
    Ok(Request {
        message_id,
        max_envelope_size,
        operation_timeout,
        shell_id,
        body,
    })
}

/// Standard output or standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamName {
    Stdout,
    Stderr,
}

impl StreamName {
    fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
        }
    }
}

/// A piece of output of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamChunk {
    pub name: StreamName,
    pub data: Vec<u8>,
    pub end: bool,
}

/// A SOAP fault, with the WSManFault code when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `s:Code/s:Value` (e.g. `s:Receiver`), `s:Subcode/s:Value` (e.g. `w:TimedOut`).
    pub code: String,
    pub subcode: String,
    pub reason: String,
    pub wsman_code: Option<u32>,
    pub message: String,
}

impl Fault {
    pub fn is_operation_timeout(&self) -> bool {
        self.wsman_code == Some(CODE_OPERATION_TIMEOUT) || self.subcode.ends_with("TimedOut")
    }

    /// A quota the host enforces was exceeded: wait and ask again.
    pub fn is_quota(&self) -> bool {
        matches!(
            self.wsman_code,
            Some(
                CODE_QUOTA_MAX_SHELLS
                    | CODE_QUOTA_MAX_OPERATIONS
                    | CODE_QUOTA_MAX_SHELLUSERS
                    | CODE_QUOTA_LIMIT
            )
        ) || self.subcode.ends_with("QuotaLimit")
    }

    pub fn is_access_denied(&self) -> bool {
        self.wsman_code == Some(CODE_ACCESS_DENIED) || self.subcode.ends_with("AccessDenied")
    }

    /// The shell is gone (deleted by the host after its IdleTimeout, or by an administrator).
    pub fn is_shell_not_found(&self) -> bool {
        self.wsman_code == Some(CODE_SHELL_NOT_FOUND)
    }

    pub fn operation_timeout() -> Self {
        Fault {
            code: "s:Receiver".into(),
            subcode: "w:TimedOut".into(),
            reason: "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.".into(),
            wsman_code: Some(CODE_OPERATION_TIMEOUT),
            message: "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.".into(),
        }
    }
}

/// What a reply carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    ShellCreated {
        shell_id: ShellId,
    },
    CommandStarted {
        command_id: CommandId,
    },
    Output {
        command_id: CommandId,
        streams: Vec<StreamChunk>,
        /// `Some(exit code)` when the command is done; `None` while it runs.
        done: Option<i64>,
    },
    Signalled,
    Deleted,
    Fault(Fault),
}

/// One reply envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message_id: MessageId,
    pub relates_to: Option<MessageId>,
    pub body: ReplyBody,
}

impl Reply {
    /// The SOAP envelope, shaped as Windows answers.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(1024);
        s.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        s.push_str(&format!(
            r#"<s:Envelope xml:lang="en-US" xmlns:s="{NS_SOAP}" xmlns:a="{NS_ADDRESSING}" xmlns:x="{NS_TRANSFER}" xmlns:w="{NS_WSMAN}" xmlns:rsp="{NS_SHELL}" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">"#
        ));
        let action = match &self.body {
            ReplyBody::ShellCreated { .. } => {
                "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse"
            }
            ReplyBody::CommandStarted { .. } => {
                "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandResponse"
            }
            ReplyBody::Output { .. } => {
                "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/ReceiveResponse"
            }
            ReplyBody::Signalled => {
                "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SignalResponse"
            }
            ReplyBody::Deleted => "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse",
            ReplyBody::Fault(_) => "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault",
        };
        s.push_str(&format!("<s:Header><a:Action>{action}</a:Action>"));
        s.push_str(&format!(
            "<a:MessageID>{}</a:MessageID>",
            escape(&self.message_id.0)
        ));
        s.push_str("<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>");
        if let Some(r) = &self.relates_to {
            s.push_str(&format!("<a:RelatesTo>{}</a:RelatesTo>", escape(&r.0)));
        }
        s.push_str("</s:Header><s:Body>");
        match &self.body {
            ReplyBody::ShellCreated { shell_id } => {
                let id = escape(&shell_id.0);
                s.push_str(&format!(
                    r#"<x:ResourceCreated><a:Address>https://windows-host:5986/wsman</a:Address><a:ReferenceParameters><w:ResourceURI>{RESOURCE_CMD}</w:ResourceURI><w:SelectorSet><w:Selector Name="ShellId">{id}</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>"#
                ));
                s.push_str(&format!(
                    "<rsp:Shell><rsp:ShellId>{id}</rsp:ShellId><rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"
                ));
            }
            ReplyBody::CommandStarted { command_id } => s.push_str(&format!(
                "<rsp:CommandResponse><rsp:CommandId>{}</rsp:CommandId></rsp:CommandResponse>",
                escape(&command_id.0)
            )),
            ReplyBody::Output {
                command_id,
                streams,
                done,
            } => {
                let id = escape(&command_id.0);
                s.push_str(r#"<rsp:ReceiveResponse SequenceID="0">"#);
                for c in streams {
                    let end = if c.end { r#" End="true""# } else { "" };
                    s.push_str(&format!(
                        r#"<rsp:Stream Name="{}" CommandId="{id}"{end}>{}</rsp:Stream>"#,
                        c.name.as_str(),
                        B64.encode(&c.data)
                    ));
                }
                match done {
                    Some(code) => s.push_str(&format!(
                        r#"<rsp:CommandState CommandId="{id}" State="{STATE_DONE}"><rsp:ExitCode>{code}</rsp:ExitCode></rsp:CommandState>"#
                    )),
                    None => s.push_str(&format!(
                        r#"<rsp:CommandState CommandId="{id}" State="{STATE_RUNNING}"/>"#
                    )),
                }
                s.push_str("</rsp:ReceiveResponse>");
            }
            ReplyBody::Signalled => s.push_str("<rsp:SignalResponse/>"),
            ReplyBody::Deleted => {}
            ReplyBody::Fault(f) => {
                s.push_str(&format!(
                    r#"<s:Fault><s:Code><s:Value>{}</s:Value><s:Subcode><s:Value>{}</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{}</s:Text></s:Reason><s:Detail>"#,
                    escape(&f.code),
                    escape(&f.subcode),
                    escape(&f.reason)
                ));
                if let Some(code) = f.wsman_code {
                    s.push_str(&format!(
                        r#"<f:WSManFault xmlns:f="{NS_WSMAN_FAULT}" Code="{code}" Machine="windows-host"><f:Message>{}</f:Message></f:WSManFault>"#,
                        escape(&f.message)
                    ));
                }
                s.push_str("</s:Detail></s:Fault>");
            }
        }
        s.push_str("</s:Body></s:Envelope>");
        s
    }
}

fn parse_fault(f: &Element) -> Result<Fault, EnvelopeError> {
    let code_el = f.child("Code");
    let code = code_el
        .and_then(|c| c.child("Value"))
        .map(|v| v.text.trim().to_string())
        .unwrap_or_default();
    let subcode = code_el
        .and_then(|c| c.child("Subcode"))
        .and_then(|c| c.child("Value"))
        .map(|v| v.text.trim().to_string())
        .unwrap_or_default();
    let reason = f
        .child("Reason")
        .map(|r| {
            r.descendants()
                .iter()
                .map(|e| e.text.trim())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let wf = f.find("WSManFault");
    let wsman_code = match wf.and_then(|w| w.attr("Code")) {
        Some(c) => Some(
            c.trim()
                .parse::<u32>()
                .map_err(|_| shape(format!("WSManFault Code {c:?} is not a number")))?,
        ),
        None => None,
    };
    let message = wf
        .map(|w| {
            w.descendants()
                .iter()
                .map(|e| e.text.trim())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Ok(Fault {
        code,
        subcode,
        reason,
        wsman_code,
        message,
    })
}

/// Parse a reply envelope (the client's side).
pub fn parse_reply(text: &str) -> Result<Reply, EnvelopeError> {
    let root = xml::parse(text)?;
    let (header, body) = header_and_body(&root)?;
    let message_id = MessageId(
        header
            .child("MessageID")
            .map(|m| m.text.trim().to_string())
            .unwrap_or_default(),
    );
    let relates_to = header
        .child("RelatesTo")
        .map(|r| MessageId(r.text.trim().to_string()));
    let reply_body = if let Some(f) = body.child("Fault") {
        ReplyBody::Fault(parse_fault(f)?)
    } else if let Some(sel) = body
        .descendants()
        .into_iter()
        .find(|e| e.attr("Name") == Some("ShellId"))
    {
        ReplyBody::ShellCreated {
            shell_id: ShellId(sel.text.trim().to_string()),
        }
    } else if let Some(id) = body.find("CommandId") {
        ReplyBody::CommandStarted {
            command_id: CommandId(id.text.trim().to_string()),
        }
    } else if let Some(rr) = body.find("ReceiveResponse") {
        let mut streams = Vec::new();
        let mut command_id = None;
        for st in rr.children.iter().filter(|c| c.name == "Stream") {
            let name = match st.attr("Name") {
                Some("stdout") => StreamName::Stdout,
                Some("stderr") => StreamName::Stderr,
                other => return Err(shape(format!("unknown stream name {other:?}"))),
            };
            if command_id.is_none() {
                command_id = st.attr("CommandId").map(|c| CommandId(c.to_string()));
            }
            let data = B64
                .decode(st.text.trim())
                .map_err(|e| shape(format!("{} stream is not base64: {e}", name.as_str())))?;
            streams.push(StreamChunk {
                name,
                data,
                end: st.attr("End") == Some("true"),
            });
        }
        let state = rr.child("CommandState");
        if command_id.is_none() {
            command_id = state
                .and_then(|s| s.attr("CommandId"))
                .map(|c| CommandId(c.to_string()));
        }
        let done = match state {
            Some(s)
                if s.attr("State")
                    .is_some_and(|v| v.ends_with("CommandState/Done")) =>
            {
                let code = s
                    .child("ExitCode")
                    .map(|c| c.text.trim())
                    .ok_or_else(|| shape("CommandState Done without <ExitCode>"))?;
                Some(
                    code.parse::<i64>()
                        .map_err(|_| shape(format!("ExitCode {code:?} is not a number")))?,
                )
            }
            _ => None,
        };
        ReplyBody::Output {
            command_id: command_id.unwrap_or(CommandId(String::new())),
            streams,
            done,
        }
    } else if body.find("SignalResponse").is_some() {
        ReplyBody::Signalled
    } else if body.children.is_empty() {
        ReplyBody::Deleted
    } else {
        return Err(shape(format!(
            "reply body <{}> is not a shell reply",
            body.children.first().map_or("", |c| c.name.as_str())
        )));
    };
    Ok(Reply {
        message_id,
        relates_to,
        body: reply_body,
    })
}

/// Fuzzing entry point: parse a request envelope from raw bytes.
pub fn fuzz_parse_request(bytes: &[u8]) -> Result<Request, EnvelopeError> {
    let text = std::str::from_utf8(bytes).map_err(|e| shape(format!("not UTF-8: {e}")))?;
    parse_request(text)
}

/// Fuzzing entry point: parse a reply envelope from raw bytes.
pub fn fuzz_parse_reply(bytes: &[u8]) -> Result<Reply, EnvelopeError> {
    let text = std::str::from_utf8(bytes).map_err(|e| shape(format!("not UTF-8: {e}")))?;
    parse_reply(text)
}

#[cfg(test)]
#[path = "wsman_tests.rs"]
mod tests;
