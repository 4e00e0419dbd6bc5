# AIB's WindowsUpdate customizer over the Windows Update Agent COM API (Packer 1.6.6 has no
# windows-update provisioner). One round: search, filter, download, install; never restarts by
# itself. The orchestrator renders several rounds, each followed by a windows-restart whose
# command restarts only when this script left $RebootMarker behind.
#
# Expects (generated above this body, as single-quoted literals):
#   $SearchCriteria  WUA search criteria, e.g. 'BrowseOnly=0 and IsInstalled=0'
#   $Filters         @('include:<expression>', 'exclude:<expression>', ...): PowerShell over $_
#   $UpdateLimit     at most this many updates are installed per round
#   $RebootMarker    the file that tells the following windows-restart to restart
# and the environment variables ORCHESTRATOR_UPDATE_ROUND / ORCHESTRATOR_UPDATE_ROUNDS.
#
# Exit codes: 0 = done, nothing more needs a restart; 101 = installed, a restart is required;
# anything else = failure. Runs elevated (as SYSTEM): the WUA API refuses remote sessions.

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Say([string] $Text) { Write-Output "orchestrator-windows-update: $Text" }

$round = 1
$rounds = 1
if ($env:ORCHESTRATOR_UPDATE_ROUND) { $round = [int] $env:ORCHESTRATOR_UPDATE_ROUND }
if ($env:ORCHESTRATOR_UPDATE_ROUNDS) { $rounds = [int] $env:ORCHESTRATOR_UPDATE_ROUNDS }
$lastRound = $round -ge $rounds

# Filters: "include:<expr>" / "exclude:<expr>", each expression a script block over $_ (the update).
$includes = New-Object System.Collections.ArrayList
$excludes = New-Object System.Collections.ArrayList
foreach ($filter in $Filters) {
    $kind, $expression = $filter -split ':', 2
    $block = [ScriptBlock]::Create($expression)
    switch ($kind.Trim().ToLowerInvariant()) {
        'include' { [void] $includes.Add($block) }
        'exclude' { [void] $excludes.Add($block) }
        default { throw "filter '$filter' does not start with include: or exclude:" }
    }
}

function Test-Match($Update, [System.Collections.ArrayList] $Blocks) {
    foreach ($block in $Blocks) {
        if (@($Update | Where-Object -FilterScript $block).Count -gt 0) { return $true }
    }
    return $false
}

function Invoke-Retrying([string] $What, [ScriptBlock] $Action) {
    # 0x80240016 (another installation is running) and friends pass with time.
    for ($attempt = 1; ; $attempt++) {
        try {
            return & $Action
        } catch {
            if ($attempt -ge 5) { throw }
            Say "$What failed (attempt $attempt of 5): $($_.Exception.Message); retrying in 60 s"
            Start-Sleep -Seconds 60
        }
    }
}

try {
    if (Test-Path -LiteralPath $RebootMarker) { Remove-Item -LiteralPath $RebootMarker -Force }
    $systemInfo = New-Object -ComObject 'Microsoft.Update.SystemInfo'
    if ($systemInfo.RebootRequired) {
        Say "round $round of ${rounds}: a restart is already pending: restarting before searching"
        if ($lastRound) { Say "warning: this was the last of $rounds rounds; no search follows the restart" }
        New-Item -ItemType File -Force -Path $RebootMarker | Out-Null
        exit 101
    }

    $session = New-Object -ComObject 'Microsoft.Update.Session'
    $session.ClientApplicationID = 'orchestrator'
    $searcher = $session.CreateUpdateSearcher()
    Say "round $round of ${rounds}: searching for updates: $SearchCriteria"
    $result = Invoke-Retrying 'search' { $searcher.Search($SearchCriteria) }
    Say "$($result.Updates.Count) update(s) match the search criteria"

    $selected = New-Object -ComObject 'Microsoft.Update.UpdateColl'
    $overLimit = 0
    foreach ($update in $result.Updates) {
        $title = $update.Title
        if (Test-Match $update $excludes) { Say "excluded: $title"; continue }
        if ($includes.Count -gt 0 -and -not (Test-Match $update $includes)) { Say "not included: $title"; continue }
        if ($update.InstallationBehavior.CanRequestUserInput) { Say "skipped (it may ask for input): $title"; continue }
        if ($selected.Count -ge $UpdateLimit) { $overLimit++; continue }
        if (-not $update.EulaAccepted) { $update.AcceptEula() }
        [void] $selected.Add($update)
        Say "selected: $title"
    }
    if ($overLimit -gt 0) {
        Say "$overLimit more update(s) left for the next round (updateLimit $UpdateLimit)"
    }
    if ($selected.Count -eq 0) {
        Say 'nothing to install'
        exit 0
    }

    Say "downloading $($selected.Count) update(s)"
    $downloader = $session.CreateUpdateDownloader()
    $downloader.Updates = $selected
    [void] (Invoke-Retrying 'download' { $downloader.Download() })

    $ready = New-Object -ComObject 'Microsoft.Update.UpdateColl'
    foreach ($update in $selected) {
        if ($update.IsDownloaded) { [void] $ready.Add($update) } else { Say "not downloaded: $($update.Title)" }
    }
    if ($ready.Count -eq 0) { throw 'none of the selected updates could be downloaded' }

    Say "installing $($ready.Count) update(s)"
    $installer = $session.CreateUpdateInstaller()
    $installer.Updates = $ready
    $outcome = Invoke-Retrying 'install' { $installer.Install() }
    $names = @{ 0 = 'not started'; 1 = 'in progress'; 2 = 'succeeded'; 3 = 'succeeded with errors'; 4 = 'failed'; 5 = 'aborted' }
    for ($i = 0; $i -lt $ready.Count; $i++) {
        $one = $outcome.GetUpdateResult($i)
        Say ("{0}: {1} (HRESULT 0x{2:X8})" -f $ready.Item($i).Title, $names[[int] $one.ResultCode], $one.HResult)
    }
    if ([int] $outcome.ResultCode -ge 4) {
        Say "the installation $($names[[int] $outcome.ResultCode])"
        exit 1
    }

    $restart = $outcome.RebootRequired -or (New-Object -ComObject 'Microsoft.Update.SystemInfo').RebootRequired
    if ($lastRound -and ($restart -or $overLimit -gt 0)) {
        Say "warning: this was the last of $rounds rounds; updates that the next search would find are not installed"
    }
    if ($restart) {
        New-Item -ItemType File -Force -Path $RebootMarker | Out-Null
        Say 'a restart is required'
        exit 101
    }
    exit 0
} catch {
    Say "error: $($_.Exception.Message)"
    exit 1
}
