//! The PowerShell the simulator is sent, read with a grammar nobody here wrote (Airbus CERT's
//! tree-sitter-powershell, crates.io): every call of a cmdlet is held to that cmdlet's
//! documented parameters ([`crate::cmdlets`]) before anything runs, and
//! [`windows_powershell_5_1_findings`] lists what Windows PowerShell 5.1 cannot parse or run
//! (a parse error, PowerShell-7-only syntax).
//!
//! Parameter binding (names, parameter sets, positions, switches, mandatory parameters) is
//! [`crate::binding`].

use crate::binding::{self, Element};
use crate::cmdlets;
use tree_sitter::{Node, Parser, Tree};

/// `text` parsed with the PowerShell grammar.
pub fn parse(text: &str) -> Result<Tree, String> {
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_powershell::LANGUAGE.into())
        .map_err(|e| format!("tree-sitter-powershell: {e}"))?;
    parser
        .parse(text, None)
        .ok_or_else(|| "tree-sitter-powershell did not parse the script".to_string())
}

fn text_of<'a>(n: &Node<'_>, src: &'a str) -> &'a str {
    src.get(n.byte_range()).unwrap_or("")
}

/// 1-based line of a node, for messages.
fn line_of(n: &Node<'_>) -> usize {
    n.start_position().row + 1
}

fn walk<'t>(n: Node<'t>, out: &mut Vec<Node<'t>>) {
    out.push(n);
    let mut c = n.walk();
    for child in n.children(&mut c) {
        walk(child, out);
    }
}

fn all_nodes(tree: &Tree) -> Vec<Node<'_>> {
    let mut v = Vec::new();
    walk(tree.root_node(), &mut v);
    v
}

/// One cmdlet call as written: its name, its elements and whether it follows a `|`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub name: String,
    pub elements: Vec<Element>,
    /// A later command of a pipeline: it receives pipeline input.
    pub piped: bool,
    pub line: usize,
}

/// The elements of a command (after its name) as binding sees them. In this grammar
/// `-Name:value` is a `command_parameter`, a `command_argument_sep` holding the `:`, then the
/// value; a script block argument is an expression whose text starts with `{`; `--` ends the
/// parameters (what follows is positional).
fn elements_of(list: &Node<'_>, src: &str) -> Vec<Element> {
    let mut out = Vec::new();
    let mut only_arguments = false;
    let mut c = list.walk();
    for e in list.children(&mut c) {
        let text = text_of(&e, src);
        match e.kind() {
            "command_parameter" if !only_arguments => {
                let p = text.strip_prefix('-').unwrap_or(text);
                if p == "-" {
                    only_arguments = true;
                    continue;
                }
                out.push(Element::Parameter {
                    name: p.trim_end_matches(':').to_string(),
                    colon: p.ends_with(':'),
                });
            }
            "command_argument_sep" => {
                if text.contains(':')
                    && let Some(Element::Parameter { colon, .. }) = out.last_mut()
                {
                    *colon = true;
                }
            }
            "comment" => {}
            k if k.contains("redirection") => {}
            _ if text.trim().is_empty() => {}
            _ if text.starts_with('@')
                && !["@(", "@{", "@'", "@\""]
                    .iter()
                    .any(|o| text.starts_with(o)) =>
            {
                out.push(Element::Splat);
            }
            _ => out.push(Element::Argument {
                text: text.to_string(),
                script_block: text.trim_start().starts_with('{'),
            }),
        }
    }
    out
}

/// The calls in `tree`, and the names of the functions the script defines.
pub fn calls(tree: &Tree, src: &str) -> (Vec<Call>, Vec<String>) {
    let mut calls = Vec::new();
    let mut functions = Vec::new();
    for n in all_nodes(tree) {
        match n.kind() {
            "function_statement" => {
                let mut c = n.walk();
                if let Some(f) = n.children(&mut c).find(|c| c.kind() == "function_name") {
                    functions.push(text_of(&f, src).to_string());
                }
            }
            "command" => {
                let Some(name) = n.child_by_field_name("command_name") else {
                    continue; // `& $x`, `. (...)`: nothing named to bind
                };
                let elements = n
                    .child_by_field_name("command_elements")
                    .map(|list| elements_of(&list, src))
                    .unwrap_or_default();
                let piped = n.prev_sibling().is_some_and(|p| p.kind() == "|");
                calls.push(Call {
                    name: text_of(&name, src).to_string(),
                    elements,
                    piped,
                    line: line_of(&n),
                });
            }
            _ => {}
        }
    }
    (calls, functions)
}

/// Every cmdlet call in `script` bound against its documented parameter sets: the first call that
/// Windows PowerShell would refuse to bind, as PowerShell words it. A `Verb-Noun` command
/// that is neither a known cmdlet nor a function of the script is refused too (the simulator
/// cannot vouch for a cmdlet it has no parameter table for).
pub fn check_cmdlet_calls(script: &str) -> Result<(), String> {
    let tree = parse(script)?;
    let (calls, functions) = calls(&tree, script);
    for call in &calls {
        if functions.iter().any(|f| f.eq_ignore_ascii_case(&call.name)) {
            continue;
        }
        match cmdlets::find(&call.name) {
            Some(c) => {
                binding::bind_call(c, &call.elements, call.piped)?;
            }
            None if looks_like_cmdlet(&call.name) => {
                return Err(format!(
                    "{0} : The term '{0}' is not recognized as the name of a cmdlet, function, script file, or operable program. (simulator: no parameter table for it in hyperv-sim/src/cmdlets.rs; add one from its Microsoft Learn page)",
                    call.name
                ));
            }
            None => {}
        }
    }
    Ok(())
}

fn looks_like_cmdlet(name: &str) -> bool {
    let mut parts = name.splitn(2, '-');
    matches!((parts.next(), parts.next()), (Some(v), Some(n)) if !v.is_empty() && !n.is_empty() && v.chars().all(|c| c.is_ascii_alphabetic()))
}

/// What Windows PowerShell 5.1 cannot take in `script`: a place the grammar cannot parse, or
/// syntax that only PowerShell 7 has (about_Pipeline_Chain_Operators, about_Operators' `??`,
/// `??=`, `?.`, `?[]` and the ternary `a ? b : c`, about_Functions_Advanced_Methods' `clean`
/// block, `ForEach-Object -Parallel`, `$PSStyle`). Each finding names the line.
pub fn windows_powershell_5_1_findings(script: &str) -> Vec<String> {
    let tree = match parse(script) {
        Ok(t) => t,
        Err(e) => return vec![e],
    };
    let mut found = Vec::new();
    for n in all_nodes(&tree) {
        let line = line_of(&n);
        let text = text_of(&n, script);
        match n.kind() {
            "ERROR" => found.push(format!(
                "line {line}: does not parse as PowerShell: {:?}",
                text.chars().take(60).collect::<String>()
            )),
            // Every statement is a `pipeline_chain` in this grammar; a chain has `&&`/`||`.
            "pipeline_chain" | "pipeline_chain_tail" => {
                let mut c = n.walk();
                if n.children(&mut c).any(|t| matches!(t.kind(), "&&" | "||")) {
                    found.push(format!(
                        "line {line}: pipeline chain operator && / || (PowerShell 7)"
                    ));
                }
            }
            "variable" => {
                // `$a?.b` / `$a?[0]`: 5.1 reads `$a?` as one variable name, 7 as `?.`/`?[]`
                // (about_Operators: "Null-conditional operators").
                if text.ends_with('?') {
                    found.push(format!(
                        "line {line}: {text}: a variable name ending in '?' (PowerShell 7 reads '?.' / '?[]' as null-conditional)"
                    ));
                }
                if text.eq_ignore_ascii_case("$PSStyle") {
                    found.push(format!("line {line}: $PSStyle (PowerShell 7.2)"));
                }
            }
            "command" => {
                let name = n
                    .child_by_field_name("command_name")
                    .map(|c| text_of(&c, script).to_ascii_lowercase());
                // `clean { }` in a function body: 5.1 parses it as a call of a command named
                // `clean` with a script block argument.
                if name.as_deref() == Some("clean") {
                    found.push(format!("line {line}: clean {{}} block (PowerShell 7.3)"));
                }
            }
            _ => {}
        }
        if n.child_count() == 0 && !n.is_named() && n.is_missing() {
            found.push(format!("line {line}: missing {:?}", n.kind()));
        }
    }
    // `-Parallel` and any other parameter 5.1's cmdlets do not have.
    let (calls, functions) = calls(&tree, script);
    for call in &calls {
        if functions.iter().any(|f| f.eq_ignore_ascii_case(&call.name)) {
            continue;
        }
        if let Some(c) = cmdlets::find(&call.name)
            && let Err(e) = binding::bind_call(c, &call.elements, call.piped)
        {
            found.push(format!(
                "line {}: {}",
                call.line,
                e.lines().next().unwrap_or("")
            ));
        }
    }
    found
}

/// Whether `$ProgressPreference` is assigned before the script runs any command: the first use
/// of a cmdlet can load its module, and a module's first load writes progress records
/// ("Preparing modules for first use.") into the output stream a WinRM client reads
/// (about_Preference_Variables, 5.1). `Err` names the command that comes first.
pub fn progress_preference_first(script: &str) -> Result<(), String> {
    let tree = parse(script)?;
    let nodes = all_nodes(&tree);
    let set_at = nodes
        .iter()
        .find(|n| {
            n.kind() == "assignment_expression"
                && text_of(n, script)
                    .to_ascii_lowercase()
                    .starts_with("$progresspreference")
        })
        .map(|n| n.start_byte());
    let first_command = nodes.iter().find(|n| n.kind() == "command");
    match (set_at, first_command) {
        (_, None) => Ok(()),
        (Some(at), Some(c)) if at < c.start_byte() => Ok(()),
        (_, Some(c)) => Err(format!(
            "line {}: {:?} runs before $ProgressPreference is set",
            line_of(c),
            text_of(c, script).chars().take(40).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_ambiguous_parameters_fail_as_powershell_words_it() {
        let e = check_cmdlet_calls("$s = Get-VMSnapshot -VMId $id -Name 'x'").unwrap_err();
        assert!(
            e.starts_with(
                "Get-VMSnapshot : A parameter cannot be found that matches parameter name 'VMId'."
            ),
            "{e}"
        );
        assert!(e.contains("NamedParameterNotFound"), "{e}");
        // Documented parameters, aliases, prefixes, common parameters, any case: bound.
        check_cmdlet_calls(
            "Get-VMSnapshot -VM $vm -Name 'x' -ErrorAction SilentlyContinue\nget-vmsnapshot -vmn 'web' -EA Stop\nGet-VM -VMName web -Verbose:$false",
        )
        .unwrap();
        let e = check_cmdlet_calls("Get-VMSnapshot -VMN 'a' -C 'b'").unwrap_err();
        assert!(e.contains("is ambiguous"), "{e}");
        // PowerShell 7's additions are not there in 5.1.
        let e = check_cmdlet_calls("1..3 | ForEach-Object -Parallel { $_ }").unwrap_err();
        assert!(e.contains("'Parallel'"), "{e}");
        let e = check_cmdlet_calls("Get-VM -ProgressAction SilentlyContinue").unwrap_err();
        assert!(e.contains("'ProgressAction'"), "{e}");
        // A cmdlet without a table is refused; the script's own functions are not.
        let e = check_cmdlet_calls("Get-VMNetworkAdapter -VMName web").unwrap_err();
        assert!(e.contains("not recognized"), "{e}");
        check_cmdlet_calls("function Send-Godwit($a) { $a }\nSend-Godwit -Anything 1").unwrap();
    }

    #[test]
    fn progress_preference_must_come_before_the_first_command() {
        progress_preference_first("$ProgressPreference = 'SilentlyContinue'\n$x = Get-VM").unwrap();
        progress_preference_first("# c\n$a = 1\n$ProgressPreference='SilentlyContinue'; Get-VM")
            .unwrap();
        let e = progress_preference_first(
            "$a = ConvertFrom-Json '{}'\n$ProgressPreference = 'SilentlyContinue'",
        )
        .unwrap_err();
        assert!(e.contains("ConvertFrom-Json"), "{e}");
        assert!(progress_preference_first("Get-VM").is_err());
    }

    #[test]
    fn powershell_7_only_syntax_is_found() {
        let ok = "$x = if ($a) { 1 } else { 2 }\n$y = $a | Where-Object { $_ -gt 1 }\n";
        assert_eq!(windows_powershell_5_1_findings(ok), Vec::<String>::new());
        for (bad, what) in [
            ("Get-VM && Get-VHD -Path 'a'\n", "pipeline chain"),
            ("Get-VM || exit 1\n", "pipeline chain"),
            ("$x = $a ?? 'b'\n", ""),
            ("$x ??= 'b'\n", ""),
            ("$n = $vm?.Name\n", ""),
            ("$n = $list?[0]\n", ""),
            ("$x = $a ? 'yes' : 'no'\n", ""),
            ("1..3 | ForEach-Object -Parallel { $_ }\n", "Parallel"),
            ("function f { process { $_ } clean { 'x' } }\n", "clean"),
            ("$PSStyle.Reset\n", "PSStyle"),
            ("if ($a { 1 }\n", "parse"),
        ] {
            let f = windows_powershell_5_1_findings(bad);
            assert!(!f.is_empty(), "not found: {bad:?}");
            assert!(f.iter().any(|x| x.contains(what)), "{bad:?}: {f:?}");
        }
    }
}
#[cfg(test)]
mod elements {
    use super::*;

    fn elements(src: &str) -> Vec<(Vec<Element>, bool)> {
        let t = parse(src).unwrap();
        calls(&t, src)
            .0
            .into_iter()
            .map(|c| (c.elements, c.piped))
            .collect()
    }

    #[test]
    fn colons_script_blocks_pipes_and_double_dash_are_read_as_powershell_reads_them() {
        let e = elements("Remove-VMSnapshot -VMSnapshot $s -Confirm:$false 2>&1 | Out-Null");
        assert_eq!(
            e[0].0,
            vec![
                Element::Parameter {
                    name: "VMSnapshot".into(),
                    colon: false
                },
                Element::Argument {
                    text: "$s".into(),
                    script_block: false
                },
                Element::Parameter {
                    name: "Confirm".into(),
                    colon: true
                },
                Element::Argument {
                    text: "$false".into(),
                    script_block: false
                },
            ]
        );
        assert_eq!((e[0].1, e[1].1), (false, true));
        let e = elements("$a = @(Get-VM | % { 1 })");
        assert!(
            matches!(
                &e[1].0[..],
                [Element::Argument {
                    script_block: true,
                    ..
                }]
            ),
            "{e:?}"
        );
        assert!(e[1].1);
        let e = elements("Write-Output -- -b @x");
        assert_eq!(
            e[0].0,
            vec![
                Element::Argument {
                    text: "-b".into(),
                    script_block: false
                },
                Element::Splat,
            ]
        );
    }
}
