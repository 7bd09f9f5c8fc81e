#!/bin/sh
# agentlab agent runner: runs one job inside a sandbox guest and reports to agentlabd.
#
# Where it runs: cloud-init writes this file to /usr/local/lib/agentlab/agent-runner (root, 0755) in
# job sandboxes and starts it once, detached, as user `agent` (systemd-run --unit=agentlab-runner).
# The simulator (test/pvesim) and the tests run it with `sh` and AGENTLAB_GUEST_ROOT pointing at a
# directory that stands in for the guest's /.
#
# What it does:
#   1. reads /etc/agentlab/bootstrap.json ({token, controller, vmid, job_token}); no job_token means
#      this sandbox has no job: exit 0;
#   2. trades job_token for the job and a report token at POST <controller>/v1/bootstrap/fetch
#      (single use, so the answer is cached in $STATE_DIR/secrets/bootstrap.json and reused);
#   3. reports RUNNING "bootstrap fetched", clones the job's repo and checks out its ref on branch
#      `agentlab`, reports RUNNING "repo ready" and RUNNING "agent starting". A job with a branch
#      (job run --branch B) works on git branch B instead: when the repo directory already holds a
#      clone of the same repository (an earlier job of the branch, in the branch session's workspace)
#      that clone is reused: the ref is fetched, B checked out as the earlier job left it (created from
#      the fetched ref when missing), never reset;
#   4. runs the agent in the repo with the task on stdin, under `timeout` when a limit exists, and
#      streams its output (redacted) to <controller>/v1/runner/log while it runs; a 409 there means
#      the job was cancelled (or ended otherwise): the agent is stopped and the runner exits 0;
#   5. uploads the artifacts to <controller>/v1/runner/artifact: first its own, so the job's limits
#      never crowd them out: agentlab/agent-runner.log (this run's output), agentlab/repo.diff
#      (`git diff --binary` of the checkout, untracked files included, against the commit that was
#      fetched) and agentlab/report.json (the result below, before the upload counts); then every
#      regular file the agent left in $AGENTLAB_ARTIFACTS_DIR under its relative path, in byte order
#      (symlinks and other non-files are skipped, and so is the agent's own agentlab/ directory);
#      a refused upload (413 over the limits, 400 for a bad name) is logged and the next one tried;
#   6. with a branch, after the agent: commits what it left on B (author "agentlab runner", message
#      "agentlab job <id>", hooks off) and, only when the agent exited 0, pushes B to origin with the
#      job's credentials; a refused push (any non-zero `git push`) is reported, not a failure: the
#      commit stays on B in the checkout;
#   7. sends the final report (COMPLETED / FAILED / TIMEOUT) with the result JSON
#      {exit_code, duration_seconds, commit, fetched_commit, mode, output_tail, artifacts_uploaded,
#      artifacts_refused}, plus {branch, base_commit, pushed, push_error} with a branch.
#
# Needs: POSIX sh, curl, jq (1.6+), git, timeout, sed, coreutils.
#
# Environment (all optional; the defaults are the real guest's):
#   AGENTLAB_GUEST_ROOT             prefix for every guest path below (default: empty, i.e. /)
#   AGENTLAB_BOOTSTRAP_FILE         default $ROOT/etc/agentlab/bootstrap.json
#   AGENTLAB_STATE_DIR              default $ROOT/run/agentlab; holds secrets/ (0700: the cached
#                                   fetch answer, 0600) and agent-runner.log (the agent's output,
#                                   tokens replaced by [REDACTED]). Must be creatable by the
#                                   runner's user (on a guest: systemd RuntimeDirectory=agentlab).
#   AGENTLAB_REPO_DIR               where the repo is cloned; default $ROOT/work/repo if $ROOT/work is
#                                   a writable directory, else $ROOT/tmp/agentlab-repo. A non-empty
#                                   existing directory is never reused (it may be residue from an
#                                   earlier job): <dir>-<job id> is used instead; except by a branch
#                                   job, for a clone of the same repository (see 3.).
#   AGENTLAB_AGENT_COMMAND          command line run with `sh -c` in the repo; when unset the repo's
#                                   executable .agentlab/run.sh runs, else `agentlab-agent --agent
#                                   $AGENTLAB_AGENT` if it is on PATH
#   AGENTLAB_AGENT                  agent name for agentlab-agent (default claude)
#   AGENTLAB_ARTIFACTS_DIR          where the agent leaves its artifacts (default $STATE_DIR/artifacts;
#                                   created, and passed to the agent in its environment)
#   AGENTLAB_LOG_INTERVAL_SECONDS   how often new output is sent while the agent runs (default 1); an
#                                   agent that prints nothing still checks for cancellation every 5
#                                   intervals
#   AGENTLAB_RUNNER_TIMEOUT_SECONDS time limit for the agent in seconds (default: the job's
#                                   ttl_minutes * 60; no limit when neither is set)
#   AGENTLAB_BOOTSTRAP_RETRY_MAX    fetch attempts (default 10)
#   AGENTLAB_RETRY_MAX              attempts per report (default 6)
#   AGENTLAB_RETRY_DELAY_SECONDS    first retry delay, doubling up to 30 s (default 2 for the fetch,
#                                   1 for reports; 0 retries at once)
# $ROOT/etc/agentlab/agent-runner.env is sourced first if present: it is where operators set these.
#
# The agent gets AGENTLAB_JOB_ID, AGENTLAB_TASK, AGENTLAB_MODE, AGENTLAB_REPO_DIR and
# AGENTLAB_ARTIFACTS_DIR in its environment and the task on stdin. Its exit status decides the job: 0 -> COMPLETED,
# 124 (timeout's "time is up") -> TIMEOUT, anything else -> FAILED.
#
# Reports are retried on no answer, 5xx and 429; any other answer is final. A refused progress
# report means the job is no longer this runner's (e.g. already finalized): it stops. A progress
# report that cannot be delivered is only logged. When the runner itself fails after the fetch,
# it still sends FAILED "agent runner error: ..." so the job does not wait for its TTL.
#
# Exit status:
#   0    the final report was delivered (whatever the job's outcome), or there is nothing to run
#        (no job token in bootstrap.json; the controller has no job for this VMID)
#   1    the runner's own failure: a missing tool, a bad setting or bootstrap.json, the controller
#        refused the fetch or a report, or could not be reached after all retries
#   129, 130, 143  stopped by SIGHUP, SIGINT, SIGTERM
#
# Secrets: the ready token, the job token and the report token are never printed, never passed on a
# command line (the curl auth header and the redaction script are 0600 files) and are replaced by
# [REDACTED] in everything the agent prints.
set -eu
umask 077

say() { printf 'agent-runner: %s\n' "$*"; }
warn() { printf 'agent-runner: %s\n' "$*" >&2; }

# A failure of the runner itself. Once a job is known, the EXIT trap still tries to tell the
# controller (FAILED) so the job does not hang until its TTL.
FAIL_REASON=""
die() {
  FAIL_REASON="$*"
  warn "error: $*"
  exit 1
}

ROOT="${AGENTLAB_GUEST_ROOT:-}"
ROOT="${ROOT%/}"
ENV_FILE="$ROOT/etc/agentlab/agent-runner.env"
if [ -f "$ENV_FILE" ]; then
  # shellcheck disable=SC1090 # operator-owned settings file, by design
  . "$ENV_FILE"
fi

for tool in curl jq git timeout sed tee tail head find sort mktemp date; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed; the runner needs curl, jq, git, timeout, sed and coreutils"
done

# --- settings -------------------------------------------------------------------------------------

is_uint() {
  case "$1" in
    '' | *[!0-9]*) return 1 ;;
  esac
  return 0
}
# uint_setting NAME VALUE MIN: VALUE must be an integer >= MIN.
uint_setting() {
  if ! is_uint "$2" || [ "$2" -lt "$3" ]; then
    die "$1 must be a whole number >= $3 (got \"$2\"); fix it in $ENV_FILE or the environment"
  fi
}

BOOTSTRAP_FILE="${AGENTLAB_BOOTSTRAP_FILE:-$ROOT/etc/agentlab/bootstrap.json}"
STATE_DIR="${AGENTLAB_STATE_DIR:-$ROOT/run/agentlab}"
STATE_DIR="${STATE_DIR%/}"
SECRETS_DIR="$STATE_DIR/secrets"
CACHE_FILE="$SECRETS_DIR/bootstrap.json"
LOG_FILE="$STATE_DIR/agent-runner.log"
ARTIFACTS_DIR="${AGENTLAB_ARTIFACTS_DIR:-$STATE_DIR/artifacts}"
while [ "${ARTIFACTS_DIR%/}" != "$ARTIFACTS_DIR" ]; do ARTIFACTS_DIR="${ARTIFACTS_DIR%/}"; done
[ -n "$ARTIFACTS_DIR" ] || die "AGENTLAB_ARTIFACTS_DIR must not be /"
if [ -n "${AGENTLAB_REPO_DIR:-}" ]; then
  REPO_DIR="$AGENTLAB_REPO_DIR"
elif [ -d "$ROOT/work" ] && [ -w "$ROOT/work" ]; then
  REPO_DIR="$ROOT/work/repo"
else
  REPO_DIR="$ROOT/tmp/agentlab-repo"
fi
# Without this "/work/repo/" would turn into "/work/repo/-<job id>", inside the residue.
while [ "${REPO_DIR%/}" != "$REPO_DIR" ]; do REPO_DIR="${REPO_DIR%/}"; done
[ -n "$REPO_DIR" ] || die "AGENTLAB_REPO_DIR must not be /"
AGENT_COMMAND="${AGENTLAB_AGENT_COMMAND:-}"
AGENT_NAME="${AGENTLAB_AGENT:-claude}"
TIMEOUT_SECONDS="${AGENTLAB_RUNNER_TIMEOUT_SECONDS:-}"
[ -z "$TIMEOUT_SECONDS" ] || uint_setting AGENTLAB_RUNNER_TIMEOUT_SECONDS "$TIMEOUT_SECONDS" 1
FETCH_MAX="${AGENTLAB_BOOTSTRAP_RETRY_MAX:-10}"
uint_setting AGENTLAB_BOOTSTRAP_RETRY_MAX "$FETCH_MAX" 1
REPORT_MAX="${AGENTLAB_RETRY_MAX:-6}"
uint_setting AGENTLAB_RETRY_MAX "$REPORT_MAX" 1
FETCH_DELAY="${AGENTLAB_RETRY_DELAY_SECONDS:-2}"
REPORT_DELAY="${AGENTLAB_RETRY_DELAY_SECONDS:-1}"
uint_setting AGENTLAB_RETRY_DELAY_SECONDS "$FETCH_DELAY" 0
LOG_INTERVAL="${AGENTLAB_LOG_INTERVAL_SECONDS:-1}"
uint_setting AGENTLAB_LOG_INTERVAL_SECONDS "$LOG_INTERVAL" 1

# --- bootstrap.json -------------------------------------------------------------------------------

[ -r "$BOOTSTRAP_FILE" ] || die "cannot read $BOOTSTRAP_FILE; cloud-init writes it for job sandboxes (owner agent, 0600)"
jq -e 'type == "object"' "$BOOTSTRAP_FILE" >/dev/null 2>&1 || die "$BOOTSTRAP_FILE is not a JSON object"
if ! jq -e '.job_token | type == "string" and length > 0' "$BOOTSTRAP_FILE" >/dev/null; then
  say "no job token in bootstrap.json; nothing to run"
  exit 0
fi
VMID=$(jq -r '.vmid | if type == "number" and . > 0 and . == floor then tostring else empty end' "$BOOTSTRAP_FILE")
[ -n "$VMID" ] || die "$BOOTSTRAP_FILE has no positive integer vmid"
CONTROLLER=$(jq -r '.controller | if type == "string" then . else empty end' "$BOOTSTRAP_FILE")
while [ "${CONTROLLER%/}" != "$CONTROLLER" ]; do CONTROLLER="${CONTROLLER%/}"; done
case "$CONTROLLER" in
  http://?* | https://?*) ;;
  *) die "$BOOTSTRAP_FILE has no http(s) controller URL" ;;
esac

# /run is root's: on a real guest the unit that starts the runner must provide /run/agentlab
# (systemd RuntimeDirectory=agentlab).
mkdir -p "$SECRETS_DIR" 2>/dev/null ||
  die "cannot create $SECRETS_DIR as user $(id -un); create $STATE_DIR for that user (systemd: RuntimeDirectory=agentlab) or set AGENTLAB_STATE_DIR"
chmod 700 "$SECRETS_DIR"
WORK=$(mktemp -d "$SECRETS_DIR/run.XXXXXX")

JOB_ID=""
REPORT_URL=""
AUTH_FILE="$WORK/auth.header"
# 1 once the final report has been attempted, or when the controller refused a report: either way
# the EXIT trap must not send another one.
REPORTS_DONE=0

# shellcheck disable=SC2317 # reached through the EXIT trap
on_exit() {
  status=$?
  trap - EXIT
  if [ "$status" -ne 0 ] && [ "$REPORTS_DONE" -eq 0 ] && [ -n "$REPORT_URL" ]; then
    REPORTS_DONE=1
    reason="${FAIL_REASON:-the agent runner stopped unexpectedly (exit status $status); see the agentlab-runner log in the guest}"
    post_report FAILED "agent runner error: $reason" || warn "could not report the failure: $REPORT_ERROR"
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap on_exit EXIT
trap 'FAIL_REASON="the agent runner was stopped (SIGHUP)"; exit 129' HUP
trap 'FAIL_REASON="the agent runner was stopped (SIGINT)"; exit 130' INT
trap 'FAIL_REASON="the agent runner was stopped (SIGTERM)"; exit 143' TERM

# http_error FILE: the daemon's {"error": ...} message, or a short excerpt of whatever else came back.
http_error() {
  jq -r 'if type == "object" and (.error | type == "string") then .error else empty end' "$1" 2>/dev/null ||
    head -c 200 "$1" 2>/dev/null || true
}

# Every curl call: only http(s), never follow redirects, bounded in time.
CURL_BASE="--proto =http,https -sS --connect-timeout 10"

# --- bootstrap fetch ------------------------------------------------------------------------------

valid_fetch_answer() {
  jq -e '(.job.id | type == "string" and test("^[A-Za-z0-9_-]+$"))
    and (.job.repo_url | type == "string" and length > 0)
    and (.report.url | type == "string" and test("^https?://"))
    and (.report.token | type == "string" and length > 0)' "$1" >/dev/null 2>&1
}

fetch_job() {
  jq -c '{token: .job_token, vmid: .vmid}' "$BOOTSTRAP_FILE" >"$WORK/fetch.body"
  attempt=1
  delay=$FETCH_DELAY
  while :; do
    # shellcheck disable=SC2086 # CURL_BASE is a fixed list of options
    code=$(curl $CURL_BASE --max-time 60 -o "$WORK/fetch.out" -w '%{http_code}' \
      -H 'Content-Type: application/json' --data-binary "@$WORK/fetch.body" \
      "$CONTROLLER/v1/bootstrap/fetch" 2>"$WORK/fetch.err") || true
    case "$code" in
      200)
        valid_fetch_answer "$WORK/fetch.out" || die "the controller's bootstrap answer lacks the job id, repo URL or report URL/token"
        mv "$WORK/fetch.out" "$CACHE_FILE"
        chmod 600 "$CACHE_FILE"
        return 0
        ;;
      404)
        error=$(http_error "$WORK/fetch.out")
        if [ "$error" = "job not found" ]; then
          say "no job assigned for vmid $VMID; exiting cleanly"
          exit 0
        fi
        die "bootstrap fetch failed: HTTP 404: $error (is the controller URL $CONTROLLER right?)"
        ;;
      403) die "bootstrap fetch refused: $(http_error "$WORK/fetch.out")" ;;
      000 | 5?? | 429) why="HTTP $code" ;;
      *) die "bootstrap fetch failed: HTTP $code: $(http_error "$WORK/fetch.out")" ;;
    esac
    if [ "$code" = 000 ]; then why="no answer ($(tail -n 1 "$WORK/fetch.err"))"; fi
    [ "$attempt" -lt "$FETCH_MAX" ] || die "bootstrap fetch from $CONTROLLER failed after $FETCH_MAX attempts; last: $why"
    say "bootstrap fetch: $why; retrying in ${delay}s (attempt $attempt of $FETCH_MAX)"
    sleep "$delay"
    delay=$((delay * 2))
    [ "$delay" -le 30 ] || delay=30
    attempt=$((attempt + 1))
  done
}

if [ -f "$CACHE_FILE" ] && valid_fetch_answer "$CACHE_FILE"; then
  say "using the cached bootstrap answer in $CACHE_FILE"
else
  [ ! -e "$CACHE_FILE" ] || warn "ignoring the unusable cached bootstrap answer in $CACHE_FILE"
  fetch_job
fi

JOB_ID=$(jq -r '.job.id' "$CACHE_FILE")
REPO_URL=$(jq -r '.job.repo_url' "$CACHE_FILE")
REF=$(jq -r '.job.ref | if type == "string" and length > 0 then . else "main" end' "$CACHE_FILE")
MODE=$(jq -r '.job.mode | if type == "string" and length > 0 then . else "dangerous" end' "$CACHE_FILE")
BRANCH=$(jq -r '.job.branch | if type == "string" and length > 0 then . else empty end' "$CACHE_FILE")
TASK=$(jq -r '.job.task // ""' "$CACHE_FILE")
jq -j '.job.task // ""' "$CACHE_FILE" >"$WORK/task"
TTL_SECONDS=$(jq -r '.job.ttl_minutes | if type == "number" and . > 0 then (. * 60 | ceil | tostring) else empty end' "$CACHE_FILE")
jq -r '"Authorization: Bearer " + .report.token' "$CACHE_FILE" >"$AUTH_FILE"
# One sed substitution per token, regex characters escaped, so any token text is matched literally.
{
  jq -r '(.token, .job_token) | select(type == "string")' "$BOOTSTRAP_FILE"
  jq -r '.report.token' "$CACHE_FILE"
  # The repository's password (or lone token), as typed and as it would appear percent-encoded.
  jq -r '.job.repo_credentials | select(type == "object")
    | (if (.password // "") == "" then .username else .password end) | select(type == "string")
    | ., @uri' "$CACHE_FILE"
} | jq -R -r 'select(length > 0)
  | "s/" + gsub("(?<c>[\\[\\]\\\\/.*^$])"; "\\\(.c)") + "/[REDACTED]/g"' >"$WORK/redact.sed"
# redact: stdin to stdout with the tokens replaced.
redact() { sed -f "$WORK/redact.sed"; }
# redact_stream: the same, unbuffered where sed can (GNU, busybox), so the guest log follows the
# agent as it prints.
if printf '' | sed -u -e '' >/dev/null 2>&1; then
  redact_stream() { sed -u -f "$WORK/redact.sed"; }
else
  redact_stream() { redact; }
fi
REPORT_URL=$(jq -r '.report.url' "$CACHE_FILE")
# Older controllers had neither endpoint: output then stays in the guest log and nothing is uploaded.
LOG_URL=$(jq -r '.log.url | if type == "string" and test("^https?://") then . else empty end' "$CACHE_FILE")
ARTIFACT_URL=$(jq -r '.artifact.url | if type == "string" and test("^https?://") then . else empty end' "$CACHE_FILE")
say "job $JOB_ID: repo $REPO_URL, ref $REF, mode $MODE${BRANCH:+, branch $BRANCH}"

# --- reports --------------------------------------------------------------------------------------

REPORT_ERROR=""
# post_report STATUS MESSAGE [RESULT_FILE]: POST one report, retrying while the controller does not
# answer, answers 5xx or rate-limits. Returns 0 when accepted, 2 when refused (any other answer:
# retrying cannot help), 1 when retries ran out; REPORT_ERROR says why. Written without relying on
# set -e, which callers in `if`/`||` switch off.
post_report() {
  if [ -n "${3:-}" ]; then
    jq -n --arg job_id "$JOB_ID" --argjson vmid "$VMID" --arg status "$1" --arg message "$2" \
      --slurpfile result "$3" \
      '{job_id: $job_id, vmid: $vmid, status: $status, message: $message, result: $result[0]}' \
      >"$WORK/report.body" || {
      REPORT_ERROR="could not build the report"
      return 1
    }
  else
    jq -n --arg job_id "$JOB_ID" --argjson vmid "$VMID" --arg status "$1" --arg message "$2" \
      '{job_id: $job_id, vmid: $vmid, status: $status, message: $message}' >"$WORK/report.body" || {
      REPORT_ERROR="could not build the report"
      return 1
    }
  fi
  r_attempt=1
  r_delay=$REPORT_DELAY
  while :; do
    # shellcheck disable=SC2086 # CURL_BASE is a fixed list of options
    r_code=$(curl $CURL_BASE --max-time 20 -o "$WORK/report.out" -w '%{http_code}' \
      -H 'Content-Type: application/json' -H "@$AUTH_FILE" --data-binary "@$WORK/report.body" \
      "$REPORT_URL" 2>"$WORK/report.err") || true
    case "$r_code" in
      2??) return 0 ;;
      000) REPORT_ERROR="no answer ($(tail -n 1 "$WORK/report.err"))" ;;
      5?? | 429) REPORT_ERROR="HTTP $r_code: $(http_error "$WORK/report.out")" ;;
      *)
        REPORT_ERROR="HTTP $r_code: $(http_error "$WORK/report.out")"
        return 2
        ;;
    esac
    if [ "$r_attempt" -ge "$REPORT_MAX" ]; then
      REPORT_ERROR="$REPORT_ERROR, after $REPORT_MAX attempts"
      return 1
    fi
    say "report $1: $REPORT_ERROR; retrying in ${r_delay}s (attempt $r_attempt of $REPORT_MAX)"
    sleep "$r_delay"
    r_delay=$((r_delay * 2))
    [ "$r_delay" -le 30 ] || r_delay=30
    r_attempt=$((r_attempt + 1))
  done
}

# A progress report. A refusal (job finalized elsewhere, wrong token...) means this job is no longer
# ours to run: stop. An unreachable controller is only logged: the final report retries again.
progress() {
  say "RUNNING: $1"
  rc=0
  post_report RUNNING "$1" || rc=$?
  case "$rc" in
    0) ;;
    2)
      REPORTS_DONE=1
      die "the controller refused the report: $REPORT_ERROR; stopping"
      ;;
    *) warn "could not deliver the report \"$1\": $REPORT_ERROR; carrying on" ;;
  esac
}

# build_result EXIT_CODE DURATION COMMIT OUTPUT_FILE: $WORK/result.json, the final report's result
# (also uploaded as agentlab/report.json).
build_result() {
  jq -n --argjson exit_code "$1" --argjson duration "$2" --arg commit "$3" --arg mode "$MODE" \
    --arg fetched "${FETCHED:-}" --rawfile output_tail "$4" \
    --argjson uploaded "${UPLOADED:-0}" --argjson refused "${REFUSED_UPLOADS:-0}" \
    --arg branch "$BRANCH" --arg base "${BASE:-}" --argjson pushed "${PUSHED:-false}" \
    --arg push_error "${PUSH_ERROR:-}" \
    '{exit_code: $exit_code, duration_seconds: $duration,
      commit: (if $commit == "" then null else $commit end),
      fetched_commit: (if $fetched == "" then null else $fetched end), mode: $mode,
      output_tail: $output_tail, artifacts_uploaded: $uploaded, artifacts_refused: $refused}
      + (if $branch == "" then {} else
          {branch: $branch, base_commit: (if $base == "" then null else $base end), pushed: $pushed}
          + (if $push_error == "" then {} else {push_error: $push_error} end) end)' \
    >"$WORK/result.json"
}

# finish STATUS MESSAGE: the final report with $WORK/result.json, then exit 0.
finish() {
  say "$1: $2"
  REPORTS_DONE=1
  rc=0
  post_report "$1" "$2" "$WORK/result.json" || rc=$?
  [ "$rc" -eq 0 ] || die "could not deliver the final report ($1): $REPORT_ERROR"
  exit 0
}

# fail_early MESSAGE: FAILED before the agent ran (no exit code, no output).
fail_early() {
  : >"$WORK/empty"
  build_result null 0 "" "$WORK/empty"
  finish FAILED "$1"
}

progress "bootstrap fetched"

# --- repo -----------------------------------------------------------------------------------------

is_empty_dir() {
  [ -d "$1" ] && [ -z "$(ls -A "$1")" ]
}
# usable_dir DIR: DIR does not exist yet, or is an empty directory.
usable_dir() {
  if [ -e "$1" ] || [ -L "$1" ]; then
    is_empty_dir "$1"
  fi
}

# reusable_clone DIR: DIR is a clone of this job's repository (a branch job continues it).
reusable_clone() {
  [ -d "$1/.git" ] && [ "$(git -C "$1" config --get remote.origin.url 2>/dev/null)" = "$REPO_URL" ]
}

if [ -n "$BRANCH" ] && ! git check-ref-format --branch "$BRANCH" >/dev/null 2>&1; then
  fail_early "invalid branch \"$BRANCH\": git check-ref-format --branch refuses it"
fi
CLONE_DIR="$REPO_DIR"
REUSED=0
if [ -n "$BRANCH" ] && reusable_clone "$CLONE_DIR"; then
  REUSED=1
  say "continuing in the existing checkout $CLONE_DIR (branch $BRANCH)"
elif ! usable_dir "$CLONE_DIR"; then
  CLONE_DIR="$REPO_DIR-$JOB_ID"
  say "$REPO_DIR is not empty; cloning into $CLONE_DIR instead (an existing checkout is never reused)"
  usable_dir "$CLONE_DIR" ||
    fail_early "cannot clone: $REPO_DIR and $CLONE_DIR both exist and are not empty; remove them or set AGENTLAB_REPO_DIR"
fi

# git_step WHAT ARGS...: run git without prompts; on failure end the job with git's own words.
git_step() {
  g_what=$1
  shift
  if ! GIT_TERMINAL_PROMPT=0 git "$@" </dev/null >"$WORK/git.log" 2>&1; then
    fail_early "$g_what failed: $(tail -n 10 "$WORK/git.log" | tail -c 1500 | redact)"
  fi
}

case "$REF" in
  -*) fail_early "invalid ref \"$REF\": a ref cannot start with -" ;;
esac
# Credentials `job run` split off the repository URL come with the job (never in the URL, so the clone's
# origin and every message stay clean). git reads them from a 0600 credential-store file made here; the
# colon is always written, so a lone token is sent with an empty password instead of prompting.
set -- -c credential.helper=
CRED_HELPER=""
if jq -e '.job.repo_credentials | type == "object"' "$CACHE_FILE" >/dev/null 2>&1; then
  jq -r '(.job.repo_url | capture("^(?<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?<host>[^/]+)")) as $u
    | .job.repo_credentials
    | "\($u.scheme)://\(.username // "" | @uri):\(.password // "" | @uri)@\($u.host)"' \
    "$CACHE_FILE" >"$WORK/git-credentials" 2>/dev/null ||
    fail_early "the job's repository credentials do not fit its URL (only scheme://host/... URLs take them)"
  CRED_HELPER="store --file=$WORK/git-credentials"
  set -- "$@" -c "credential.helper=$CRED_HELPER"
fi
# A reused checkout was left by an earlier agent: none of its hooks or fsmonitor runs in the runner's git.
set -- "$@" -c core.hooksPath=/dev/null -c core.fsmonitor=false
if [ "$REUSED" -eq 0 ]; then
  mkdir -p "$(dirname "$CLONE_DIR")"
  git_step "git clone of $REPO_URL" "$@" clone --quiet -- "$REPO_URL" "$CLONE_DIR"
fi
git_step "git fetch of ref $REF" "$@" -C "$CLONE_DIR" fetch --quiet --force -- origin "$REF"
FETCHED=$(git -C "$CLONE_DIR" rev-parse --verify --quiet 'FETCH_HEAD^{commit}')
if [ -z "$BRANCH" ]; then
  git_step "git checkout of ref $REF" "$@" -C "$CLONE_DIR" checkout --quiet -B agentlab FETCH_HEAD
elif git -C "$CLONE_DIR" rev-parse --verify --quiet "refs/heads/$BRANCH" >/dev/null; then
  # The branch as the earlier job left it: the fetched ref is not merged into it, nor B reset to it.
  git_step "git checkout of branch $BRANCH" "$@" -C "$CLONE_DIR" checkout --quiet "$BRANCH" --
else
  git_step "git checkout of ref $REF as branch $BRANCH" "$@" -C "$CLONE_DIR" checkout --quiet -b "$BRANCH" FETCH_HEAD
fi
# What this job starts from: the fetched commit, or where the branch's earlier jobs left it.
BASE=$(git -C "$CLONE_DIR" rev-parse HEAD)
say "repo at $CLONE_DIR, $BASE${BRANCH:+ on branch $BRANCH (fetched $FETCHED)}"
progress "repo ready"

# --- agent ----------------------------------------------------------------------------------------

if [ -n "$AGENT_COMMAND" ]; then
  set -- sh -c "$AGENT_COMMAND"
elif [ -f "$CLONE_DIR/.agentlab/run.sh" ] && [ -x "$CLONE_DIR/.agentlab/run.sh" ]; then
  set -- ./.agentlab/run.sh
elif command -v agentlab-agent >/dev/null 2>&1; then
  set -- agentlab-agent --agent "$AGENT_NAME"
else
  fail_early "no agent to run: set AGENTLAB_AGENT_COMMAND in /etc/agentlab/agent-runner.env, add an executable .agentlab/run.sh to the repo, or install agentlab-agent"
fi
LIMIT="${TIMEOUT_SECONDS:-$TTL_SECONDS}"
if [ -n "$LIMIT" ]; then
  # Without --foreground timeout signals the agent's whole process group, children included.
  set -- timeout --signal=TERM --kill-after=30 "$LIMIT" "$@"
fi

mkdir -p "$ARTIFACTS_DIR" || fail_early "cannot create the artifacts directory $ARTIFACTS_DIR"
if [ -n "$LIMIT" ]; then
  :
elif command -v setsid >/dev/null 2>&1; then
  # A process group of its own, so a cancel stops the agent's children too (timeout makes one itself).
  set -- setsid "$@"
fi

# --- live output ----------------------------------------------------------------------------------

# stream_log: runs beside the agent. Every LOG_INTERVAL seconds it sends what the agent printed since
# the last chunk (at most 64 KiB per request, offsets counted from this run's start), until the output
# is complete. A 409 means the job ended elsewhere (cancelled): it stops the agent. Other failures are
# retried at the next tick; the full log is uploaded as an artifact at the end anyway.
stream_log() {
  s_sent=0
  s_idle=0
  s_fails=0
  while :; do
    s_last=0
    s_code=""
    [ ! -e "$WORK/output.done" ] || s_last=1
    s_size=$(($(wc -c <"$LOG_FILE") - LOG_START))
    s_n=$((s_size - s_sent))
    [ "$s_n" -le 65536 ] || s_n=65536
    if [ "$s_n" -gt 0 ] || [ "$s_idle" -ge 5 ]; then
      s_idle=0
      tail -c +"$((LOG_START + s_sent + 1))" "$LOG_FILE" | head -c "$s_n" >"$WORK/chunk"
      # shellcheck disable=SC2086 # CURL_BASE is a fixed list of options
      s_code=$(curl $CURL_BASE --max-time 20 -o "$WORK/chunk.out" -w '%{http_code}' -H "@$AUTH_FILE" \
        -H 'Content-Type: application/octet-stream' --data-binary "@$WORK/chunk" \
        "$LOG_URL?job_id=$JOB_ID&offset=$s_sent" 2>/dev/null) || true
      case "$s_code" in
        2??) s_sent=$((s_sent + s_n)) ;;
        409)
          : >"$WORK/cancelled"
          s_pid=$(cat "$WORK/agent.pid" 2>/dev/null) || s_pid=""
          if [ -n "$s_pid" ]; then
            kill -TERM -- "-$s_pid" 2>/dev/null || kill -TERM "$s_pid" 2>/dev/null || true
          fi
          return 0
          ;;
      esac
    else
      s_idle=$((s_idle + 1))
    fi
    if [ "$s_last" -eq 1 ]; then
      [ "$s_sent" -lt "$s_size" ] || return 0
      # The controller keeps failing after the agent ended: the log artifact carries the output anyway.
      case "$s_code" in 2??) ;; *) s_fails=$((s_fails + 1)) ;; esac
      [ "$s_fails" -lt 5 ] || return 0
    fi
    # More than a chunk waiting after one went through: send the next one at once.
    case "$s_code" in
      2??) [ "$s_sent" -lt "$s_size" ] || sleep "$LOG_INTERVAL" ;;
      *) sleep "$LOG_INTERVAL" ;;
    esac
  done
}

# --- artifacts ------------------------------------------------------------------------------------

UPLOADED=0
REFUSED_UPLOADS=0
# upload NAME FILE: one artifact; retried like a report while the controller does not answer, answers
# 5xx or rate-limits; a refusal is logged (with the controller's reason) and the runner goes on.
upload() {
  u_name=$(jq -rn --arg n "$1" '$n | @uri')
  u_attempt=1
  u_delay=$REPORT_DELAY
  while :; do
    # shellcheck disable=SC2086 # CURL_BASE is a fixed list of options
    u_code=$(curl $CURL_BASE --max-time 300 -o "$WORK/upload.out" -w '%{http_code}' -H "@$AUTH_FILE" \
      -H 'Content-Type: application/octet-stream' --data-binary "@$2" \
      "$ARTIFACT_URL?job_id=$JOB_ID&name=$u_name" 2>"$WORK/upload.err") || true
    case "$u_code" in
      2??)
        UPLOADED=$((UPLOADED + 1))
        return 0
        ;;
      000) u_why="no answer ($(tail -n 1 "$WORK/upload.err"))" ;;
      5?? | 429) u_why="HTTP $u_code: $(http_error "$WORK/upload.out")" ;;
      *)
        REFUSED_UPLOADS=$((REFUSED_UPLOADS + 1))
        warn "artifact $1 not uploaded: HTTP $u_code: $(http_error "$WORK/upload.out")"
        return 0
        ;;
    esac
    if [ "$u_attempt" -ge "$REPORT_MAX" ]; then
      REFUSED_UPLOADS=$((REFUSED_UPLOADS + 1))
      warn "artifact $1 not uploaded: $u_why, after $REPORT_MAX attempts"
      return 0
    fi
    sleep "$u_delay"
    u_delay=$((u_delay * 2))
    [ "$u_delay" -le 30 ] || u_delay=30
    u_attempt=$((u_attempt + 1))
  done
}

# upload_all RESULT_FILE: the runner's own files, then the agent's.
upload_all() {
  [ -n "$ARTIFACT_URL" ] || return 0
  tail -c +"$((LOG_START + 1))" "$LOG_FILE" >"$WORK/agent-runner.log"
  upload agentlab/agent-runner.log "$WORK/agent-runner.log"
  # The diff through a private index: the checkout's own index and files are left as the agent left them.
  if GIT_INDEX_FILE="$WORK/diff.index" git -C "$CLONE_DIR" add -A >/dev/null 2>&1 &&
    GIT_INDEX_FILE="$WORK/diff.index" git -C "$CLONE_DIR" diff --cached --binary "$BASE" >"$WORK/repo.diff" 2>"$WORK/diff.err"; then
    upload agentlab/repo.diff "$WORK/repo.diff"
  else
    warn "no repo.diff: $(tail -n 1 "$WORK/diff.err" 2>/dev/null)"
  fi
  upload agentlab/report.json "$1"
  # -type f without -L: a symlink the agent left (say to /etc/shadow) is not followed.
  find "$ARTIFACTS_DIR" -mindepth 1 \( -type f -o -type l \) -print 2>/dev/null | LC_ALL=C sort >"$WORK/artifacts.list" || true
  while IFS= read -r a_path; do
    a_name=${a_path#"$ARTIFACTS_DIR"/}
    case "$a_name" in
      agentlab/*)
        warn "artifact $a_name skipped: agentlab/ holds the runner's own files"
        continue
        ;;
    esac
    if [ -L "$a_path" ] || [ ! -f "$a_path" ]; then
      warn "artifact $a_name skipped: not a regular file (a symlink is never followed)"
      continue
    fi
    upload "$a_name" "$a_path"
  done <"$WORK/artifacts.list"
}

progress "agent starting"
touch "$LOG_FILE"
LOG_START=$(wc -c <"$LOG_FILE")
STARTED=$(date +%s)
STREAM_PID=""
if [ -n "$LOG_URL" ]; then
  stream_log &
  STREAM_PID=$!
fi
{
  a_rc=0
  (
    cd "$CLONE_DIR"
    export AGENTLAB_JOB_ID="$JOB_ID" AGENTLAB_TASK="$TASK" AGENTLAB_MODE="$MODE" AGENTLAB_REPO_DIR="$CLONE_DIR" \
      AGENTLAB_ARTIFACTS_DIR="$ARTIFACTS_DIR"
    exec "$@" <"$WORK/task"
  ) 2>&1 &
  echo "$!" >"$WORK/agent.pid"
  wait "$!" || a_rc=$?
  echo "$a_rc" >"$WORK/agent.status"
} | redact_stream | tee -a "$LOG_FILE"
: >"$WORK/output.done"
[ -z "$STREAM_PID" ] || wait "$STREAM_PID" || true
DURATION=$(($(date +%s) - STARTED))
EXIT_CODE=$(cat "$WORK/agent.status")
if [ -e "$WORK/cancelled" ]; then
  # The controller already ended the job: no upload or report would be accepted.
  REPORTS_DONE=1
  say "the job was ended by the controller (cancelled); the agent was stopped (exit status $EXIT_CODE)"
  exit 0
fi
# Only this run's output: the log keeps earlier attempts too. The log is already redacted, so a
# token cut in half at the 4000-byte edge cannot leak.
tail -c +"$((LOG_START + 1))" "$LOG_FILE" | tail -c 4000 >"$WORK/output_tail"
case "$EXIT_CODE" in
  0) STATUS=COMPLETED ;;
  124) STATUS=TIMEOUT ;;
  *) STATUS=FAILED ;;
esac

# --- branch ---------------------------------------------------------------------------------------

PUSHED=false
PUSH_ERROR=""
# git_quiet WHAT ARGS...: git in the checkout with hooks and fsmonitor off; on failure PUSH_ERROR says
# what failed, in git's last words.
git_quiet() {
  q_what=$1
  shift
  if GIT_TERMINAL_PROMPT=0 timeout 600 git -c core.hooksPath=/dev/null -c core.fsmonitor=false -C "$CLONE_DIR" "$@" \
    </dev/null >"$WORK/git.log" 2>&1; then
    return 0
  fi
  PUSH_ERROR="$q_what failed: $(tail -n 8 "$WORK/git.log" | tr '\n' ' ' | tail -c 600 | redact)"
  PUSH_ERROR="${PUSH_ERROR% }"
  return 1
}

# keep_branch: commit what the agent left on $BRANCH; push it when the agent exited 0. Sets PUSHED
# and, when it did not push, PUSH_ERROR. Nothing here fails the job: the commit stays in the checkout.
keep_branch() {
  k_head=$(git -C "$CLONE_DIR" symbolic-ref --quiet HEAD 2>/dev/null) || k_head="a detached HEAD"
  if [ "$k_head" != "refs/heads/$BRANCH" ]; then
    PUSH_ERROR="the agent left the checkout on ${k_head#refs/heads/}, not on branch $BRANCH: nothing committed or pushed"
    return 0
  fi
  git_quiet "git add" add -A || return 0
  if ! git -C "$CLONE_DIR" diff --cached --quiet --no-ext-diff 2>/dev/null; then
    git_quiet "git commit" -c user.name="agentlab runner" -c user.email=runner@agentlab.invalid \
      -c commit.gpgsign=false commit --quiet --no-verify -m "agentlab job $JOB_ID" \
      -m "What the agent left when it ended with exit status $EXIT_CODE ($STATUS)." || return 0
  fi
  if [ "$STATUS" != COMPLETED ]; then
    PUSH_ERROR="not pushed: the job ended $STATUS"
    return 0
  fi
  if [ -n "$CRED_HELPER" ]; then
    set -- -c credential.helper= -c "credential.helper=$CRED_HELPER"
  else
    set -- -c credential.helper=
  fi
  git_quiet "git push of $BRANCH" "$@" push --quiet --no-verify origin "refs/heads/$BRANCH:refs/heads/$BRANCH" ||
    return 0
  PUSHED=true
}

MESSAGE="agent finished"
if [ -n "$BRANCH" ]; then
  keep_branch
  if [ "$PUSHED" = true ]; then
    MESSAGE="agent finished; branch $BRANCH pushed"
  else
    warn "branch $BRANCH: $PUSH_ERROR"
    MESSAGE="agent finished; branch $BRANCH kept in the workspace, not pushed ($PUSH_ERROR)"
  fi
fi
COMMIT=$(git -C "$CLONE_DIR" rev-parse --verify --quiet HEAD 2>/dev/null) || COMMIT=""
build_result "$EXIT_CODE" "$DURATION" "$COMMIT" "$WORK/output_tail"
upload_all "$WORK/result.json"
build_result "$EXIT_CODE" "$DURATION" "$COMMIT" "$WORK/output_tail"
finish "$STATUS" "$MESSAGE"
