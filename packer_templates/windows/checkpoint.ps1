# The guest side of a disk checkpoint, after a customizer: the host freezes the disk right after
# this step, while Windows keeps running, so everything must be on the disk when it ends.
# Runs in the build account's WinRM session (a local administrator with a full token).
#
# Nothing has to be saved for a build resumed from this checkpoint: C:\ keeps its files at a
# boot (the override C:\DeprovisioningScript.ps1 included) and a File step's upload is moved to
# its destination within its own step. What a resumed build lacks is its login: its VM boots this
# disk, where the build account has this run's password, not the new run's. So this step installs
# (once) a task that gives the account the password on the seed CD at every boot; the generalize
# step removes it again.
#
# Expects (generated above this body, as single-quoted literals):
#   $BootFolder  the folder of the boot-time script (the generalize step removes it)
#   $BootScript  that script's path; $BootText its content
#   $BootTask    the scheduled task that runs it as SYSTEM at startup
#   $Mark        the prefix of the lines the run log shows

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

try {
    if (-not [System.IO.Directory]::Exists($BootFolder)) {
        [void][System.IO.Directory]::CreateDirectory($BootFolder)
    }
    [System.IO.File]::WriteAllText($BootScript, $BootText, (New-Object System.Text.UTF8Encoding $true))
    if (-not (Get-ScheduledTask -TaskName $BootTask -ErrorAction SilentlyContinue)) {
        $action = New-ScheduledTaskAction -Execute 'powershell.exe' `
            -Argument "-NoProfile -NonInteractive -ExecutionPolicy Bypass -File `"$BootScript`""
        $principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
        Register-ScheduledTask -TaskName $BootTask -Action $action -Trigger (New-ScheduledTaskTrigger -AtStartup) `
            -Principal $principal -Force | Out-Null
        Write-Output "$Mark the task $BootTask resets the build account's password from the seed CD at each boot"
    }

    # Registry hives are written lazily (within seconds): each loaded hive is flushed now. Not
    # RegistryKey.Flush(), which does nothing on a key this process has not changed.
    try {
        Add-Type -Namespace Orchestrator -Name Hive -MemberDefinition (
            '[DllImport("advapi32.dll")] public static extern int RegFlushKey(' +
            'Microsoft.Win32.SafeHandles.SafeRegistryHandle hKey);')
        $keys = @(foreach ($name in @('SOFTWARE', 'SYSTEM')) { [Microsoft.Win32.Registry]::LocalMachine.OpenSubKey($name) })
        foreach ($name in [Microsoft.Win32.Registry]::Users.GetSubKeyNames()) {
            try { $keys += [Microsoft.Win32.Registry]::Users.OpenSubKey($name) } catch { }
        }
        foreach ($key in $keys) {
            if ($key) { [void][Orchestrator.Hive]::RegFlushKey($key.Handle); $key.Close() }
        }
    } catch {
        Write-Output "$Mark the registry was not flushed ($($_.Exception.Message)): Windows' lazy flush writes it within seconds"
    }
    # Then the file system cache of every fixed volume, C: first (FlushFileBuffers on the
    # volume: its data, its metadata and the disk's write cache).
    Write-VolumeCache -DriveLetter C
    foreach ($volume in @(Get-Volume | Where-Object { $_.DriveType -eq 'Fixed' -and $_.DriveLetter -and $_.DriveLetter -ne 'C' })) {
        Write-VolumeCache -DriveLetter $volume.DriveLetter
    }
    Write-Output "$Mark the guest's registry and volumes are flushed"
    exit 0
} catch {
    Write-Output "$Mark the guest could not prepare the checkpoint: $($_.Exception.Message)"
    exit 1
}
