# Godwit: remove a Godwit checkpoint (by name) and wait for the disk merge to finish.
# Arguments (first line, added by Godwit): $GodwitArgs.VmId, $GodwitArgs.Name (godwit-...).
# Prints {"Removed": N}; a VM or checkpoint that no longer exists is not an error (sweeps).
# Recognised verbatim by the simulator (hyperv/src/sim): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
[Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false
try {
  if (-not $GodwitArgs.Name.StartsWith('godwit-')) { throw "refusing to remove checkpoint '$($GodwitArgs.Name)': not a Godwit checkpoint" }
  $vm = Get-VM -Id $GodwitArgs.VmId -ErrorAction SilentlyContinue
  $snaps = @()
  if ($vm) { $snaps = @(Get-VMSnapshot -VM $vm -Name $GodwitArgs.Name -ErrorAction SilentlyContinue) }
  foreach ($s in $snaps) { Remove-VMSnapshot -VMSnapshot $s -Confirm:$false }
  $deadline = (Get-Date).AddMinutes(30)
  while ($vm -and ([string](Get-VM -Id $GodwitArgs.VmId).Status) -like '*Merging*') {
    if ((Get-Date) -gt $deadline) { throw "the disks of VM '$($vm.Name)' are still merging after 30 minutes" }
    Start-Sleep -Seconds 2
  }
  ConvertTo-Json -InputObject ([pscustomobject]@{ Removed = $snaps.Count }) -Compress
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
