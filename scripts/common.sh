# Shared by the scripts: puts Swift on PATH and ends leftover throwaway servers.
export PATH="/opt/swift/usr/bin:$PATH"

# Ends throwaway clusters, PgBouncers and guardians a crashed run may have left.
cleanup_leftovers() {
  pkill -f 'ferry-guardian' 2>/dev/null || true
  for pidfile in "${TMPDIR:-/tmp}"/ferry-pg-*/data/postmaster.pid; do
    [ -e "$pidfile" ] || continue
    kill -INT "$(head -n1 "$pidfile")" 2>/dev/null || true
  done
  pkill -f "${TMPDIR:-/tmp}/ferry-pgbouncer-" 2>/dev/null || true
}
