# Godwit: push byte ranges of files on this host (frozen VHD/VHDX files and their parents) to
# the connector's HTTPS ingest endpoint; the host-push data path (see docs/hyperv.md).
# Windows PowerShell 5.1 / .NET Framework 4.6+; the C# below is C# 5 (what Add-Type compiles).
# Arguments (first line, added by Godwit):
#   $GodwitArgs.Url     https://<connector>[:port]/ingest/v1/<session>
#   $GodwitArgs.Token   the session's one-time bearer token
#   $GodwitArgs.Pin     SHA-256 (hex) of the connector's certificate: the only one accepted
#   $GodwitArgs.Chunk   bytes per PUT (at most 8 MiB)
#   $GodwitArgs.Retries attempts per PUT after errors (any exception: reset, timeout, 5xx, 422)
#   $GodwitArgs.Seconds stop after this long (the connector starts another command for the rest)
#   $GodwitArgs.Files   [{ Id, Path }]
#   $GodwitArgs.Ranges  [fileId, offset, length, fileId, offset, length, ...] in push order
# First a probe (a PUT of no bytes) proves the host reaches the connector: if it cannot, exit 3.
# Each PUT goes to <Url>/<Id>/<offset> with Content-Length and X-Godwit-Sha256 (of the bytes),
# straight to the connector (no proxy). 503 = the connector's spool is full: wait Retry-After.
# Prints {"Pushes","Bytes","Retries","Waits","Next","NextOffset"}: ranges before Next are pushed
# whole, range Next up to NextOffset (Next = the number of ranges when all are done).
# Recognised verbatim by the simulator (hyperv-sim/src, SHA-256 pinned): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
try {
  # The certificate check as compiled code: a scriptblock callback can run on a thread
  # without a PowerShell runspace. Only the pinned certificate passes, whatever its name/CA.
  if (-not ('GodwitPin' -as [type])) {
    Add-Type -TypeDefinition @'
using System;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
public static class GodwitPin {
  public static string Sha256Hex;
  public static bool Check(object sender, X509Certificate cert, X509Chain chain, SslPolicyErrors errors) {
    if (cert == null || String.IsNullOrEmpty(Sha256Hex)) { return false; }
    using (SHA256CryptoServiceProvider sha = new SHA256CryptoServiceProvider()) {
      string hex = BitConverter.ToString(sha.ComputeHash(cert.GetRawCertData())).Replace("-", "").ToLowerInvariant();
      return hex == Sha256Hex;
    }
  }
  public static RemoteCertificateValidationCallback Callback {
    get { return new RemoteCertificateValidationCallback(Check); }
  }
}
'@
  }
  [GodwitPin]::Sha256Hex = ([string]$GodwitArgs.Pin).ToLowerInvariant()
  [Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12
  $chunk = [int]$GodwitArgs.Chunk
  $buf = New-Object byte[] $chunk
  $sha = New-Object Security.Cryptography.SHA256CryptoServiceProvider
  $deadline = [DateTime]::UtcNow.AddSeconds([int]$GodwitArgs.Seconds)
  $paths = @{}
  foreach ($f in $GodwitArgs.Files) { $paths[[int]$f.Id] = [string]$f.Path }
  $r = @($GodwitArgs.Ranges)
  $count = [int]($r.Count / 3)
  $pushes = 0
  $bytes = [int64]0
  $retries = 0
  $waits = 0

  # One PUT; returns the status code and text, or throws what went wrong on the way.
  function Send-Godwit([string]$url, [int]$len, [string]$hex) {
    $req = [Net.HttpWebRequest]::Create($url)
    $req.Method = 'PUT'
    $req.Proxy = $null
    $req.ServerCertificateValidationCallback = [GodwitPin]::Callback
    $req.Headers.Add('Authorization', "Bearer $($GodwitArgs.Token)")
    $req.Headers.Add('X-Godwit-Sha256', $hex)
    $req.ContentType = 'application/octet-stream'
    $req.ContentLength = $len
    $req.Timeout = 120000
    $req.ReadWriteTimeout = 120000
    if ($len -gt 0) {
      $s = $req.GetRequestStream()
      try { $s.Write($buf, 0, $len) } finally { $s.Dispose() }
    }
    try {
      $resp = $req.GetResponse()
      $code = [int]$resp.StatusCode
      $resp.Dispose()
      return @($code, '', 0)
    } catch [Net.WebException] {
      $resp = $_.Exception.Response
      if (-not $resp) { throw }
      $code = [int]$resp.StatusCode
      $after = 0
      [void][int]::TryParse([string]$resp.Headers['Retry-After'], [ref]$after)
      $rd = New-Object IO.StreamReader($resp.GetResponseStream())
      try { $text = $rd.ReadToEnd().Trim() } finally { $rd.Dispose(); $resp.Dispose() }
      return @($code, $text, $after)
    }
  }

  # The innermost exception's message (a .NET method's exception arrives wrapped).
  function Get-GodwitReason($err) {
    $ex = $err.Exception
    while ($ex.InnerException) { $ex = $ex.InnerException }
    if ($err.Exception -is [Net.WebException] -and $err.Exception.Status -eq [Net.WebExceptionStatus]::TrustFailure) { return 'TRUST' }
    $w = $err.Exception
    while ($w -and -not ($w -is [Net.WebException])) { $w = $w.InnerException }
    if ($w -and $w.Status -eq [Net.WebExceptionStatus]::TrustFailure) { return 'TRUST' }
    return $ex.Message
  }

  # The probe: a PUT of no bytes to the first file.
  if ($count -gt 0) {
    $sha0 = [BitConverter]::ToString($sha.ComputeHash($buf, 0, 0)).Replace('-', '').ToLowerInvariant()
    try {
      $p = Send-Godwit "$($GodwitArgs.Url)/$([int]$r[0])/0" 0 $sha0
    } catch {
      $why = Get-GodwitReason $_
      if ($why -eq 'TRUST') {
        [Console]::Error.WriteLine("the connector at $($GodwitArgs.Url) did not show the pinned certificate SHA256:$([GodwitPin]::Sha256Hex)")
        exit 2
      }
      [Console]::Error.WriteLine("this host ($env:COMPUTERNAME) could not connect to $($GodwitArgs.Url): $why")
      exit 3
    }
    if ($p[0] -ne 200) {
      throw "the connector refused the probe of $($GodwitArgs.Url) (HTTP $($p[0])): $($p[1])"
    }
  }

  $streams = @{}
  $next = 0
  $nextOffset = [int64]0
  try {
    for ($i = 0; $i -lt $count; $i++) {
      $id = [int]$r[3 * $i]
      $pos = [int64]$r[3 * $i + 1]
      $end = $pos + [int64]$r[3 * $i + 2]
      $next = $i
      $nextOffset = $pos
      if (-not $streams.ContainsKey($id)) {
        $streams[$id] = [IO.File]::Open($paths[$id], 'Open', 'Read', 'ReadWrite')
      }
      $f = $streams[$id]
      if ($end -gt $f.Length) { throw "range $pos+$($end - $pos) is past the end of $($paths[$id]) ($($f.Length) bytes)" }
      while ($pos -lt $end) {
        if ([DateTime]::UtcNow -gt $deadline) { break }
        $len = [int][Math]::Min([int64]$chunk, $end - $pos)
        $url = "$($GodwitArgs.Url)/$id/$pos"
        $attempt = 0
        while ($true) {
          # (Re)read and hash the chunk on every attempt.
          [void]$f.Seek($pos, 'Begin')
          $n = 0
          while ($n -lt $len) {
            $got = $f.Read($buf, $n, $len - $n)
            if ($got -le 0) { throw "short read at $($pos + $n) in $($paths[$id])" }
            $n += $got
          }
          $hex = [BitConverter]::ToString($sha.ComputeHash($buf, 0, $len)).Replace('-', '').ToLowerInvariant()
          $detail = ''
          try {
            $res = Send-Godwit $url $len $hex
            $code = $res[0]
            $detail = $res[1]
          } catch {
            # Any exception (a reset connection, a timeout, a closed stream) is retried.
            $why = Get-GodwitReason $_
            if ($why -eq 'TRUST') {
              throw "the connector at $($GodwitArgs.Url) did not show the pinned certificate SHA256:$([GodwitPin]::Sha256Hex)"
            }
            $code = 0
            $detail = $why
          }
          if ($code -ge 200 -and $code -lt 300) { break }
          if ($code -eq 503) {
            # The connector's spool is full: wait as it says (not an attempt).
            $waits++
            if ([DateTime]::UtcNow -gt $deadline) { break }
            Start-Sleep -Seconds ([Math]::Max(1, [Math]::Min(30, [int]$res[2])))
            continue
          }
          # Refused for good (token, range, size): stop. A checksum refusal (422) is retried:
          # the bytes are read again.
          if ($code -ge 400 -and $code -lt 500 -and $code -ne 422) {
            throw "the connector refused the push of $($paths[$id]) at $pos+$len (HTTP $code): $detail"
          }
          $attempt++
          $retries++
          if ($attempt -gt [int]$GodwitArgs.Retries) {
            throw "push of $($paths[$id]) at $pos+$len to $url failed after $attempt attempts: $detail"
          }
          Start-Sleep -Seconds ([Math]::Min(30, [Math]::Pow(2, $attempt)))
        }
        if ($code -lt 200 -or $code -ge 300) { break }
        $pushes++
        $bytes += $len
        $pos += $len
        $nextOffset = $pos
      }
      if ($pos -lt $end) { break }
      $next = $i + 1
      $nextOffset = [int64]0
    }
    if ($count -eq 0) { $next = 0 }
  } finally {
    foreach ($s in $streams.Values) { $s.Dispose() }
  }
  $out = [pscustomobject]@{ Pushes = $pushes; Bytes = $bytes; Retries = $retries; Waits = $waits; Next = $next; NextOffset = $nextOffset }
  ConvertTo-Json -InputObject $out -Compress
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
