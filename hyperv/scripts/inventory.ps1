# Godwit: Hyper-V host inventory. Prints one JSON array of VMs with their disks.
# Recognised verbatim by the simulator (hyperv-sim/src): change both together.
$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
try {
  $vms = @(Get-VM | ForEach-Object {
    $vm = $_
    $disks = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object {
      $drive = $_
      $vhd = $null
      $err = $null
      # A pass-through disk has a DiskNumber (0 is one too); a missing or unreadable VHD is
      # this disk's error, not the whole host's.
      if ($drive.Path -and $null -eq $drive.DiskNumber) {
        try { $vhd = Get-VHD -Path $drive.Path } catch { $err = [string]$_ }
      }
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
        Error              = $err
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
