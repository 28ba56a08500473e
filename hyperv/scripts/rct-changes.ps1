# Godwit: the ranges of one disk file that changed since an RCT id, as JSON:
# {"Offsets": [...], "Lengths": [...]} (bytes of the virtual disk).
# Arguments (first line, added by Godwit): $GodwitArgs.Path (the frozen file),
# $GodwitArgs.LimitId (the RCT id of the previous reference point), $GodwitArgs.Offset,
# $GodwitArgs.Length (the region to query; less than the disk size).
# WMI (root\virtualization\v2): Msvm_ImageManagementService.GetVirtualDiskChanges(Path,
# LimitId, TargetSnapshotId (VHD Sets only: empty), ByteOffset, ByteLength) returns
# ChangedByteOffsets[], ChangedByteLengths[] and ProcessedByteLength, which may be less than
# asked, so it is called again from there until the region is covered.
# Recognised verbatim by the simulator (hyperv/src/sim): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
try {
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
    if ($r.ReturnValue -ne 0) {
      throw "GetVirtualDiskChanges on '$($GodwitArgs.Path)' since '$($GodwitArgs.LimitId)' failed with return value $($r.ReturnValue)"
    }
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
