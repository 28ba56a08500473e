# Godwit: the ranges of one disk file that changed since an RCT id, as JSON:
# {"Offsets": [...], "Lengths": [...]} (bytes of the virtual disk).
# Arguments (first line, added by Godwit): $GodwitArgs.Path (the frozen file),
# $GodwitArgs.LimitId (the RCT id of the previous reference point), $GodwitArgs.Offset,
# $GodwitArgs.Length (the region to query; less than the disk size).
# WMI (root\virtualization\v2): Msvm_ImageManagementService.GetVirtualDiskChanges(Path,
# LimitId, TargetSnapshotId (VHD Sets only: empty), ByteOffset, ByteLength) returns
# ChangedByteOffsets[], ChangedByteLengths[] and ProcessedByteLength, which may be less than
# asked, so it is called again from there until the region is covered. It may answer 4096 and
# an Msvm_ConcreteJob: waited for like the other WMI methods (the out parameters come with the
# method's result).
# Recognised verbatim by the simulator (hyperv-sim/src, SHA-256 pinned): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
try {
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

  $svc = Get-CimInstance -Namespace 'root\virtualization\v2' -ClassName Msvm_ImageManagementService
  $offsets = New-Object 'System.Collections.Generic.List[UInt64]'
  $lengths = New-Object 'System.Collections.Generic.List[UInt64]'
  $pos = [UInt64]$GodwitArgs.Offset
  $end = $pos + [UInt64]$GodwitArgs.Length
  while ($pos -lt $end) {
    $r = Invoke-CimMethod -InputObject $svc -MethodName GetVirtualDiskChanges -Arguments @{
      Path             = $GodwitArgs.Path
      LimitId          = $GodwitArgs.LimitId
      TargetSnapshotId = ''
      ByteOffset       = $pos
      ByteLength       = $end - $pos
    }
    [void](Wait-GodwitJob $r "GetVirtualDiskChanges on '$($GodwitArgs.Path)' since '$($GodwitArgs.LimitId)'")
    if ($r.ProcessedByteLength -eq 0) {
      throw "GetVirtualDiskChanges on '$($GodwitArgs.Path)' made no progress at byte $pos"
    }
    foreach ($o in $r.ChangedByteOffsets) { $offsets.Add([UInt64]$o) }
    foreach ($l in $r.ChangedByteLengths) { $lengths.Add([UInt64]$l) }
    $pos += [UInt64]$r.ProcessedByteLength
  }
  $out = [pscustomobject]@{
    Offsets = $offsets.ToArray()
    Lengths = $lengths.ToArray()
  }
  ConvertTo-Json -InputObject $out -Depth 3 -Compress
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
