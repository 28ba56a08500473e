//! Parameter binding of one cmdlet call, as Windows PowerShell 5.1 does it before a cmdlet
//! runs (about_Parameters, about_Parameter_Sets, about_Functions_Advanced_Parameters, 5.1:
//! <https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.core/about/about_parameter_sets?view=powershell-5.1>):
//!
//! 1. Named parameters: each `-Name` matches a parameter name or alias, case-insensitively, or
//!    an unambiguous prefix of one. A switch takes no argument unless written `-Name:$value`;
//!    any other parameter takes the next element (or the one after `-Name:`).
//! 2. The candidate parameter sets are those that hold every named parameter; none left is
//!    "Parameter set cannot be resolved using the specified named parameters."
//! 3. Positional arguments bind, in order, to the unbound parameters with a `Position` in a
//!    candidate set; a set without a free position for each is dropped. As PowerShell first
//!    binds without type coercion, a script block literal goes to a ScriptBlock parameter when a
//!    set has one there (`Where-Object { … }` is the ScriptBlockSet, not EqualSet's -Property).
//! 4. Of several candidates, the default set (DefaultParameterSetName) if it is one, else the
//!    only one whose mandatory parameters are all given; otherwise the set cannot be resolved.
//! 5. The chosen set's mandatory parameters must be given, by name, position or (for a command
//!    after a `|`) pipeline input; a remote, non-interactive host cannot prompt, so PowerShell
//!    fails with "Cannot process command because of one or more missing mandatory parameters".
//!
//! Messages are PowerShell's, with its FullyQualifiedErrorId; the suffix after the comma is
//! the cmdlet's name where PowerShell writes its .NET type name.

use crate::cmdlets::{AnyParam, Cmdlet, Param};

/// One element of a command as written, after its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// `-Name` or `-Name:` (without the `-` and `:`).
    Parameter { name: String, colon: bool },
    /// Anything else: a value, positional or a named parameter's.
    Argument { text: String, script_block: bool },
    /// `@splat`: parameters not known until run time.
    Splat,
}

/// What a call bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub set: &'static str,
    /// Every parameter given, by its name (named and positional).
    pub parameters: Vec<&'static str>,
}

fn binding_error(cmdlet: &Cmdlet, message: &str, fqid: &str) -> String {
    format!(
        "{0} : {message}\r\n    + CategoryInfo          : InvalidArgument: (:) [{0}], ParameterBindingException\r\n    + FullyQualifiedErrorId : {fqid},{0}",
        cmdlet.name
    )
}

/// The parameter `given` (as written, without `-`) names: its name or an alias exactly, else
/// the only parameter one of whose names it is a prefix of.
pub fn resolve_name(cmdlet: &Cmdlet, given: &str) -> Result<AnyParam, String> {
    let all = cmdlet.all_parameters();
    if let Some(p) = all.iter().find(|p| {
        p.name.eq_ignore_ascii_case(given)
            || p.aliases.iter().any(|a| a.eq_ignore_ascii_case(given))
    }) {
        return Ok(*p);
    }
    let lower = given.to_ascii_lowercase();
    let matches: Vec<&AnyParam> = all
        .iter()
        .filter(|p| {
            p.name.to_ascii_lowercase().starts_with(&lower)
                || p.aliases
                    .iter()
                    .any(|a| a.to_ascii_lowercase().starts_with(&lower))
        })
        .collect();
    match matches.as_slice() {
        [one] if !given.is_empty() => Ok(**one),
        [] | [_] => Err(binding_error(
            cmdlet,
            &format!("A parameter cannot be found that matches parameter name '{given}'."),
            "NamedParameterNotFound",
        )),
        many => Err(binding_error(
            cmdlet,
            &format!(
                "Parameter cannot be processed because the parameter name '{given}' is ambiguous. Possible matches include: {}.",
                many.iter()
                    .map(|m| format!("-{}", m.name))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            "AmbiguousParameter",
        )),
    }
}

fn in_set(p: &Param, set: &str) -> Option<crate::cmdlets::InSet> {
    p.sets.iter().find(|s| s.set == set).copied()
}

fn is_script_block_type(ty: &str) -> bool {
    ty.starts_with("ScriptBlock")
}

/// The free positional slots of `set`, in position order.
fn slots<'c>(cmdlet: &'c Cmdlet, set: &str, named: &[AnyParam]) -> Vec<&'c Param> {
    let mut v: Vec<(u8, &Param)> = cmdlet
        .parameters
        .iter()
        .filter(|p| !named.iter().any(|n| n.name == p.name))
        .filter_map(|p| in_set(p, set).and_then(|s| s.position).map(|pos| (pos, p)))
        .collect();
    v.sort_by_key(|(pos, _)| *pos);
    v.into_iter().map(|(_, p)| p).collect()
}

/// Bind a call of `cmdlet` with `elements`; `piped`: the command follows a `|`.
pub fn bind_call(
    cmdlet: &'static Cmdlet,
    elements: &[Element],
    piped: bool,
) -> Result<Bound, String> {
    // 1. Named parameters.
    let mut named: Vec<AnyParam> = Vec::new();
    let mut positional: Vec<(&str, bool)> = Vec::new();
    let mut splat = false;
    let mut i = 0;
    while i < elements.len() {
        match &elements[i] {
            Element::Parameter { name, colon } => {
                let p = resolve_name(cmdlet, name)?;
                if named.iter().any(|q| q.name == p.name) {
                    return Err(binding_error(
                        cmdlet,
                        &format!(
                            "Cannot bind parameter because parameter '{}' is specified more than once. To provide multiple values to parameters that can accept multiple values, use the array syntax. For example, \"-parameter value1,value2,value3\".",
                            p.name
                        ),
                        "ParameterAlreadyBound",
                    ));
                }
                if *colon || !p.switch {
                    match elements.get(i + 1) {
                        Some(Element::Argument { .. }) | Some(Element::Splat) => i += 1,
                        _ if p.switch => {}
                        _ => {
                            return Err(binding_error(
                                cmdlet,
                                &format!(
                                    "Missing an argument for parameter '{}'. Specify a parameter of type '{}' and try again.",
                                    p.name, p.ty
                                ),
                                "MissingArgument",
                            ));
                        }
                    }
                }
                named.push(p);
            }
            Element::Argument { text, script_block } => positional.push((text, *script_block)),
            Element::Splat => splat = true,
        }
        i += 1;
    }
    // 2. The sets holding every named parameter (common ones are in all).
    let mut candidates: Vec<&'static str> = cmdlet
        .sets
        .iter()
        .copied()
        .filter(|s| {
            named
                .iter()
                .all(|p| p.own.is_none_or(|own| in_set(own, s).is_some()))
        })
        .collect();
    if candidates.is_empty() {
        return Err(binding_error(
            cmdlet,
            "Parameter set cannot be resolved using the specified named parameters.",
            "AmbiguousParameterSet",
        ));
    }
    if splat {
        // What a splat holds is only known when it runs: the names were checked, no more.
        return Ok(Bound {
            set: candidates[0],
            parameters: named.iter().map(|p| p.name).collect(),
        });
    }
    // 3. Positional arguments.
    if !positional.is_empty() {
        let fits = |set: &str, typed: bool| {
            let free = slots(cmdlet, set, &named);
            positional.len() <= free.len()
                && (!typed
                    || positional
                        .iter()
                        .zip(&free)
                        .all(|((_, sb), p)| !sb || is_script_block_type(p.ty)))
        };
        let typed: Vec<&'static str> = candidates
            .iter()
            .copied()
            .filter(|s| fits(s, true))
            .collect();
        let narrowed = if typed.is_empty() {
            candidates
                .iter()
                .copied()
                .filter(|s| fits(s, false))
                .collect()
        } else {
            typed
        };
        if narrowed.is_empty() {
            let most = candidates
                .iter()
                .map(|s| slots(cmdlet, s, &named).len())
                .max()
                .unwrap_or(0);
            let arg = positional.get(most).map_or("", |(t, _)| *t);
            return Err(binding_error(
                cmdlet,
                &format!("A positional parameter cannot be found that accepts argument '{arg}'."),
                "PositionalParameterNotFound",
            ));
        }
        candidates = narrowed;
    }
    let given_in = |set: &str| -> Vec<&'static str> {
        let mut v: Vec<&'static str> = named.iter().map(|p| p.name).collect();
        v.extend(
            slots(cmdlet, set, &named)
                .iter()
                .take(positional.len())
                .map(|p| p.name),
        );
        v
    };
    let missing_in = |set: &str| -> Vec<&'static str> {
        let given = given_in(set);
        cmdlet
            .parameters
            .iter()
            .filter(|p| {
                in_set(p, set).is_some_and(|s| s.mandatory && !(piped && s.from_pipeline))
                    && !given.contains(&p.name)
            })
            .map(|p| p.name)
            .collect()
    };
    // 4. One set.
    let chosen = match candidates.as_slice() {
        [one] => *one,
        many => match cmdlet.default_set.filter(|d| many.contains(d)) {
            Some(d) => d,
            None => {
                let satisfied: Vec<&'static str> = many
                    .iter()
                    .copied()
                    .filter(|s| missing_in(s).is_empty())
                    .collect();
                match satisfied.as_slice() {
                    [one] => *one,
                    _ => {
                        return Err(binding_error(
                            cmdlet,
                            "Parameter set cannot be resolved using the specified named parameters.",
                            "AmbiguousParameterSet",
                        ));
                    }
                }
            }
        },
    };
    // 5. Its mandatory parameters.
    let missing = missing_in(chosen);
    if !missing.is_empty() {
        return Err(binding_error(
            cmdlet,
            &format!(
                "Cannot process command because of one or more missing mandatory parameters: {}.",
                missing.join(" ")
            ),
            "MissingMandatoryParameter",
        ));
    }
    Ok(Bound {
        set: chosen,
        parameters: given_in(chosen),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdlets::find;

    fn p(name: &str) -> Element {
        Element::Parameter {
            name: name.into(),
            colon: false,
        }
    }
    fn a(text: &str) -> Element {
        Element::Argument {
            text: text.into(),
            script_block: text.starts_with('{'),
        }
    }
    fn bind(cmdlet: &str, e: &[Element], piped: bool) -> Result<Bound, String> {
        bind_call(find(cmdlet).unwrap(), e, piped)
    }

    #[test]
    fn sets_are_resolved_as_the_pages_define_them() {
        assert_eq!(
            bind("Get-VMSnapshot", &[p("Id"), a("$id")], false)
                .unwrap()
                .set,
            "Id"
        );
        assert_eq!(
            bind(
                "Get-VMSnapshot",
                &[p("VM"), a("$vm"), p("Name"), a("x")],
                false
            )
            .unwrap()
            .set,
            "VMObject"
        );
        // Positional: Get-VMSnapshot web x = -VMName web -Name x (the default set).
        let b = bind("Get-VMSnapshot", &[a("web"), a("x")], false).unwrap();
        assert_eq!((b.set, b.parameters), ("VMName", vec!["VMName", "Name"]));
        // -VM and -Id are in no common set.
        let e = bind(
            "Get-VMSnapshot",
            &[p("VM"), a("$vm"), p("Id"), a("$id")],
            false,
        )
        .unwrap_err();
        assert!(e.starts_with("Get-VMSnapshot : Parameter set cannot be resolved using the specified named parameters."), "{e}");
        assert!(e.contains("AmbiguousParameterSet"), "{e}");
        // The default set's mandatory -VMName, missing.
        let e = bind("Get-VMSnapshot", &[p("Name"), a("x")], false).unwrap_err();
        assert!(e.contains("Cannot process command because of one or more missing mandatory parameters: VMName."), "{e}");
        assert!(e.contains("MissingMandatoryParameter"), "{e}");
        // ... but piped in, it is given.
        bind("Get-VMSnapshot", &[p("Name"), a("x")], true).unwrap();
        // Three positionals where the set has two places.
        let e = bind("Get-VMSnapshot", &[a("web"), a("x"), a("y")], false).unwrap_err();
        assert!(
            e.contains("A positional parameter cannot be found that accepts argument 'y'."),
            "{e}"
        );
        // A switch takes no value; a value parameter must have one.
        bind(
            "Remove-VMSnapshot",
            &[
                p("VMSnapshot"),
                a("$s"),
                Element::Parameter {
                    name: "Confirm".into(),
                    colon: true,
                },
                a("$false"),
            ],
            false,
        )
        .unwrap();
        let e = bind(
            "Rename-VMSnapshot",
            &[p("VMSnapshot"), a("$s"), p("NewName")],
            false,
        )
        .unwrap_err();
        assert!(
            e.contains("Missing an argument for parameter 'NewName'."),
            "{e}"
        );
        let e = bind("Get-VM", &[p("Id"), a("1"), p("Id"), a("2")], false).unwrap_err();
        assert!(e.contains("ParameterAlreadyBound"), "{e}");
    }

    #[test]
    fn script_blocks_bind_to_script_block_parameters_first() {
        assert_eq!(
            bind("Where-Object", &[a("{ $_ }")], true).unwrap().set,
            "ScriptBlockSet"
        );
        assert_eq!(
            bind("Where-Object", &[a("Name"), p("eq"), a("x")], true)
                .unwrap()
                .set,
            "EqualSet"
        );
        assert_eq!(
            bind("ForEach-Object", &[a("{ $_ }")], true).unwrap().set,
            "ScriptBlockSet"
        );
        assert_eq!(
            bind("New-Object", &[a("IO.StreamReader"), a("($x)")], false)
                .unwrap()
                .parameters,
            vec!["TypeName", "ArgumentList"]
        );
    }

    #[test]
    fn session_and_computer_sets_are_told_apart_by_their_mandatory_parameters() {
        // -InputObject is in CimInstanceSessionSet and CimInstanceComputerSet; only the second
        // has every mandatory parameter given (the first needs -CimSession).
        assert_eq!(
            bind("Get-CimInstance", &[p("InputObject"), a("$j")], false)
                .unwrap()
                .set,
            "CimInstanceComputerSet"
        );
        assert_eq!(
            bind(
                "Get-CimInstance",
                &[p("InputObject"), a("$j"), p("CimSession"), a("$s")],
                false
            )
            .unwrap()
            .set,
            "CimInstanceSessionSet"
        );
        let e = bind(
            "Get-CimInstance",
            &[p("Query"), a("q"), p("ClassName"), a("c")],
            false,
        )
        .unwrap_err();
        assert!(e.contains("Parameter set cannot be resolved"), "{e}");
    }
}
