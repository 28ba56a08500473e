# Godwit: SCVMM inventory, run on the VMM management server. Prints one JSON object: the VMM
# server, its Hyper-V hosts (name, FQDN, state) and every VM with the host that runs it, its
# status, generation, CPU, memory and virtual disk drives.
# Recognised verbatim by the simulator (hyperv-sim/src): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
try {
  Import-Module virtualmachinemanager
  $server = Get-SCVMMServer -ComputerName localhost
  $hosts = @(Get-SCVMHost -VMMServer $server | ForEach-Object {
    [pscustomobject]@{
      Name         = $_.Name
      FQDN         = $_.FQDN
      Platform     = [string]$_.VirtualizationPlatform
      OverallState = [string]$_.OverallState
    }
  })
  $vms = @(Get-SCVirtualMachine -VMMServer $server | ForEach-Object {
    $vm = $_
    $drives = @(Get-SCVirtualDiskDrive -VM $vm | ForEach-Object {
      $drive = $_
      $vhd = $drive.VirtualHardDisk
      [pscustomobject]@{
        BusType        = [string]$drive.BusType
        Bus            = $drive.Bus
        Lun            = $drive.Lun
        PassThrough    = [bool]$drive.PassThroughDisk
        Location       = if ($vhd) { $vhd.Location } else { $null }
        VHDFormatType  = if ($vhd) { [string]$vhd.VHDFormatType } else { $null }
        VHDType        = if ($vhd) { [string]$vhd.VHDType } else { $null }
        MaximumSize    = if ($vhd) { $vhd.MaximumSize } else { $null }
        Size           = if ($vhd) { $vhd.Size } else { $null }
        ParentLocation = if ($vhd -and $vhd.ParentDisk) { $vhd.ParentDisk.Location } else { $null }
        Shared         = [bool]$drive.IsSharedDisk
      }
    })
    [pscustomobject]@{
      Id             = [string]$vm.ID
      VMId           = [string]$vm.VMId
      Name           = $vm.Name
      VMHost         = [string]$vm.VMHost.Name
      HostFQDN       = [string]$vm.VMHost.FQDN
      Status         = [string]$vm.Status
      Generation     = $vm.Generation
      CPUCount       = $vm.CPUCount
      MemoryMB       = $vm.Memory
      CheckpointType = [string]$vm.CheckpointType
      IsHighlyAvailable = [bool]$vm.IsHighlyAvailable
      Drives         = $drives
    }
  })
  $out = [pscustomobject]@{
    Server = [string]$server.FQDN
    Hosts  = $hosts
    VMs    = $vms
  }
  ConvertTo-Json -InputObject $out -Depth 6 -Compress
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
