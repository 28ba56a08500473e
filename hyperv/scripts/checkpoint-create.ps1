# Godwit: create a recovery checkpoint (the kind backup products make) of one VM, name it, and
# print it, with the disks it froze, as JSON. Or, with $GodwitArgs.Resume, print the checkpoint
# of an unfinished earlier attempt if it is still there (a retry resumes its spool).
# Arguments (first line, added by Godwit): $GodwitArgs.VmId, $GodwitArgs.Name (godwit-...),
# $GodwitArgs.Resume (the kept checkpoint's Id, or empty).
# WMI (root\virtualization\v2): Msvm_VirtualSystemSnapshotService.CreateSnapshot(AffectedSystem,
# SnapshotSettings = an embedded Msvm_VirtualSystemSnapshotSettingData with ConsistencyLevel,
# SnapshotType = 32768: a recovery snapshot, the only kind ConvertToReferencePoint accepts), as
# in Microsoft's xHyper-VBackup sample (MicrosoftDocs/Virtualization-Documentation,
# hyperv-samples/taylorb-wmi/xhypervbackup). It answers 0, or 4096 and an Msvm_ConcreteJob to
# wait for (JobState 7 = Completed; 8 Terminated, 9 Killed, 10 Exception = failed).
# The VM's CheckpointType decides the consistency: Production asks for application consistent
# (VSS in the guest) and falls back to crash consistent, as Hyper-V does for production
# checkpoints; ProductionOnly fails instead; Standard is crash consistent; Disabled is refused.
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

  function Write-GodwitCheckpoint($snap, [string]$consistency, [bool]$resumed) {
    $disks = @($snap.HardDrives | ForEach-Object {
      [pscustomobject]@{
        ControllerType     = [string]$_.ControllerType
        ControllerNumber   = $_.ControllerNumber
        ControllerLocation = $_.ControllerLocation
        Path               = $_.Path
      }
    })
    $out = [pscustomobject]@{
      Id             = [string]$snap.Id
      Name           = $snap.Name
      CheckpointType = [string]$vm.CheckpointType
      SnapshotType   = [string]$snap.SnapshotType
      Consistency    = $consistency
      Resumed        = $resumed
      Disks          = $disks
    }
    ConvertTo-Json -InputObject $out -Depth 4 -Compress
  }

  $vm = Get-VM -Id $GodwitArgs.VmId
  if ($GodwitArgs.Resume) {
    $kept = @(Get-VMSnapshot -VM $vm -Name $GodwitArgs.Name -ErrorAction SilentlyContinue | Where-Object { [string]$_.Id -eq $GodwitArgs.Resume })
    if ($kept.Count -eq 1) {
      Write-GodwitCheckpoint $kept[0] '' $true
      exit 0
    }
  }
  $type = [string]$vm.CheckpointType
  if ($type -eq 'Disabled') {
    throw "checkpoints are disabled on VM '$($vm.Name)' (CheckpointType Disabled); enable Production checkpoints"
  }
  # ConsistencyLevel: 1 = application consistent, 2 = crash consistent.
  $levels = @(1, 2)
  if ($type -eq 'ProductionOnly') { $levels = @(1) }
  if ($type -eq 'Standard') { $levels = @(2) }
  $cs = Get-CimInstance -Namespace $ns -ClassName Msvm_ComputerSystem -Filter "Name='$([string]$vm.Id)'"
  $svc = Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemSnapshotService
  $class = Get-CimClass -Namespace $ns -ClassName Msvm_VirtualSystemSnapshotSettingData
  $serializer = [Microsoft.Management.Infrastructure.Serialization.CimSerializer]::Create()
  $made = $null
  $level = 0
  $why = @()
  foreach ($level in $levels) {
    $settings = New-CimInstance -CimClass $class -ClientOnly -Property @{ ConsistencyLevel = [byte]$level; IgnoreNonSnapshottableDisks = $false }
    $embedded = [Text.Encoding]::Unicode.GetString($serializer.Serialize($settings, [Microsoft.Management.Infrastructure.Serialization.InstanceSerializationOptions]::None))
    try {
      $r = Invoke-CimMethod -InputObject $svc -MethodName CreateSnapshot -Arguments @{
        AffectedSystem   = $cs
        SnapshotSettings = $embedded
        SnapshotType     = [uint16]32768
      }
      $job = Wait-GodwitJob $r 'CreateSnapshot'
      if ($job) {
        $made = @(Get-CimAssociatedInstance -InputObject $job -ResultClassName Msvm_VirtualSystemSettingData)[0]
      } else {
        $made = Get-CimInstance -InputObject $r.ResultingSnapshot
      }
      break
    } catch {
      $why += [string]$_
    }
  }
  if (-not $made) {
    throw "Checkpoint-VM : could not create a recovery checkpoint of '$($vm.Name)': $($why -join '; ')"
  }
  # The snapshot's InstanceID is 'Microsoft:<checkpoint Id>'.
  $id = ([string]$made.InstanceID) -replace '^Microsoft:', ''
  $snap = Get-VMSnapshot -Id $id
  Rename-VMSnapshot -VMSnapshot $snap -NewName $GodwitArgs.Name
  $snap = Get-VMSnapshot -Id $id
  $consistency = 'CrashConsistent'
  if ($level -eq 1) { $consistency = 'ApplicationConsistent' }
  Write-GodwitCheckpoint $snap $consistency $false
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
