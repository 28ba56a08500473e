//! The parameters of every cmdlet the scripts (and the WinRM client's piece delivery) call, as
//! Windows PowerShell 5.1 on Windows Server 2016-2025 has them: each table is the union of the
//! cmdlet's parameter sets on the Microsoft Learn page cited with it (the 5.1 /
//! windowsserver2025-ps version of the page), with the aliases the page lists. Parameters that
//! only PowerShell 6/7 added (`ForEach-Object -Parallel`, `ConvertTo-Json -AsArray`,
//! `ConvertFrom-Json -AsHashtable`, `Get-Date -AsUTC`, the common parameter `-ProgressAction`,
//! `Join-Path -AdditionalChildPath` …) are deliberately absent: 5.1 refuses them.
//!
//! Binding rules: [`crate::pwsh::bind`].

/// A cmdlet's parameters: (name, aliases).
pub type Params = &'static [(&'static str, &'static [&'static str])];

#[derive(Debug)]
pub struct Cmdlet {
    pub name: &'static str,
    /// Other names of the command (`%` for ForEach-Object).
    pub aliases: &'static [&'static str],
    /// The Microsoft Learn page the parameters come from.
    pub learn: &'static str,
    pub parameters: Params,
    /// SupportsShouldProcess: takes `-WhatIf` and `-Confirm`.
    pub should_process: bool,
}

/// about_CommonParameters (5.1): every cmdlet has them.
/// <https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.core/about/about_commonparameters?view=powershell-5.1>
pub const COMMON: Params = &[
    ("Debug", &["db"]),
    ("ErrorAction", &["ea"]),
    ("ErrorVariable", &["ev"]),
    ("InformationAction", &["infa"]),
    ("InformationVariable", &["iv"]),
    ("OutBuffer", &["ob"]),
    ("OutVariable", &["ov"]),
    ("PipelineVariable", &["pv"]),
    ("Verbose", &["vb"]),
    ("WarningAction", &["wa"]),
    ("WarningVariable", &["wv"]),
];

/// The risk-mitigation parameters of a SupportsShouldProcess cmdlet (same page).
pub const SHOULD_PROCESS: Params = &[("WhatIf", &["wi"]), ("Confirm", &["cf"])];

impl Cmdlet {
    /// Its own parameters, the common ones and, if it supports them, `-WhatIf`/`-Confirm`.
    pub fn all_parameters(&self) -> Vec<(&'static str, &'static [&'static str])> {
        let mut v: Vec<_> = self
            .parameters
            .iter()
            .chain(COMMON.iter())
            .copied()
            .collect();
        if self.should_process {
            v.extend(SHOULD_PROCESS.iter().copied());
        }
        v
    }
}

/// The cmdlet `name` (or alias) is, case-insensitively.
pub fn find(name: &str) -> Option<&'static Cmdlet> {
    CMDLETS.iter().find(|c| {
        c.name.eq_ignore_ascii_case(name) || c.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    })
}

macro_rules! params {
    ($($name:literal $( [ $($alias:literal),* ] )?),* $(,)?) => {
        &[$(($name, &[$($($alias),*)?])),*]
    };
}

pub const CMDLETS: &[Cmdlet] = &[
    // --- Hyper-V module ---
    Cmdlet {
        name: "Get-VM",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/hyper-v/get-vm?view=windowsserver2025-ps",
        parameters: params![
            "Name"["VMName"],
            "Id",
            "ClusterObject",
            "CimSession",
            "ComputerName",
            "Credential"
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Get-VMHardDiskDrive",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/hyper-v/get-vmharddiskdrive?view=windowsserver2025-ps",
        parameters: params![
            "VMName",
            "VM",
            "VMSnapshot",
            "VMDriveController",
            "ControllerLocation",
            "ControllerNumber",
            "ControllerType",
            "CimSession",
            "ComputerName",
            "Credential"
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Get-VHD",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/hyper-v/get-vhd?view=windowsserver2025-ps",
        parameters: params![
            "Path"["FullName"],
            "DiskNumber"["Number"],
            "VMId",
            "CimSession",
            "ComputerName",
            "Credential"
        ],
        should_process: false,
    },
    Cmdlet {
        // VMName, VMObject, Id, Parent, Child sets: no -VMId.
        name: "Get-VMSnapshot",
        aliases: &["Get-VMCheckpoint"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/hyper-v/get-vmsnapshot?view=windowsserver2025-ps",
        parameters: params![
            "VMName",
            "VM",
            "Name",
            "Id",
            "ParentOf",
            "ChildOf",
            "SnapshotType",
            "CimSession",
            "ComputerName",
            "Credential"
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Rename-VMSnapshot",
        aliases: &["Rename-VMCheckpoint"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/hyper-v/rename-vmsnapshot?view=windowsserver2025-ps",
        parameters: params![
            "VMSnapshot",
            "VM",
            "VMName",
            "Name",
            "NewName",
            "Passthru",
            "CimSession",
            "ComputerName",
            "Credential"
        ],
        should_process: true,
    },
    Cmdlet {
        name: "Remove-VMSnapshot",
        aliases: &["Remove-VMCheckpoint"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/hyper-v/remove-vmsnapshot?view=windowsserver2025-ps",
        parameters: params![
            "VMSnapshot",
            "VM",
            "VMName",
            "Name",
            "IncludeAllChildSnapshots"["IncludeAllChildCheckpoints"],
            "AsJob",
            "Passthru",
            "CimSession",
            "ComputerName",
            "Credential"
        ],
        should_process: true,
    },
    Cmdlet {
        name: "Checkpoint-VM",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/hyper-v/checkpoint-vm?view=windowsserver2025-ps",
        parameters: params![
            "VM",
            "Name",
            "SnapshotName"["CheckpointName"],
            "AsJob",
            "Passthru",
            "CimSession",
            "ComputerName",
            "Credential"
        ],
        should_process: true,
    },
    // --- CimCmdlets ---
    Cmdlet {
        name: "Get-CimInstance",
        aliases: &["gcim"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/cimcmdlets/get-ciminstance?view=powershell-5.1",
        parameters: params![
            "ClassName", "Namespace", "Filter", "Query", "QueryDialect", "InputObject" ["CimInstance"],
            "KeyOnly", "Property" ["SelectProperties"], "Shallow", "CimSession",
            "ComputerName" ["CN", "ServerName"], "OperationTimeoutSec" ["OT"], "ResourceUri"
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Get-CimClass",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/cimcmdlets/get-cimclass?view=powershell-5.1",
        parameters: params![
            "ClassName", "Namespace", "MethodName", "PropertyName", "QualifierName", "CimSession",
            "ComputerName" ["CN", "ServerName"], "OperationTimeoutSec" ["OT"]
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Get-CimAssociatedInstance",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/cimcmdlets/get-cimassociatedinstance?view=powershell-5.1",
        parameters: params![
            "InputObject" ["CimInstance"], "Association", "ResultClassName", "Namespace", "KeyOnly",
            "CimSession", "ComputerName" ["CN", "ServerName"], "OperationTimeoutSec" ["OT"], "ResourceUri"
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Invoke-CimMethod",
        aliases: &["icim"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/cimcmdlets/invoke-cimmethod?view=powershell-5.1",
        parameters: params![
            "ClassName", "CimClass", "InputObject" ["CimInstance"], "Query", "QueryDialect",
            "MethodName" ["Name"], "Arguments", "Namespace", "CimSession",
            "ComputerName" ["CN", "ServerName"], "OperationTimeoutSec" ["OT"], "ResourceUri"
        ],
        should_process: true,
    },
    Cmdlet {
        name: "New-CimInstance",
        aliases: &["ncim"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/cimcmdlets/new-ciminstance?view=powershell-5.1",
        parameters: params![
            "ClassName", "CimClass", "Property" ["Arguments"], "Key", "Namespace",
            "ClientOnly" ["Local"], "CimSession", "ComputerName" ["CN", "ServerName"],
            "OperationTimeoutSec" ["OT"], "ResourceUri"
        ],
        should_process: true,
    },
    // --- Microsoft.PowerShell.Utility / Management / Core (5.1) ---
    Cmdlet {
        name: "Add-Type",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.utility/add-type?view=powershell-5.1",
        parameters: params![
            "TypeDefinition",
            "Name",
            "MemberDefinition",
            "Namespace"["NS"],
            "UsingNamespace"["Using"],
            "Path",
            "LiteralPath"["PSPath"],
            "AssemblyName"["AN"],
            "Language",
            "ReferencedAssemblies"["RA"],
            "CodeDomProvider"["Provider"],
            "CompilerParameters"["CP"],
            "OutputAssembly"["OA"],
            "OutputType"["OT"],
            "PassThru",
            "IgnoreWarnings"
        ],
        should_process: false,
    },
    Cmdlet {
        name: "ConvertTo-Json",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.utility/convertto-json?view=powershell-5.1",
        parameters: params!["InputObject", "Depth", "Compress"],
        should_process: false,
    },
    Cmdlet {
        name: "ConvertFrom-Json",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.utility/convertfrom-json?view=powershell-5.1",
        parameters: params!["InputObject"],
        should_process: false,
    },
    Cmdlet {
        name: "Get-Date",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.utility/get-date?view=powershell-5.1",
        parameters: params![
            "Date"["LastWriteTime"],
            "Year",
            "Month",
            "Day",
            "Hour",
            "Minute",
            "Second",
            "Millisecond",
            "DisplayHint",
            "Format",
            "UFormat"
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Start-Sleep",
        aliases: &["sleep"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.utility/start-sleep?view=powershell-5.1",
        parameters: params!["Seconds", "Milliseconds"],
        should_process: false,
    },
    Cmdlet {
        name: "New-Object",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.utility/new-object?view=powershell-5.1",
        parameters: params![
            "TypeName",
            "ArgumentList"["Args"],
            "Property",
            "ComObject",
            "Strict"
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Write-Output",
        aliases: &["echo", "write"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.utility/write-output?view=powershell-5.1",
        parameters: params!["InputObject", "NoEnumerate"],
        should_process: false,
    },
    Cmdlet {
        name: "Write-Error",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.utility/write-error?view=powershell-5.1",
        parameters: params![
            "Message"["Msg"],
            "Exception",
            "ErrorRecord",
            "Category",
            "ErrorId",
            "TargetObject",
            "RecommendedAction",
            "CategoryActivity"["Activity"],
            "CategoryReason"["Reason"],
            "CategoryTargetName"["TargetName"],
            "CategoryTargetType"["TargetType"]
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Where-Object",
        aliases: &["?", "where"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.core/where-object?view=powershell-5.1",
        parameters: params![
            "FilterScript",
            "InputObject",
            "Property",
            "Value",
            "EQ"["IEQ"],
            "CEQ",
            "NE"["INE"],
            "CNE",
            "GT"["IGT"],
            "CGT",
            "LT"["ILT"],
            "CLT",
            "GE"["IGE"],
            "CGE",
            "LE"["ILE"],
            "CLE",
            "Like"["ILike"],
            "CLike",
            "NotLike"["INotLike"],
            "CNotLike",
            "Match"["IMatch"],
            "CMatch",
            "NotMatch"["INotMatch"],
            "CNotMatch",
            "Contains"["IContains"],
            "CContains",
            "NotContains"["INotContains"],
            "CNotContains",
            "In"["IIn"],
            "CIn",
            "NotIn"["INotIn"],
            "CNotIn",
            "Is",
            "IsNot"
        ],
        should_process: false,
    },
    Cmdlet {
        // No -Parallel, -ThrottleLimit, -TimeoutSeconds, -AsJob in 5.1.
        name: "ForEach-Object",
        aliases: &["%", "foreach"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.core/foreach-object?view=powershell-5.1",
        parameters: params![
            "Process",
            "Begin",
            "End",
            "RemainingScripts",
            "InputObject",
            "MemberName",
            "ArgumentList"["Args"]
        ],
        should_process: true,
    },
    Cmdlet {
        name: "Import-Module",
        aliases: &["ipmo"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.core/import-module?view=powershell-5.1",
        parameters: params![
            "Name",
            "FullyQualifiedName",
            "Assembly",
            "ModuleInfo",
            "Global",
            "Prefix",
            "Function",
            "Cmdlet",
            "Variable",
            "Alias",
            "Force",
            "PassThru",
            "AsCustomObject",
            "MinimumVersion"["Version"],
            "MaximumVersion",
            "RequiredVersion",
            "ArgumentList"["Args"],
            "DisableNameChecking",
            "NoClobber",
            "Scope",
            "PSSession",
            "CimSession",
            "CimResourceUri",
            "CimNamespace"
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Add-Content",
        aliases: &["ac"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.management/add-content?view=powershell-5.1",
        parameters: params![
            "Path",
            "LiteralPath"["PSPath"],
            "Value",
            "PassThru",
            "Filter",
            "Include",
            "Exclude",
            "Force",
            "Credential",
            "UseTransaction"["usetx"],
            "NoNewline",
            "Encoding",
            "Stream"
        ],
        should_process: true,
    },
    Cmdlet {
        // No -AdditionalChildPath in 5.1.
        name: "Join-Path",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.management/join-path?view=powershell-5.1",
        parameters: params!["Path"["PSPath"], "ChildPath", "Resolve", "Credential"],
        should_process: false,
    },
    Cmdlet {
        name: "Remove-Item",
        aliases: &["del", "erase", "rd", "ri", "rm", "rmdir"],
        learn: "https://learn.microsoft.com/en-us/powershell/module/microsoft.powershell.management/remove-item?view=powershell-5.1",
        parameters: params![
            "Path",
            "LiteralPath"["PSPath"],
            "Filter",
            "Include",
            "Exclude",
            "Recurse",
            "Force",
            "Credential",
            "UseTransaction"["usetx"],
            "Stream"
        ],
        should_process: true,
    },
    // --- VirtualMachineManager (SCVMM 2016-2025 console) ---
    Cmdlet {
        name: "Get-SCVMMServer",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/virtualmachinemanager/get-scvmmserver",
        parameters: params![
            "ComputerName",
            "TCPPort",
            "Credential",
            "UserRoleName",
            "UserRoleID",
            "ForOnBehalfOf",
            "SetAsDefault"
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Get-SCVirtualMachine",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/virtualmachinemanager/get-scvirtualmachine",
        parameters: params![
            "VMMServer",
            "Name",
            "ID",
            "VMHost",
            "VMHostGroup",
            "Cloud",
            "All",
            "OnBehalfOfUser",
            "OnBehalfOfUserRole"
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Get-SCVirtualDiskDrive",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/virtualmachinemanager/get-scvirtualdiskdrive",
        parameters: params![
            "VMMServer",
            "All",
            "ID",
            "VM",
            "VMTemplate",
            "OnBehalfOfUser",
            "OnBehalfOfUserRole"
        ],
        should_process: false,
    },
    Cmdlet {
        name: "Get-SCVMHost",
        aliases: &[],
        learn: "https://learn.microsoft.com/en-us/powershell/module/virtualmachinemanager/get-scvmhost",
        parameters: params![
            "VMMServer",
            "ComputerName",
            "ID",
            "VMHostGroup",
            "OnBehalfOfUser",
            "OnBehalfOfUserRole"
        ],
        should_process: false,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_cites_its_page_and_names_each_parameter_once() {
        for c in CMDLETS {
            assert!(
                c.learn.starts_with("https://learn.microsoft.com/"),
                "{}",
                c.name
            );
            let all = c.all_parameters();
            for (i, (p, _)) in all.iter().enumerate() {
                assert!(
                    !all[i + 1..].iter().any(|(q, _)| q.eq_ignore_ascii_case(p)),
                    "{}: -{p} twice",
                    c.name
                );
            }
        }
    }
}
