//! The PowerShell Godwit sends, checked for what Windows Server 2016-2025 runs: Windows
//! PowerShell 5.1 on .NET Framework 4.6-4.8.
//!
//! - The C# that push-ranges.ps1 compiles with `Add-Type` is compiled here by Debian's Mono C#
//!   compiler at `-langversion:5`: Windows PowerShell 5.1's Add-Type uses the .NET Framework's
//!   CodeDOM C# compiler, which takes C# 5 (no `$"..."`, `?.`, `nameof`, expression-bodied
//!   members: https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.utility/add-type?view=powershell-5.1).
//!   A C# 6 snippet is refused by the same command (the check bites).
//! - No PowerShell 7-only syntax in any script (pipeline chain `&&`/`||`, `??`/`??=`,
//!   `?.`/`?[]`, the ternary `a ? b : c`, `ForEach-Object -Parallel`, `Clean` blocks): a token
//!   check outside comments, strings and here-strings. (Not a full parse: see docs/hyperv.md.)

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

/// The script with comments, strings and here-strings blanked out (token check input).
fn code_only(script: &str) -> String {
    let mut out = String::with_capacity(script.len());
    let b: Vec<char> = script.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '@' && (next == Some('\'') || next == Some('"')) && b.get(i + 2) == Some(&'\n') {
            // here-string to `\n'@` / `\n"@`
            let close = ['\n', next.unwrap_or('\''), '@'];
            i += 3;
            while i + 2 < b.len() && b[i..i + 3] != close {
                i += 1;
            }
            i += 3;
            out.push_str(" \"\" ");
            continue;
        }
        if c == '#' {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '\'' || c == '"' {
            i += 1;
            while i < b.len() && b[i] != c {
                if c == '"' && b[i] == '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("''");
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

fn ps7_only(code: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    let checks: [(&str, &'static str); 7] = [
        ("&&", "pipeline chain operator &&"),
        ("||", "pipeline chain operator ||"),
        ("??", "null-coalescing ??"),
        ("?.", "null-conditional ?."),
        ("?[", "null-conditional ?[]"),
        ("-Parallel", "ForEach-Object -Parallel"),
        ("$PSStyle", "$PSStyle"),
    ];
    for (tok, what) in checks {
        if code.contains(tok) {
            found.push(what);
        }
    }
    // The ternary: ` ? ` followed by ` : ` on the same line (`?` alone is also Where-Object's
    // alias, used after a pipe: `| ?`).
    for line in code.lines() {
        if let Some(q) = line.find(" ? ")
            && line[q..].contains(" : ")
            && !line[..q].trim_end().ends_with('|')
        {
            found.push("ternary ? :");
        }
    }
    found
}

#[test]
fn no_script_uses_powershell_7_only_syntax() {
    for p in scripts() {
        let text = std::fs::read_to_string(&p).unwrap();
        let found = ps7_only(&code_only(&text));
        assert!(found.is_empty(), "{}: {found:?}", p.display());
    }
    // The check bites: each of these is PowerShell 7 only.
    for bad in [
        "Get-VM && Write-Output ok",
        "$x = $a ?? 'b'",
        "$n = $vm?.Name",
        "$t = $ok ? 'y' : 'n'",
        "1..3 | ForEach-Object -Parallel { $_ }",
    ] {
        assert!(!ps7_only(&code_only(bad)).is_empty(), "{bad}");
    }
    // ...and these are fine in 5.1 (strings, comments, here-strings, `| ?`).
    for ok in [
        "Write-Output 'a && b ?? c'",
        "# x ?? y",
        "Get-VM | ? { $_.State -eq 'Running' }",
        "$s = @'\nx && y\n'@",
    ] {
        assert!(ps7_only(&code_only(ok)).is_empty(), "{ok}");
    }
}
