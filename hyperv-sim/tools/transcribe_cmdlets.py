#!/usr/bin/env python3
"""Transcribe the parameter sets of the cmdlets Godwit's scripts call from the Markdown sources
of their Microsoft Learn pages into hyperv-sim/src/cmdlet_sets.rs.

The Learn pages are rendered from two public repositories (PlatyPS Markdown):
  - MicrosoftDocs/windows-powershell-docs  docset/winserver2025-ps/hyper-v/*.md
    (learn.microsoft.com/powershell/module/hyper-v/...?view=windowsserver2025-ps)
  - MicrosoftDocs/PowerShell-Docs          reference/5.1/<module>/*.md
    (learn.microsoft.com/powershell/module/...?view=powershell-5.1)
Each page gives, per parameter, a YAML block: Type, Parameter Sets, Aliases, Required, Position,
Accept pipeline input; and, under SYNTAX, one heading per parameter set ("(Default)" marks
DefaultParameterSetName). Nothing is inferred: what the page says is what the table holds.

Usage: transcribe_cmdlets.py WINDOWS_PS_DOCS_GIT_DIR POWERSHELL_DOCS_GIT_DIR > cmdlet_sets.rs
(git directories, read with `git show HEAD:path`; the commit of each is written in the output).
"""
import re
import subprocess
import sys

HYPERV = ["Get-VM", "Get-VMHardDiskDrive", "Get-VHD", "Get-VMSnapshot", "Rename-VMSnapshot",
          "Remove-VMSnapshot", "Checkpoint-VM"]
PS51 = {
    "CimCmdlets": ["Get-CimInstance", "Get-CimClass", "Get-CimAssociatedInstance",
                   "Invoke-CimMethod", "New-CimInstance"],
    "Microsoft.PowerShell.Utility": ["Add-Type", "ConvertTo-Json", "ConvertFrom-Json", "Get-Date",
                                     "Start-Sleep", "New-Object", "Write-Output", "Write-Error"],
    "Microsoft.PowerShell.Core": ["Where-Object", "ForEach-Object", "Import-Module"],
    "Microsoft.PowerShell.Management": ["Add-Content", "Join-Path", "Remove-Item"],
}


def git_show(git_dir, path):
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True).stdout


def git_head(git_dir):
    return subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def section(text, name):
    m = re.search(rf"^## {name}\s*$(.*?)(?=^## |\Z)", text, re.S | re.M)
    return m.group(1) if m else ""


def per_set(value, psets):
    """`True` or `True (A, B), False (C)` (PlatyPS writes per-set values so) -> {set: value}."""
    groups = re.findall(r"(\w+) \(([^)]*)\)", value)
    if not groups:
        return {s: value.strip() for s in psets}
    out = {}
    for v, names in groups:
        for n in names.split(","):
            out[n.strip()] = v
    missing = [s for s in psets if s not in out]
    assert not missing, (value, missing)
    return out


def parse(text):
    front = text.split("---", 2)[1]
    date = re.search(r"^ms\.date:\s*(\S+)", front, re.M).group(1)
    online = re.search(r"^online version:\s*(\S+)", front, re.M).group(1)
    url = "https://learn.microsoft.com/en-us/" + online.split("learn.microsoft.com/", 1)[1].split("&")[0]
    aliases = re.findall(r"^\s+- (\S+)$", front.split("title:")[0].split("aliases:")[1], re.M) \
        if "aliases:" in front else []
    syntax = section(text, "SYNTAX")
    sets, default = [], None
    # Per set, the positional parameters in the order its syntax block writes them
    # (`[-Name] <T>` or `[[-Name] <T>]`).
    syntax_order = {}
    for m in re.finditer(r"^### (\S+)[^\n]*\n+```\n(.*?)```", syntax, re.S | re.M):
        syntax_order.setdefault(m.group(1), re.findall(r"\[-(\w+)\]\s*<", m.group(2)))
    # "### Path (Default) - FileSystem provider": provider-specific blocks of one set.
    for m in re.finditer(r"^### (\S+)( \(Default\))?( - .*)?\s*$", syntax, re.M):
        if m.group(1) not in sets:
            sets.append(m.group(1))
        if m.group(2):
            default = m.group(1)
    if not sets:
        sets = ["__AllParameterSets"]
    if len(sets) == 1 and default is None:
        default = sets[0]
    params = []
    body = section(text, "PARAMETERS")
    for m in re.finditer(r"^### -(\S+)\s*$(.*?)(?=^### |\Z)", body, re.S | re.M):
        name, chunk = m.group(1), m.group(2)
        blocks = re.findall(r"```yaml\s*\n(.*?)```", chunk, re.S)
        assert blocks, name
        ty, als, ins = None, [], []
        for b in blocks:
            f = dict((k.strip(), v.strip()) for k, v in
                     (l.split(":", 1) for l in b.splitlines() if ":" in l))
            ty = f["Type"].split(".")[-1] if "Type" in f else ty
            als = [a.strip() for a in f.get("Aliases", "").split(",") if a.strip()] or als
            psets = [s.strip() for s in f["Parameter Sets"].split(",")]
            if psets == ["(All)"]:
                psets = sets
            req = per_set(f["Required"], psets)
            pos = per_set(f["Position"], psets)
            pipe = f.get("Accept pipeline input", "False").lower().startswith("true")
            for s in psets:
                p = pos[s]
                ins.append((s, req[s].lower() == "true", None if p.lower() == "named" else int(p), pipe))
        params.append((name, als, ty, ins))
    # A page whose YAML gives two parameters of one set the same position contradicts itself
    # (Rename-VMSnapshot: -VM and -Name both "Position: 0" in set VM, while its syntax block
    # reads `[-VM] <VirtualMachine> [-Name] <String> [-NewName] <String>`): for that set the
    # syntax block's order is taken, and the fix is written into the table as a note.
    notes = []
    for st in sets:
        taken = [i[2] for (_, _, _, ins) in params for i in ins if i[0] == st and i[2] is not None]
        if len(taken) != len(set(taken)):
            order = syntax_order.get(st, [])
            for k, (pname, als, ty, ins) in enumerate(params):
                params[k] = (pname, als, ty, [
                    (i[0], i[1], order.index(pname) if i[0] == st and i[2] is not None and pname in order else i[2], i[3])
                    for i in ins])
            notes.append(f"set {st}: the page's YAML repeats a position; positions from its syntax block ({', '.join(order)})")
    return url, date, aliases, sets, default, params, notes


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def emit(name, module_aliases, url, date, sets, default, params, notes):
    out = []
    for n in notes:
        out.append(f"    // {name}: {n}.")
    out.append("    Cmdlet {")
    out.append(f"        name: {rust_str(name)},")
    out.append(f"        aliases: &[{', '.join(rust_str(a) for a in module_aliases)}],")
    out.append(f"        learn: {rust_str(url)},")
    out.append(f"        page_date: {rust_str(date)},")
    out.append(f"        sets: &[{', '.join(rust_str(s) for s in sets)}],")
    out.append(f"        default_set: {('Some(' + rust_str(default) + ')') if default else 'None'},")
    out.append("        parameters: &[")
    for (p, als, ty, ins) in params:
        sw = "true" if ty == "SwitchParameter" else "false"
        out.append(f"            Param {{ name: {rust_str(p)}, aliases: &[{', '.join(rust_str(a) for a in als)}], ty: {rust_str(ty)}, switch: {sw}, sets: &[")
        for (s, req, pos, pipe) in ins:
            ps = f"Some({pos})" if pos is not None else "None"
            out.append(f"                InSet {{ set: {rust_str(s)}, mandatory: {str(req).lower()}, position: {ps}, from_pipeline: {str(pipe).lower()} }},")
        out.append("            ] },")
    out.append("        ],")
    out.append("    },")
    return "\n".join(out)


# Command aliases PowerShell 5.1 defines (Get-Alias on Windows PowerShell 5.1; the pages list most
# in their front matter, older pages do not).
BUILTIN_ALIASES = {
    "ForEach-Object": ["%", "foreach"], "Where-Object": ["?", "where"],
    "Write-Output": ["echo", "write"], "Start-Sleep": ["sleep"], "Import-Module": ["ipmo"],
    "Add-Content": ["ac"], "Remove-Item": ["del", "erase", "rd", "ri", "rm", "rmdir"],
    "Get-CimInstance": ["gcim"], "Invoke-CimMethod": ["icim"], "New-CimInstance": ["ncim"],
    "Get-VMSnapshot": ["Get-VMCheckpoint"], "Rename-VMSnapshot": ["Rename-VMCheckpoint"],
    "Remove-VMSnapshot": ["Remove-VMCheckpoint"],
}


def main():
    wps, psd = sys.argv[1], sys.argv[2]
    print("// @generated by hyperv-sim/tools/transcribe_cmdlets.py from the Markdown sources of the")
    print("// Microsoft Learn pages cited per cmdlet; do not edit by hand, rerun the tool.")
    print(f"// MicrosoftDocs/windows-powershell-docs @ {git_head(wps)} (docset/winserver2025-ps/hyper-v)")
    print(f"// MicrosoftDocs/PowerShell-Docs @ {git_head(psd)} (reference/5.1)")
    print("use crate::cmdlets::{Cmdlet, InSet, Param};\n")
    print("pub const GENERATED: &[Cmdlet] = &[")
    jobs = [(n, f"docset/winserver2025-ps/Hyper-V/{n}.md", wps) for n in HYPERV]
    for mod, names in PS51.items():
        jobs += [(n, f"reference/5.1/{mod}/{n}.md", psd) for n in names]
    for name, path, git in jobs:
        url, date, aliases, sets, default, params, notes = parse(git_show(git, path))
        al = list(dict.fromkeys(BUILTIN_ALIASES.get(name, []) + aliases))
        print(emit(name, al, url, date, sets, default, params, notes))
    print("];")


if __name__ == "__main__":
    main()
