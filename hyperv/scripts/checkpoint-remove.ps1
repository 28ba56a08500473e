# Godwit: remove a Godwit checkpoint (by name) and wait for the disk merge to finish.
# Arguments (first line, added by Godwit): $GodwitArgs.VmId, $GodwitArgs.Name (godwit-...).
# Prints {"Removed": N}; a VM or checkpoint that no longer exists is not an error (sweeps).
# Recognised verbatim by the simulator (hyperv-sim/src): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
try {
  if (-not $GodwitArgs.Name.StartsWith('godwit-')) { throw "refusing to remove checkpoint '$($GodwitArgs.Name)': not a Godwit checkpoint" }
  $vm = Get-VM -Id $GodwitArgs.VmId -ErrorAction SilentlyContinue
  $snaps = @()
  if ($vm) { $snaps = @(Get-VMSnapshot -VM $vm -Name $GodwitArgs.Name -ErrorAction SilentlyContinue) }
  foreach ($s in $snaps) { Remove-VMSnapshot -VMSnapshot $s -Confirm:$false }
  $deadline = (Get-Date).AddMinutes(30)
  # Wait by the operational state (enum names are not localized; the Status text is).
  while ($vm -and (@((Get-VM -Id $GodwitArgs.VmId).OperationalStatus | ForEach-Object { [string]$_ }) -contains 'MergingDisks')) {
    if ((Get-Date) -gt $deadline) { throw "the disks of VM '$($vm.Name)' are still merging after 30 minutes" }
    Start-Sleep -Seconds 2
  }
  ConvertTo-Json -InputObject ([pscustomobject]@{ Removed = $snaps.Count }) -Compress
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
