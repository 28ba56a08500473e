# Godwit: turn the godwit- recovery checkpoint of one VM into a Resilient Change Tracking
# reference point (Hyper-V deletes the checkpoint; only recovery checkpoints convert) and print,
# for every disk the checkpoint froze, its RCT id, as JSON:
# {"ReferencePoint": "...", "Disks": [{"Path": "...", "RctId": "rctX:..."}]}.
# The previous reference point of the VM (Godwit's, from the last cycle) is destroyed after.
# Arguments (first line, added by Godwit): $GodwitArgs.VmId, $GodwitArgs.Name (godwit-...),
# $GodwitArgs.Previous (the InstanceID of the previous reference point, or empty).
# WMI (root\virtualization\v2): Msvm_VirtualSystemSnapshotService.ConvertToReferencePoint
# (AffectedSnapshot) answers 0 or 4096 + an Msvm_ConcreteJob; the Msvm_VirtualSystemReferencePoint
# is associated with the job (as in Microsoft's xHyper-VBackup sample); its
# VirtualDiskIdentifiers[] and ResilientChangeTrackingIdentifiers[] are parallel arrays, each
# identifier matched with Get-VHD's DiskIdentifier of the frozen files.
# Msvm_VirtualSystemReferencePointService.DestroyReferencePoint(AffectedReferencePoint) removes
# the previous one.
# Recognised verbatim by the simulator (hyperv-sim/src, SHA-256 pinned): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
try {
  $ns = 'root\virtualization\v2'

  # A WMI method's result: 0 = done (no job), 4096 = wait for its job; returns the job.
  function Wait-GodwitJob($result, [string]$what) {
    if ($result.ReturnValue -eq 0) { return $null }
    if ($result.ReturnValue -ne 4096) { throw "$what failed with return value $($result.ReturnValue)" }
    $job = Get-CimInstance -InputObject $result.Job
    $deadline = (Get-Date).AddMinutes(30)
    # 2 New, 3 Starting, 4 Running, 5 Suspended, 6 Shutting Down
    while ($job.JobState -lt 7) {
      if ((Get-Date) -gt $deadline) { throw "$what still not done after 30 minutes (job state $($job.JobState))" }
      Start-Sleep -Milliseconds 500
      $job = Get-CimInstance -InputObject $job
    }
    if ($job.JobState -ne 7) {
      throw "$what failed (job state $($job.JobState), error $($job.ErrorCode)): $($job.ErrorDescription)"
    }
    return $job
  }

  # Get-VMSnapshot has no -VMId parameter (its sets: -VMName, -VM, -Id, -ParentOf, -ChildOf).
  $snap = Get-VMSnapshot -VM (Get-VM -Id $GodwitArgs.VmId) -Name $GodwitArgs.Name
  $byId = @{}
  foreach ($d in $snap.HardDrives) {
    $key = ([string](Get-VHD -Path $d.Path).DiskIdentifier).Trim('{}').ToUpperInvariant()
    $byId[$key] = $d.Path
  }
  $svc = Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemSnapshotService
  $cim = Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemSettingData -Filter "InstanceID='Microsoft:$([string]$snap.Id)'"
  $r = Invoke-CimMethod -InputObject $svc -MethodName ConvertToReferencePoint -Arguments @{ AffectedSnapshot = $cim }
  $job = Wait-GodwitJob $r 'ConvertToReferencePoint'
  if ($job) {
    $rp = @(Get-CimAssociatedInstance -InputObject $job -ResultClassName Msvm_VirtualSystemReferencePoint)[0]
  } else {
    $rp = Get-CimInstance -InputObject $r.ResultingReferencePoint
  }
  $disks = @()
  for ($i = 0; $i -lt $rp.VirtualDiskIdentifiers.Count; $i++) {
    $key = ([string]$rp.VirtualDiskIdentifiers[$i]).Trim('{}').ToUpperInvariant()
    $disks += [pscustomobject]@{
      Path  = $byId[$key]
      RctId = [string]$rp.ResilientChangeTrackingIdentifiers[$i]
    }
  }
  $destroyed = $false
  if ($GodwitArgs.Previous) {
    $old = @(Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemReferencePoint | Where-Object { [string]$_.InstanceID -eq $GodwitArgs.Previous })
    if ($old.Count -eq 1) {
      $rps = Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemReferencePointService
      $d = Invoke-CimMethod -InputObject $rps -MethodName DestroyReferencePoint -Arguments @{ AffectedReferencePoint = $old[0] }
      [void](Wait-GodwitJob $d 'DestroyReferencePoint')
      $destroyed = $true
    }
  }
  $out = [pscustomobject]@{
    ReferencePoint    = [string]$rp.InstanceID
    Disks             = $disks
    DestroyedPrevious = $destroyed
  }
  ConvertTo-Json -InputObject $out -Depth 4 -Compress
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
