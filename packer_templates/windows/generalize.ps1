# Generalize the build VM: AIB's default Sysprep sequence, or the customizer-written override.
# Runs elevated (as SYSTEM) after the last customizer and validation.
#
# Expects (generated above this body, as single-quoted literals):
#   $OverridePath    C:\DeprovisioningScript.ps1: when present it runs instead of Sysprep
#   $FinalizeScript  the .cmd the shutdown_command runs: removes the build account, powers off
#   $BuildUser       the build account's name
#   $ShutdownCommand the command the finalize script ends with
#   $BootTask        the checkpoints' boot task ('' in a build without checkpoints) and
#   $BootFolder      its folder: neither stays in the image (see checkpoint.ps1)

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Say([string] $Text) { Write-Output "orchestrator-generalize: $Text" }

function Wait-Service([string] $Name) {
    # AIB waits for the Azure guest agent's services; on-prem they are usually absent.
    $service = Get-Service -Name $Name -ErrorAction SilentlyContinue
    if (-not $service) {
        Write-Output ">>> $Name is not installed: not waiting for it"
        return
    }
    Write-Output ">>> Waiting for GA Service ($Name) to start ..."
    $deadline = (Get-Date).AddMinutes(10)
    while ((Get-Service -Name $Name).Status -ne 'Running') {
        if ((Get-Date) -gt $deadline) {
            Write-Output ">>> $Name did not start within 10 minutes: continuing without it"
            return
        }
        Start-Sleep -Seconds 5
    }
}

try {
    if ($BootTask) {
        # before the override or Sysprep: either may end with the VM shut down
        Unregister-ScheduledTask -TaskName $BootTask -Confirm:$false -ErrorAction SilentlyContinue
        Remove-Item -LiteralPath $BootFolder -Recurse -Force -ErrorAction SilentlyContinue
        Say "removed the checkpoints' boot task $BootTask and $BootFolder"
    }
    if (Test-Path -LiteralPath $OverridePath -PathType Leaf) {
        Say "running $OverridePath (written by a customizer) instead of the default Sysprep"
        Get-Content -LiteralPath $OverridePath | ForEach-Object { Say "| $_" }
        & powershell.exe -NoProfile -ExecutionPolicy Bypass -File $OverridePath
        $code = $LASTEXITCODE
        if ($code) {
            Say "$OverridePath exited with $code"
            exit $code
        }
    } else {
        Say 'running default: Sysprep.exe /oobe /generalize /quiet /quit'
        Wait-Service 'RdAgent'
        Wait-Service 'WindowsAzureTelemetryService'
        Wait-Service 'WindowsAzureGuestAgent'
        Write-Output '>>> Sysprepping VM ...'
        $sysprepDir = Join-Path $env:SystemRoot 'System32\Sysprep'
        $unattend = Join-Path $sysprepDir 'unattend.xml'
        if (Test-Path -LiteralPath $unattend) {
            Remove-Item -LiteralPath $unattend -Force
        }
        & (Join-Path $sysprepDir 'Sysprep.exe') /oobe /generalize /quiet /quit
        $deadline = (Get-Date).AddMinutes(30)
        while ($true) {
            $imageState = (Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State').ImageState
            Write-Output $imageState
            if ($imageState -eq 'IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE') { break }
            if ((Get-Date) -gt $deadline) {
                Say 'Sysprep did not reach IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE within 30 minutes'
                $log = Join-Path $sysprepDir 'Panther\setuperr.log'
                if (Test-Path -LiteralPath $log) { Get-Content -LiteralPath $log -Tail 40 | ForEach-Object { Say "setuperr: $_" } }
                exit 1
            }
            Start-Sleep -Seconds 5
        }
        Write-Output '>>> Sysprep complete ...'
    }

    # The shutdown_command runs this: the build account (created for this run only) must not
    # stay in the image, and it can only go once Packer no longer needs to log in as it.
    $finalize = @(
        '@echo off',
        'rem Written by the orchestrator''s generalize step; Packer''s shutdown_command runs it.',
        "net user $BuildUser /delete >nul 2>&1",
        $ShutdownCommand,
        '(goto) 2>nul & del "%~f0"'
    )
    [System.IO.File]::WriteAllLines($FinalizeScript, [string[]] $finalize, (New-Object System.Text.UTF8Encoding $false))
    Remove-Item -Path 'C:\Windows\Temp\orchestrator-*' -Exclude ([System.IO.Path]::GetFileName($FinalizeScript)) -Force -ErrorAction SilentlyContinue
    Say 'done'
    exit 0
} catch {
    Say "error: $($_.Exception.Message)"
    exit 1
}
