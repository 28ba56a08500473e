# Godwit: turn the godwit- checkpoint of one VM into a Resilient Change Tracking reference point
# (Hyper-V merges the checkpoint away) and print, for every disk the checkpoint froze, its RCT
# id, as JSON: {"ReferencePoint": "...", "Disks": [{"Path": "...", "RctId": "rctX:..."}]}.
# Arguments (first line, added by Godwit): $GodwitArgs.VmId, $GodwitArgs.Name (godwit-...).
# WMI (root\virtualization\v2): Msvm_VirtualSystemSnapshotService.ConvertToReferencePoint
# (AffectedSnapshot) yields an Msvm_VirtualSystemReferencePoint whose VirtualDiskIdentifiers[]
# and ResilientChangeTrackingIdentifiers[] are parallel arrays; each identifier is matched with
# Get-VHD's DiskIdentifier of the frozen files.
# Recognised verbatim by the simulator (hyperv/src/sim): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
try {
  $ns = 'root\virtualization\v2'
  # Get-VMSnapshot has no -VMId parameter (its sets: -VMName, -VM, -Id, -ParentOf, -ChildOf).
  $snap = Get-VMSnapshot -VM (Get-VM -Id $GodwitArgs.VmId) -Name $GodwitArgs.Name
  $byId = @{}
  foreach ($d in $snap.HardDrives) {
    $key = ([string](Get-VHD -Path $d.Path).DiskIdentifier).Trim('{}').ToUpperInvariant()
    $byId[$key] = $d.Path
  }
  $svc = Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemSnapshotService
  $cim = Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemSettingData -Filter "InstanceID='Microsoft:$($snap.Id)'"
  $r = Invoke-CimMethod -InputObject $svc -MethodName ConvertToReferencePoint -Arguments @{ AffectedSnapshot = $cim }
  if ($r.ReturnValue -eq 4096) {
    $job = Get-CimInstance -InputObject $r.Job
    while ($job.JobState -lt 7) {
      Start-Sleep -Milliseconds 500
      $job = Get-CimInstance -InputObject $job
    }
    if ($job.JobState -ne 7) {
      throw "ConvertToReferencePoint failed: $($job.ErrorDescription)"
    }
    $rp = Get-CimAssociatedInstance -InputObject $job -ResultClassName Msvm_VirtualSystemReferencePoint
  } elseif ($r.ReturnValue -eq 0) {
    $rp = Get-CimInstance -InputObject $r.ResultingReferencePoint
  } else {
    throw "ConvertToReferencePoint failed with return value $($r.ReturnValue)"
  }
  $disks = @()
  for ($i = 0; $i -lt $rp.VirtualDiskIdentifiers.Count; $i++) {
    $key = ([string]$rp.VirtualDiskIdentifiers[$i]).Trim('{}').ToUpperInvariant()
    $disks += [pscustomobject]@{
      Path  = $byId[$key]
      RctId = [string]$rp.ResilientChangeTrackingIdentifiers[$i]
    }
  }
  $out = [pscustomobject]@{
    ReferencePoint = [string]$rp.InstanceID
    Disks          = $disks
  }
  ConvertTo-Json -InputObject $out -Depth 4 -Compress
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
