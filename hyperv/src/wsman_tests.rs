use super::*;
use proptest::prelude::*;

fn req(body: Body, shell: bool) -> Request {
    Request::new(
        body,
        shell.then(|| ShellId("0659D564-B959-4888-BEA6-1717FAE4D33E".into())),
        TimeoutSecs(20),
    )
}

#[test]
fn requests_round_trip() {
    for (body, shell) in [
        (Body::CreateShell { codepage: 65001 }, false),
        (
            Body::Command {
                command: "powershell -encodedcommand AAA= & <x>".into(),
                arguments: vec!["a".into(), "b".into()],
            },
            true,
        ),
        (
            Body::Receive {
                command_id: CommandId("AD37".into()),
            },
            true,
        ),
        (
            Body::Signal {
                command_id: CommandId("AD37".into()),
            },
            true,
        ),
        (Body::Delete, true),
    ] {
        let r = req(body, shell);
        assert_eq!(parse_request(&r.encode()).unwrap(), r);
    }
}

#[test]
fn pywinrm_captured_receive_parses() {
    let text = r#"<?xml version="1.0" encoding="utf-8"?>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell">
<env:Header><a:To>http://windows-host:5985/wsman</a:To>
<w:MaxEnvelopeSize mustUnderstand="true">153600</w:MaxEnvelopeSize>
<a:MessageID>uuid:6f7d4651-4fd8-44ba-b7e6-4b4a668ab3cb</a:MessageID>
<w:OperationTimeout>PT20S</w:OperationTimeout>
<a:Action mustUnderstand="true">http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive</a:Action>
<w:SelectorSet><w:Selector Name="ShellId">0659D564</w:Selector></w:SelectorSet></env:Header>
<env:Body><rsp:Receive><rsp:DesiredStream CommandId="AD379D28">stdout stderr</rsp:DesiredStream></rsp:Receive></env:Body></env:Envelope>"#;
    let r = parse_request(text).unwrap();
    assert_eq!(r.max_envelope_size, 153_600);
    assert_eq!(r.operation_timeout, TimeoutSecs(20));
    assert_eq!(r.shell_id, Some(ShellId("0659D564".into())));
    assert_eq!(
        r.body,
        Body::Receive {
            command_id: CommandId("AD379D28".into())
        }
    );
}

#[test]
fn replies_round_trip() {
    let bodies = vec![
        ReplyBody::ShellCreated {
            shell_id: ShellId("182D".into()),
        },
        ReplyBody::CommandStarted {
            command_id: CommandId("AD37".into()),
        },
        ReplyBody::Output {
            command_id: CommandId("AD37".into()),
            streams: vec![
                StreamChunk {
                    name: StreamName::Stdout,
                    data: b"[{\"Name\":\"vm1\"}]\r\n".to_vec(),
                    end: false,
                },
                StreamChunk {
                    name: StreamName::Stderr,
                    data: vec![],
                    end: true,
                },
            ],
            done: Some(3),
        },
        ReplyBody::Output {
            command_id: CommandId("AD37".into()),
            streams: vec![],
            done: None,
        },
        ReplyBody::Signalled,
        ReplyBody::Deleted,
        ReplyBody::Fault(Fault::operation_timeout()),
    ];
    for body in bodies {
        let r = Reply {
            message_id: MessageId::random(),
            relates_to: Some(MessageId::random()),
            body,
        };
        let back = parse_reply(&r.encode()).unwrap();
        assert_eq!(back, r);
    }
}

#[test]
fn timeout_fault_is_recognised() {
    let f = Fault::operation_timeout();
    let r = Reply {
        message_id: MessageId::random(),
        relates_to: None,
        body: ReplyBody::Fault(f),
    };
    match parse_reply(&r.encode()).unwrap().body {
        ReplyBody::Fault(f) => assert!(f.is_operation_timeout()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_envelopes_are_clear_errors() {
    let cases = [
        ("", "no root"),
        ("<Envelope>", "ends inside"),
        ("<x/>", "not <Envelope>"),
        ("<Envelope><Header/></Envelope>", "no <Body>"),
        (
            "<Envelope><Header/><Body><rsp:ReceiveResponse><rsp:Stream Name=\"stdout\">!!!</rsp:Stream></rsp:ReceiveResponse></Body></Envelope>",
            "not base64",
        ),
        (
            "<Envelope><Header/><Body><ReceiveResponse><CommandState State=\"x/CommandState/Done\"/></ReceiveResponse></Body></Envelope>",
            "without <ExitCode>",
        ),
        (
            "<Envelope><Header/><Body><Foo/></Body></Envelope>",
            "not a shell reply",
        ),
    ];
    for (text, want) in cases {
        let e = parse_reply(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
    let e = parse_request("<Envelope><Header><Action>x/Bogus</Action><MessageID>1</MessageID></Header><Body/></Envelope>")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported action"), "{e}");
    let e = parse_request(&req(Body::Delete, false).encode())
        .unwrap_err()
        .to_string();
    assert!(e.contains("without a ShellId"), "{e}");
}

proptest! {
    #[test]
    fn command_text_and_output_survive(cmd in "[ -~]{0,200}", out in proptest::collection::vec(any::<u8>(), 0..600), code in any::<i64>()) {
        let r = req(Body::Command { command: cmd.trim().to_string(), arguments: vec![] }, true);
        prop_assert_eq!(parse_request(&r.encode()).unwrap(), r);
        let rep = Reply {
            message_id: MessageId::random(),
            relates_to: None,
            body: ReplyBody::Output {
                command_id: CommandId("C".into()),
                streams: vec![StreamChunk { name: StreamName::Stdout, data: out, end: true }],
                done: Some(code),
            },
        };
        prop_assert_eq!(parse_reply(&rep.encode()).unwrap(), rep);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = fuzz_parse_reply(&bytes);
        let _ = fuzz_parse_request(&bytes);
    }
}
