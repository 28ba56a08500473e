# Godwit: Hyper-V host inventory. Prints one JSON array of VMs with their disks.
# Recognised verbatim by the simulator (hyperv/src/sim): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
[Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false
try {
  $vms = @(Get-VM | ForEach-Object {
    $vm = $_
    $disks = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object {
      $drive = $_
      $vhd = $null
      if ($drive.Path -and -not $drive.DiskNumber) { $vhd = Get-VHD -Path $drive.Path }
      [pscustomobject]@{
        ControllerType     = [string]$drive.ControllerType
        ControllerNumber   = $drive.ControllerNumber
        ControllerLocation = $drive.ControllerLocation
        Path               = $drive.Path
        DiskNumber         = $drive.DiskNumber
        Shared             = [bool]$drive.SupportPersistentReservations
        VhdFormat          = if ($vhd) { [string]$vhd.VhdFormat } else { $null }
        VhdType            = if ($vhd) { [string]$vhd.VhdType } else { $null }
        Size               = if ($vhd) { $vhd.Size } else { $null }
        FileSize           = if ($vhd) { $vhd.FileSize } else { $null }
        ParentPath         = if ($vhd) { $vhd.ParentPath } else { $null }
        LogicalSectorSize  = if ($vhd) { $vhd.LogicalSectorSize } else { $null }
      }
    })
    [pscustomobject]@{
      Id             = [string]$vm.VMId
      Name           = $vm.Name
      Generation     = $vm.Generation
      State          = [string]$vm.State
      ProcessorCount = $vm.ProcessorCount
      MemoryStartup  = $vm.MemoryStartup
      Version        = [string]$vm.Version
      CheckpointType = [string]$vm.CheckpointType
      Disks          = $disks
    }
  })
  ConvertTo-Json -InputObject $vms -Depth 5 -Compress
} catch {
  [Console]::Error.WriteLine($_)
  exit 2
}
