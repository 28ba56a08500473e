# Godwit: read bytes [Offset, Offset+Length) of one file on the host and print
# "<sha256 hex>:<base64>" (the first data path; see docs/hyperv.md). The file is opened for
# reading with FileShare.ReadWrite, as a frozen checkpoint disk may be.
# Arguments (first line, added by Godwit): $GodwitArgs.Path, .Offset, .Length.
# Recognised verbatim by the simulator (hyperv-sim/src): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
try {
  $off = [int64]$GodwitArgs.Offset
  $len = [int]$GodwitArgs.Length
  $f = [IO.File]::Open($GodwitArgs.Path, 'Open', 'Read', 'ReadWrite')
  try {
    if ($off + $len -gt $f.Length) { throw "range $off+$len is past the end of $($GodwitArgs.Path) ($($f.Length) bytes)" }
    $buf = New-Object byte[] $len
    [void]$f.Seek($off, 'Begin')
    $n = 0
    while ($n -lt $len) {
      $r = $f.Read($buf, $n, $len - $n)
      if ($r -le 0) { throw "short read at $($off + $n) in $($GodwitArgs.Path)" }
      $n += $r
    }
  } finally { $f.Dispose() }
  # SHA256CryptoServiceProvider: the FIPS-validated implementation (SHA256.Create() may pick a
  # managed one that FIPS-mode hosts refuse).
  $sha = [BitConverter]::ToString((New-Object Security.Cryptography.SHA256CryptoServiceProvider).ComputeHash($buf)).Replace('-', '').ToLower()
  [Console]::Out.Write($sha + ':' + [Convert]::ToBase64String($buf))
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
