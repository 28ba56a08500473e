# Godwit: the length of one file on the host (a frozen VHD/VHDX or its parent), as JSON.
# Arguments (first line, added by Godwit): $GodwitArgs.Path.
# Recognised verbatim by the simulator (hyperv/src/sim): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
try {
  $f = [IO.File]::Open($GodwitArgs.Path, 'Open', 'Read', 'ReadWrite')
  try { $len = $f.Length } finally { $f.Dispose() }
  ConvertTo-Json -InputObject ([pscustomobject]@{ Length = $len }) -Compress
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
