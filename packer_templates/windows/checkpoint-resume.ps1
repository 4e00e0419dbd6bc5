# The first step of a build resumed from a checkpoint: this VM booted an earlier run's disk as it
# was after customizer $StartAfter. That Packer could log in shows that the checkpoint's boot task
# has given the build account this run's password (the earlier run's no longer opens it); this
# says so in the run log. Nothing else needs putting back on Windows (see checkpoint.ps1).
#
# Expects (generated above this body, as single-quoted literals or numbers):
#   $StartAfter  the customizers the checkpoint holds
#   $BootTask    the boot task's name; $LogFile its log
#   $Mark        the prefix of the lines the run log shows

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

try {
    $info = Get-ScheduledTaskInfo -TaskName $BootTask
    $said = ''
    if (Test-Path -LiteralPath $LogFile -PathType Leaf) { $said = Get-Content -LiteralPath $LogFile -Tail 1 }
    Write-Output "$Mark resumed after customizer $($StartAfter): the boot task set this run's password (last result $($info.LastTaskResult): $said)"
    exit 0
} catch {
    # the login worked all the same (the base image's bootstrap set the password): the next
    # checkpoint step registers the task again
    Write-Output "$Mark resumed after customizer $($StartAfter); the boot task is missing: $($_.Exception.Message)"
    exit 0
}
