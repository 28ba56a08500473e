# Godwit: push byte ranges of files on this host (frozen VHD/VHDX files and their parents) to
# the connector's HTTPS ingest endpoint; the host-push data path (see docs/hyperv.md).
# Arguments (first line, added by Godwit):
#   $GodwitArgs.Url     https://<connector>[:port]/ingest/v1/<session>
#   $GodwitArgs.Token   the session's one-time bearer token
#   $GodwitArgs.Pin     SHA-256 (hex) of the connector's certificate: the only one accepted
#   $GodwitArgs.Chunk   bytes per PUT (at most 8 MiB)
#   $GodwitArgs.Retries attempts per PUT after network errors
#   $GodwitArgs.Files   [{ Id, Path, Ranges: [offset, length, offset, length, ...] }]
# Each PUT goes to <Url>/<Id>/<offset> with Content-Length and X-Godwit-Sha256 (of the bytes).
# Prints {"Pushes": n, "Bytes": n, "Retries": n}.
# Recognised verbatim by the simulator (hyperv/src/sim): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
[Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false
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
    using (SHA256 sha = SHA256.Create()) {
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
  $sha = [Security.Cryptography.SHA256]::Create()
  $pushes = 0
  $bytes = [int64]0
  $retries = 0
  foreach ($file in $GodwitArgs.Files) {
    $f = [IO.File]::Open($file.Path, 'Open', 'Read', 'ReadWrite')
    try {
      $r = @($file.Ranges)
      for ($i = 0; $i -lt $r.Count; $i += 2) {
        $pos = [int64]$r[$i]
        $end = $pos + [int64]$r[$i + 1]
        if ($end -gt $f.Length) { throw "range $pos+$($r[$i + 1]) is past the end of $($file.Path) ($($f.Length) bytes)" }
        while ($pos -lt $end) {
          $len = [int][Math]::Min([int64]$chunk, $end - $pos)
          $url = "$($GodwitArgs.Url)/$($file.Id)/$pos"
          $attempt = 0
          while ($true) {
            # (Re)read and hash the chunk on every attempt.
            [void]$f.Seek($pos, 'Begin')
            $n = 0
            while ($n -lt $len) {
              $got = $f.Read($buf, $n, $len - $n)
              if ($got -le 0) { throw "short read at $($pos + $n) in $($file.Path)" }
              $n += $got
            }
            $hex = [BitConverter]::ToString($sha.ComputeHash($buf, 0, $len)).Replace('-', '').ToLowerInvariant()
            try {
              $req = [Net.HttpWebRequest]::Create($url)
              $req.Method = 'PUT'
              $req.ServerCertificateValidationCallback = [GodwitPin]::Callback
              $req.Headers.Add('Authorization', "Bearer $($GodwitArgs.Token)")
              $req.Headers.Add('X-Godwit-Sha256', $hex)
              $req.ContentType = 'application/octet-stream'
              $req.ContentLength = $len
              $req.Timeout = 120000
              $req.ReadWriteTimeout = 120000
              $s = $req.GetRequestStream()
              try { $s.Write($buf, 0, $len) } finally { $s.Dispose() }
              $req.GetResponse().Dispose()
              break
            } catch [Net.WebException] {
              # A .NET method's exception may arrive wrapped (MethodInvocationException).
              $ex = $_.Exception
              while ($ex -and -not ($ex -is [Net.WebException])) { $ex = $ex.InnerException }
              $code = 0
              $detail = $ex.Message
              if ($ex.Response) {
                $code = [int]$ex.Response.StatusCode
                $rd = New-Object IO.StreamReader($ex.Response.GetResponseStream())
                try { $detail = $rd.ReadToEnd().Trim() } finally { $rd.Dispose() }
              }
              if ($ex.Status -eq [Net.WebExceptionStatus]::TrustFailure) {
                throw "the connector at $($GodwitArgs.Url) did not show the pinned certificate SHA256:$([GodwitPin]::Sha256Hex): $detail"
              }
              # Refused for good (token, range, size): stop. A checksum refusal (422) is
              # retried: the bytes are read again.
              if ($code -ge 400 -and $code -lt 500 -and $code -ne 422) {
                throw "the connector refused the push of $($file.Path) at $pos+$len (HTTP $code): $detail"
              }
              $attempt++
              $retries++
              if ($attempt -gt [int]$GodwitArgs.Retries) {
                throw "push of $($file.Path) at $pos+$len to $url failed after $attempt attempts: $detail"
              }
              Start-Sleep -Seconds ([Math]::Min(30, [Math]::Pow(2, $attempt)))
            }
          }
          $pushes++
          $bytes += $len
          $pos += $len
        }
      }
    } finally { $f.Dispose() }
  }
  ConvertTo-Json -InputObject ([pscustomobject]@{ Pushes = $pushes; Bytes = $bytes; Retries = $retries }) -Compress
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
