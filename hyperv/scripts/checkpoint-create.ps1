# Godwit: create a checkpoint of one VM and print it, with the disks it froze, as JSON.
# Arguments (first line, added by Godwit): $GodwitArgs.VmId, $GodwitArgs.Name (godwit-...).
# The VM's CheckpointType decides the kind: Production makes a production (VSS) checkpoint and
# falls back to a standard one when the guest cannot; ProductionOnly fails instead; Standard is
# a standard checkpoint; Disabled is refused.
# Recognised verbatim by the simulator (hyperv/src/sim): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
try {
  $vm = Get-VM -Id $GodwitArgs.VmId
  $type = [string]$vm.CheckpointType
  if ($type -eq 'Disabled') {
    throw "checkpoints are disabled on VM '$($vm.Name)' (CheckpointType Disabled); enable Production checkpoints"
  }
  $snap = Checkpoint-VM -VM $vm -SnapshotName $GodwitArgs.Name -Passthru
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
    CheckpointType = $type
    SnapshotType   = [string]$snap.SnapshotType
    Disks          = $disks
  }
  ConvertTo-Json -InputObject $out -Depth 4 -Compress
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
