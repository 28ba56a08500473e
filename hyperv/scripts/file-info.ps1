# Godwit: the length and last-write time of one file on the host (a frozen VHD/VHDX or its
# parent), as JSON.
# Arguments (first line, added by Godwit): $GodwitArgs.Path.
# Recognised verbatim by the simulator (hyperv-sim/src): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
try {
  $f = [IO.File]::Open($GodwitArgs.Path, 'Open', 'Read', 'ReadWrite')
  try { $len = $f.Length } finally { $f.Dispose() }
  # The last-write time (UTC, 100 ns ticks) tells the connector whether bytes it spooled from
  # this file in an earlier run are still this file's.
  $ticks = [IO.File]::GetLastWriteTimeUtc($GodwitArgs.Path).Ticks
  ConvertTo-Json -InputObject ([pscustomobject]@{ Length = $len; LastWriteTicks = $ticks }) -Compress
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
