# Shared by the scripts: puts Swift on PATH, and gives this run a temporary directory of its
# own so that clean-up after a crash touches only what this run started.
export PATH="/opt/swift/usr/bin:$PATH"

# Makes $TMPDIR a fresh directory for this run. When we are root the throwaway clusters run as
# the postgres account, which must be able to enter it.
use_private_tmpdir() {
  FERRY_RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/ferry-run-XXXXXX")"
  chmod 755 "$FERRY_RUN_TMP"
  export TMPDIR="$FERRY_RUN_TMP"
}

# Ends the servers a crashed run may have left under this run's directory, then removes it.
# Normally there are none: every cluster and PgBouncer has a guardian that cleans up when its
# owner dies. Processes are matched by their command line naming this run's directory.
cleanup_private_tmpdir() {
  [ -n "${FERRY_RUN_TMP:-}" ] && [ -d "$FERRY_RUN_TMP" ] || return 0
  for proc in /proc/[0-9]*; do
    if tr '\0' ' ' 2>/dev/null <"$proc/cmdline" | grep -q -- "$FERRY_RUN_TMP"; then
      kill -KILL "${proc#/proc/}" 2>/dev/null || true
    fi
  done
  rm -rf "$FERRY_RUN_TMP"
}
