//! The PowerShell Godwit sends, checked for what Windows Server 2016-2025 runs: Windows
//! PowerShell 5.1 on .NET Framework 4.6-4.8.
//!
//! - The C# that push-ranges.ps1 compiles with `Add-Type` is compiled here by Debian's Mono C#
//!   compiler at `-langversion:5`: Windows PowerShell 5.1's Add-Type uses the .NET Framework's
//!   CodeDOM C# compiler, which takes C# 5 (no `$"..."`, `?.`, `nameof`, expression-bodied
//!   members: https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.utility/add-type?view=powershell-5.1).
//!   A C# 6 snippet is refused by the same command (the check bites).
//! - Every script parses with tree-sitter-powershell (a grammar nobody here wrote), every
//!   cmdlet call binds to the cmdlet's documented 5.1 parameters, and no PowerShell-7-only
//!   syntax is in any script (pipeline chain `&&`/`||`, `??`/`??=`, `?.`/`?[]`, the ternary
//!   `a ? b : c`, `ForEach-Object -Parallel`, `clean` blocks, `$PSStyle`): the check is
//!   `godwit_hyperv_sim::pwsh`, the one the simulator runs on every script it is sent.

use std::path::{Path, PathBuf};
use std::process::Command;

fn scripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hyperv/scripts");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ps1"))
        .collect();
    v.sort();
    v
}

/// The C# between `Add-Type -TypeDefinition @'` and `'@` (a single-quoted here-string).
fn embedded_csharp(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = script;
    while let Some(i) = rest.find("Add-Type -TypeDefinition @'\n") {
        let body = &rest[i + "Add-Type -TypeDefinition @'\n".len()..];
        let end = body.find("\n'@").expect("here-string closed");
        out.push(body[..end].to_string());
        rest = &body[end..];
    }
    out
}

fn mcs(work: &Path, name: &str, source: &str) -> std::process::Output {
    let cs = work.join(format!("{name}.cs"));
    std::fs::write(&cs, source).unwrap();
    Command::new("mcs")
        .args(["-langversion:5", "-target:library", "-nologo"])
        .arg(format!(
            "-out:{}",
            work.join(format!("{name}.dll")).display()
        ))
        .arg(&cs)
        .output()
        .expect("mcs (Debian mono-mcs, tests/deps/hyperv.apt) runs")
}

#[test]
fn embedded_csharp_compiles_as_csharp_5() {
    let work = tempfile::tempdir().unwrap();
    let mut compiled = 0;
    for p in scripts() {
        let text = std::fs::read_to_string(&p).unwrap();
        for (i, cs) in embedded_csharp(&text).iter().enumerate() {
            let name = format!("{}-{i}", p.file_stem().unwrap().to_string_lossy());
            let o = mcs(work.path(), &name, cs);
            assert!(
                o.status.success(),
                "{}: the C# does not compile as C# 5:\n{}{}",
                p.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            compiled += 1;
        }
    }
    assert!(
        compiled >= 1,
        "push-ranges.ps1's pin callback was not found"
    );
    // The same command refuses C# 6.
    let o = mcs(
        work.path(),
        "csharp6",
        "public static class X { public static string Y(string s) => $\"{s?.Length}\"; }",
    );
    assert!(!o.status.success(), "mcs -langversion:5 accepted C# 6");
}

/// Each script parses with tree-sitter-powershell (Airbus CERT's grammar, crates.io) with no
/// error node, and nothing in it is PowerShell-7-only: pipeline chains `&&`/`||`, `??`/`??=`,
/// `?.`/`?[]`, the ternary `a ? b : c` (none of which the grammar parses outside strings and
/// comments), a `clean {}` block, `$PSStyle`, and any parameter Windows PowerShell 5.1's
/// cmdlets do not have (`ForEach-Object -Parallel`, `-ProgressAction` …).
#[test]
fn every_script_parses_as_windows_powershell_5_1() {
    use godwit_hyperv_sim::pwsh::{
        check_cmdlet_calls, progress_preference_first, windows_powershell_5_1_findings,
    };
    for p in scripts() {
        let text = std::fs::read_to_string(&p).unwrap();
        let found = windows_powershell_5_1_findings(&text);
        assert!(found.is_empty(), "{}: {found:#?}", p.display());
        // $ProgressPreference before anything that can load a module, also as sent (with
        // the arguments line in front).
        let sent = godwit_hyperv::powershell::with_args(&text, &serde_json::json!({}));
        for t in [&text, &sent] {
            if let Err(e) = progress_preference_first(t) {
                panic!("{}: {e}", p.display());
            }
        }
        // Every cmdlet call binds to the cmdlet's documented parameters.
        if let Err(e) = check_cmdlet_calls(&text) {
            panic!("{}: {e}", p.display());
        }
    }
    // What the client wraps around them: the arguments line and the piece delivery.
    let token = godwit_hyperv::powershell::PieceToken::random();
    for wrapper in [
        godwit_hyperv::powershell::with_args("exit 0", &serde_json::json!({"a": "b"})),
        godwit_hyperv::powershell::piece_script(&token, "QUJD"),
        godwit_hyperv::powershell::run_pieces_script(&token),
    ] {
        assert!(
            windows_powershell_5_1_findings(&wrapper).is_empty(),
            "{wrapper}"
        );
        check_cmdlet_calls(&wrapper).unwrap();
        progress_preference_first(&wrapper).unwrap();
    }
}

/// The check bites: each PowerShell-7-only construct put into a real script (at the start of
/// its `try` block) is found, naming the line; the same text in a string or comment is not.
#[test]
fn powershell_7_only_syntax_put_in_a_script_is_refused() {
    use godwit_hyperv_sim::pwsh::windows_powershell_5_1_findings;
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../hyperv/scripts/checkpoint-remove.ps1"),
    )
    .unwrap();
    let at = base.find("try {\n").expect("a try block") + "try {\n".len();
    let line = base[..at].lines().count() + 1;
    for bad in [
        "  Get-VM && Write-Output ok\n",
        "  Get-VM || exit 3\n",
        "  $x = $a ?? 'b'\n",
        "  $x ??= 'b'\n",
        "  $n = $vm?.Name\n",
        "  $n = $list?[0]\n",
        "  $t = $ok ? 'y' : 'n'\n",
        "  1..3 | ForEach-Object -Parallel { $_ }\n",
        "  Get-VM -ProgressAction SilentlyContinue\n",
        "  function f { process { $_ } clean { 'x' } }\n",
        "  $PSStyle.Reset\n",
    ] {
        let script = format!("{}{bad}{}", &base[..at], &base[at..]);
        let found = windows_powershell_5_1_findings(&script);
        assert!(
            found
                .iter()
                .any(|f| f.starts_with(&format!("line {line}:"))),
            "{bad:?} not found at line {line}: {found:?}"
        );
    }
    for ok in [
        "  Write-Output 'a && b ?? c ? d : e'\n",
        "  # x ?? y && z\n",
        "  Get-VM | ? { $_.State -eq 'Running' } | % { $_.Name }\n",
        "  $s = @'\nx && y ?? z\n'@\n",
    ] {
        let script = format!("{}{ok}{}", &base[..at], &base[at..]);
        let found = windows_powershell_5_1_findings(&script);
        assert!(found.is_empty(), "{ok:?}: {found:?}");
    }
}
