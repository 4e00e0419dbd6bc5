# Runs as SYSTEM at every boot of a build VM that has passed a checkpoint (the checkpoint step
# writes it and registers its task). A build resumed from a checkpoint boots the earlier run's
# disk: the base image's bootstrap ran there once, at the earlier run's first boot, and the build
# account still has the earlier run's password. The new run's password is on its seed CD: the
# account gets it here, and Packer's WinRM login, which retries until the timeout, then succeeds.
# In the build that took the checkpoint the CD holds the same password: nothing changes.
# The generalize step removes the task and this folder before the image is sealed.
#
# Expects (generated above this body, as single-quoted literals):
#   $SeedLabel     the seed CD's volume label
#   $PasswordName  the name of the password file at the CD's root
#   $BuildUser     the build account
#   $LogFile       where this says what it did (in this folder)

$ErrorActionPreference = 'Stop'

function Say([string] $Text) {
    Add-Content -LiteralPath $LogFile -Value "$((Get-Date).ToString('o')) $Text" -Encoding UTF8
}

try {
    # CD drives can appear a little after the task starts
    for ($attempt = 0; $attempt -lt 120; $attempt++) {
        foreach ($cd in @(Get-CimInstance -ClassName Win32_LogicalDisk -Filter 'DriveType = 5')) {
            if ($cd.VolumeName -ne $SeedLabel) { continue }
            $file = Join-Path ($cd.DeviceID + '\') $PasswordName
            if (-not (Test-Path -LiteralPath $file -PathType Leaf)) { continue }
            $password = [System.IO.File]::ReadAllText($file).Trim()
            ([ADSI]"WinNT://./$BuildUser,user").SetPassword($password)
            Say "the password of $BuildUser is now the one on $($cd.DeviceID) ($SeedLabel)"
            exit 0
        }
        Start-Sleep -Seconds 1
    }
    Say "no CD labelled $SeedLabel holds $($PasswordName): the password of $BuildUser is unchanged"
    exit 2
} catch {
    Say "error: $($_.Exception.Message)"
    exit 1
}
