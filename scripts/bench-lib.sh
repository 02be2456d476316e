# What the tenant benchmarks share (scripts/bench-clone, bench-archive, bench-replace): sourced
# after `cd` to the repository and `source scripts/common.sh`. Call order:
#   bench_init NAME LETTERS            knobs checked, clean-up trap set, want() defined
#   bench_install_deps [pgcopydb]      scripts/install-deps (and Debian's pgcopydb when asked)
#   bench_build PRODUCT...             swift build (BENCH_BUILD: release, or debug), sets $bin
#   bench_start_cluster                throwaway tuned PostgreSQL in $work, database src;
#                                      dsn/sql/value reach it
#   bench_print_cluster, bench_check_disk MB "WHAT"
#   bench_generate_tenant [DB [SCHEMA [SCALE]]]   the tenant (same data at the same scale)
#   bench_source_report [DB [SCHEMA]]  the report and the figures check_target compares with
#   bench_start_ferryd [ARGS...]       ferryd serve on control database ferry; $ferry_connection
#   run_method / run_ferry_method      one timed method: wall[], tool_cpu[], pg_cpu_s[], status[]
#   bench_summary_header, bench_summary_table LETTERS, print_ratio NUM DEN [MAX [NOTE]]
#   bench_finish "WHAT"                exit 1 when a method failed
# Everything this run starts or writes is under $work and is ended or removed on exit.

# ---- knobs, clean-up ----------------------------------------------------------------------
bench_name="bench"
work=""
pgbin=""
ferryd_pid=""
made_policy=""
bench_exit_hooks=()   # commands run first on exit (e.g. a second server's stop)
declare -A wall tool_cpu pg_cpu_s status
failures=0

# bench_init NAME LETTERS: checks BENCH_SCALE (0, 20], BENCH_ONLY (letters among LETTERS,
# default all), BENCH_COPY_WIDTH/BENCH_INDEX_WIDTH/BENCH_SPLIT_BYTES (whole numbers) and
# BENCH_BUILD (release, default, or debug); sets $scale, $only, $build_config; sets the trap.
bench_init() {
  bench_name="$1"
  local letters="$2"
  scale="${BENCH_SCALE:-1}"
  only="${BENCH_ONLY:-$letters}"
  build_config="${BENCH_BUILD:-release}"
  python3 -c 'import sys; s = float(sys.argv[1]); sys.exit(0 if 0 < s <= 20 else 1)' "$scale" 2>/dev/null \
    || { echo "$bench_name: BENCH_SCALE must be a number in (0, 20], not '$scale'" >&2; exit 64; }
  [[ "$only" =~ ^[$letters]+$ ]] \
    || { echo "$bench_name: BENCH_ONLY must be letters among $(sed 's/./& /g; s/ $//' <<<"$letters"), not '$only'" >&2; exit 64; }
  local knob
  for knob in BENCH_COPY_WIDTH BENCH_INDEX_WIDTH BENCH_SPLIT_BYTES; do
    [[ "${!knob:-0}" =~ ^[0-9]+$ ]] || { echo "$bench_name: $knob must be a whole number" >&2; exit 64; }
  done
  [[ "$build_config" =~ ^(release|debug)$ ]] || { echo "$bench_name: BENCH_BUILD must be release or debug, not '$build_config'" >&2; exit 64; }
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
want() { [[ "$only" == *"$1"* ]]; }
bench_pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true; }
as_postgres() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups "$@"; else "$@"; fi; }
descendants() { local p; for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do descendants "$p"; echo "$p"; done; }
bench_cleanup() {
  local rc=$? hook
  trap - EXIT INT TERM
  for hook in "${bench_exit_hooks[@]}"; do eval "$hook" || true; done
  if [ -n "$ferryd_pid" ] && kill -TERM "$ferryd_pid" 2>/dev/null; then
    for _ in $(seq 1 100); do kill -0 "$ferryd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$ferryd_pid" 2>/dev/null || true
  fi
  # Clients of an interrupted step (psql, pg_dump, pg_restore, pgcopydb and its workers): our descendants.
  local pids; pids="$(descendants $$)"
  [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
  if [ -n "$work" ] && [ -f "$work/pg/postmaster.pid" ]; then
    as_postgres "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  wait 2>/dev/null || true
  [ -n "$work" ] && rm -rf "$work"
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  exit "$rc"
}

# ---- dependencies, binaries -----------------------------------------------------------------
# bench_install_deps [pgcopydb]: what Ferry needs (scripts/install-deps), Debian's pgcopydb
# only when asked and missing; sets $pgbin (the newest PostgreSQL server binaries).
bench_install_deps() {
  scripts/install-deps
  if [ "${1:-}" = pgcopydb ] && ! command -v pgcopydb >/dev/null 2>&1; then
    echo "$bench_name: installing Debian's pgcopydb"
    local sudo="" apt_log
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    # As install-deps: policy-rc.d keeps apt from starting system-wide services.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      made_policy=1
      printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
      $sudo chmod +x /usr/sbin/policy-rc.d
    fi
    apt_log="$(mktemp)"
    if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends pgcopydb; } >"$apt_log" 2>&1; then
      cat "$apt_log" >&2; rm -f "$apt_log"
      echo "$bench_name: could not install pgcopydb" >&2
      exit 1
    fi
    rm -f "$apt_log"
    if [ -n "$made_policy" ]; then $sudo rm -f /usr/sbin/policy-rc.d; made_policy=""; fi
  fi
  pgbin="$(bench_pgbin)"
  [ -n "$pgbin" ] || { echo "$bench_name: no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }
}

# bench_build PRODUCT...: builds each product in $build_config (SwiftPM's .build may be shared:
# a locked build database is waited out and retried) and sets $bin to the binaries' folder.
bench_build() {
  local product log attempt built
  for product in "$@"; do
    log="$(mktemp)"; built=""
    for attempt in 1 2 3 4 5 6; do
      if swift build -c "$build_config" --product "$product" >"$log" 2>&1; then built=1; break; fi
      if grep -q "database is locked" "$log"; then echo "$bench_name: the build database is locked; retrying in 20 s"; sleep 20; continue; fi
      cat "$log" >&2; rm -f "$log"
      echo "$bench_name: swift build --product $product failed" >&2
      return 1
    done
    if [ -z "$built" ]; then cat "$log" >&2; rm -f "$log"; return 1; fi
    rm -f "$log"
  done
  bin="$(swift build -c "$build_config" --show-bin-path)"
  if [ "$build_config" = debug ]; then
    echo "$bench_name: BENCH_BUILD=debug: debug binaries from $bin; a functional check, the figures are no benchmark"
  fi
}

# ---- the cluster ----------------------------------------------------------------------------
bench_settings=(max_connections=200 shared_buffers=256MB maintenance_work_mem=256MB max_wal_size=4GB
                checkpoint_timeout=30min fsync=off synchronous_commit=off)
# bench_start_cluster: $work (/tmp/ferry-NAME-XXXXXX), a throwaway cluster in $work/pg tuned for
# bulk loads, superuser ferry, trust auth, on a free port of 127.0.0.1; database src.
bench_start_cluster() {
  work="$(mktemp -d "/tmp/ferry-$bench_name-XXXXXX")"
  chmod 755 "$work"
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  local options="-p $port -k $work/pg -c listen_addresses=127.0.0.1" setting
  for setting in "${bench_settings[@]}"; do options+=" -c $setting"; done
  mkdir "$work/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$work/pg"
  as_postgres "$pgbin/initdb" -D "$work/pg" -U ferry --auth=trust >/dev/null
  as_postgres "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w start -o "$options" >/dev/null
  postmaster="$(head -n1 "$work/pg/postmaster.pid")"
  createdb_ src
}
dsn() { echo "postgresql://ferry@127.0.0.1:$port/$1?sslmode=disable"; }
sql() { local db="$1"; shift; "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 -d "$(dsn "$db")" "$@"; }
value() { "$pgbin/psql" -X -At -v ON_ERROR_STOP=1 -d "$(dsn "$1")" -c "$2"; }
createdb_() { "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U ferry "$1"; }
dropdb_() { "$pgbin/dropdb" -h 127.0.0.1 -p "$port" -U ferry "$1"; }
bench_print_cluster() {
  echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') at 127.0.0.1:$port (throwaway cluster in $work): ${bench_settings[*]}"
}
# bench_check_disk MB "WHAT": prints the free space at $work; exits when under MB.
bench_check_disk() {
  local need_mb="$1" free_mb
  free_mb="$(df -Pm "$work" | awk 'NR == 2 {print $4}')"
  echo "disk: $free_mb MB free at $work, about $need_mb MB needed ($2)"
  if [ "$free_mb" -lt "$need_mb" ]; then
    echo "$bench_name: not enough free disk: $free_mb MB free, about $need_mb MB needed; lower BENCH_SCALE" >&2
    exit 1
  fi
}
# ---- the tenant -----------------------------------------------------------------------------
# bench_generate_tenant [DB [SCHEMA [SCALE]]] (src, bench, $scale): about 1.2 GB of tables at
# scale 1 (one `events` table holds over half, then orders, accounts, order_items and small
# tables), an enum, identities, indexes incl. a partial one, unique and foreign keys.
bench_generate_tenant() {
  local db="${1:-src}" s="${2:-bench}" at="${3:-$scale}" t0 gen
  rows() { python3 -c 'import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))' "$1" "$at"; }
  local n_accounts n_orders n_items n_events n_products=5000
  n_accounts="$(rows 770000)"; n_orders="$(rows 3150000)"; n_items="$(rows 1320000)"; n_events="$(rows 2950000)"
  echo "== generating schema $s in database $db"
  t0=$EPOCHREALTIME
  sql "$db" <<SQL
CREATE SCHEMA $s;
CREATE TYPE $s.plan_tier AS ENUM ('free', 'team', 'business', 'enterprise');
CREATE TABLE $s.plans (id smallint NOT NULL, name text NOT NULL, tier $s.plan_tier NOT NULL,
  monthly_price numeric(10,2) NOT NULL CHECK (monthly_price >= 0));
CREATE TABLE $s.products (id integer NOT NULL, sku text NOT NULL, name text NOT NULL,
  price numeric(10,2) NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE $s.accounts (id integer GENERATED BY DEFAULT AS IDENTITY, email text NOT NULL,
  name text NOT NULL, plan_id smallint NOT NULL, active boolean NOT NULL DEFAULT true,
  created_at timestamptz NOT NULL DEFAULT now(), settings jsonb);
CREATE TABLE $s.orders (id bigint GENERATED ALWAYS AS IDENTITY, account_id integer NOT NULL,
  status text NOT NULL CHECK (status IN ('pending', 'paid', 'shipped', 'cancelled')),
  total numeric(12,2) NOT NULL, currency char(3) NOT NULL DEFAULT 'EUR',
  created_at timestamptz NOT NULL, shipped_at timestamptz, note text);
CREATE TABLE $s.order_items (id bigint GENERATED ALWAYS AS IDENTITY, order_id bigint NOT NULL,
  product_id integer NOT NULL, quantity integer NOT NULL CHECK (quantity > 0), unit_price numeric(10,2) NOT NULL);
CREATE TABLE $s.events (id bigint GENERATED ALWAYS AS IDENTITY, occurred_at timestamptz NOT NULL,
  account_id integer NOT NULL, kind text NOT NULL, payload text NOT NULL, attributes jsonb NOT NULL,
  amount numeric(14,4));
CREATE TABLE $s.audit_log (id bigint GENERATED ALWAYS AS IDENTITY, account_id integer,
  action text NOT NULL, at timestamptz NOT NULL DEFAULT now(), details jsonb);
INSERT INTO $s.plans VALUES (1, 'free', 'free', 0), (2, 'starter', 'team', 9), (3, 'team', 'team', 29),
  (4, 'growth', 'business', 99), (5, 'business', 'business', 299), (6, 'scale', 'enterprise', 999),
  (7, 'enterprise', 'enterprise', 2999), (8, 'legacy', 'team', 19);
INSERT INTO $s.products (id, sku, name, price, created_at)
  SELECT i, 'SKU-' || lpad(i::text, 6, '0'), 'Product ' || md5(i::text), (i % 500) + 0.99,
         timestamptz '2020-01-01' + i * interval '1 hour' FROM generate_series(1, $n_products) i;
SQL
  # The big tables load in two sessions at once; keys and indexes come after the data.
  sql "$db" >/dev/null <<SQL &
INSERT INTO $s.events (occurred_at, account_id, kind, payload, attributes, amount)
  SELECT timestamptz '2023-01-01' + i * interval '7 seconds', 1 + (i * 7919) % $n_accounts,
         (ARRAY['login', 'logout', 'view', 'click', 'purchase', 'refund', 'signup', 'error'])[1 + i % 8],
         md5(i::text) || md5((i * 31)::text),
         jsonb_build_object('ip', '10.' || (i % 256) || '.' || (i / 256 % 256) || '.' || (i % 7),
                            'agent', 'Mozilla/5.0 (X11; Linux) build ' || (i % 1000),
                            'n', i % 1000, 'tags', jsonb_build_array('t' || (i % 13), 't' || (i % 17))),
         CASE WHEN i % 5 = 0 THEN NULL ELSE (i % 100000) / 100.0 END
  FROM generate_series(1::bigint, $n_events) i;
SQL
  gen=$!
  sql "$db" >/dev/null <<SQL
INSERT INTO $s.accounts (id, email, name, plan_id, active, created_at, settings)
  SELECT i, 'user' || i || '@example' || (i % 97) || '.com', 'Account ' || md5(i::text), 1 + i % 8, i % 11 <> 0,
         timestamptz '2019-01-01' + i * interval '3 minutes',
         CASE WHEN i % 3 = 0 THEN jsonb_build_object('theme', 'dark', 'lang', 'en') END
  FROM generate_series(1, $n_accounts) i;
SELECT setval(pg_get_serial_sequence('$s.accounts', 'id'), $n_accounts);
INSERT INTO $s.orders (account_id, status, total, created_at, shipped_at, note)
  SELECT 1 + (i * 104729) % $n_accounts, (ARRAY['pending', 'paid', 'shipped', 'shipped', 'shipped', 'cancelled'])[1 + i % 6],
         (i % 100000) / 10.0, timestamptz '2021-01-01' + i * interval '11 seconds',
         CASE WHEN i % 6 IN (2, 3, 4) THEN timestamptz '2021-01-03' + i * interval '11 seconds' END,
         CASE WHEN i % 10 = 0 THEN 'gift wrap, ' || md5(i::text) END
  FROM generate_series(1::bigint, $n_orders) i;
INSERT INTO $s.order_items (order_id, product_id, quantity, unit_price)
  SELECT 1 + (i * 7) % $n_orders, 1 + i % $n_products, 1 + i % 5, (i % 500) + 0.99
  FROM generate_series(1::bigint, $n_items) i;
SQL
  wait "$gen"
  sql "$db" <<SQL
ALTER TABLE $s.plans ADD PRIMARY KEY (id), ADD UNIQUE (name);
ALTER TABLE $s.products ADD PRIMARY KEY (id), ADD UNIQUE (sku);
ALTER TABLE $s.accounts ADD PRIMARY KEY (id);
CREATE UNIQUE INDEX accounts_email_key ON $s.accounts (lower(email));
CREATE INDEX accounts_created_at_idx ON $s.accounts (created_at);
ALTER TABLE $s.orders ADD PRIMARY KEY (id);
CREATE INDEX orders_account_created_idx ON $s.orders (account_id, created_at);
CREATE INDEX orders_pending_idx ON $s.orders (created_at) WHERE status = 'pending';
ALTER TABLE $s.order_items ADD PRIMARY KEY (id);
CREATE INDEX order_items_order_id_idx ON $s.order_items (order_id);
ALTER TABLE $s.events ADD PRIMARY KEY (id);
CREATE INDEX events_account_occurred_idx ON $s.events (account_id, occurred_at);
ALTER TABLE $s.audit_log ADD PRIMARY KEY (id);
ALTER TABLE $s.accounts ADD FOREIGN KEY (plan_id) REFERENCES $s.plans (id);
ALTER TABLE $s.orders ADD FOREIGN KEY (account_id) REFERENCES $s.accounts (id);
ALTER TABLE $s.order_items ADD FOREIGN KEY (order_id) REFERENCES $s.orders (id) ON DELETE CASCADE,
  ADD FOREIGN KEY (product_id) REFERENCES $s.products (id);
ALTER TABLE $s.events ADD FOREIGN KEY (account_id) REFERENCES $s.accounts (id);
ALTER TABLE $s.audit_log ADD FOREIGN KEY (account_id) REFERENCES $s.accounts (id) ON DELETE SET NULL;
SQL
  sql "$db" -c "VACUUM ANALYZE"
  sql "$db" -c "CHECKPOINT"
  printf 'generated in %.1f s\n' "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')"
}

# The figures check_target compares, for one tenant (schema): row counts per table (of $tables),
# numbers of indexes and constraints, sequence positions.
tenant_count_sql() {
  local q="" t
  for t in "${tables[@]}"; do q+="${q:+ UNION ALL }SELECT '$t' AS t, count(*) FROM $1.$t"; done
  echo "SELECT * FROM ($q) c ORDER BY t"
}
tenant_shape_sql() {
  echo "SELECT (SELECT count(*) FROM pg_indexes WHERE schemaname = '$1') || ' indexes, '
  || (SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = '$1') || ' constraints'"
}
tenant_seq_sql() {
  echo "SELECT coalesce(string_agg(sequencename || ' at ' || coalesce(last_value::text, 'start'), ', ' ORDER BY sequencename), 'none')
  FROM pg_sequences WHERE schemaname = '$1'"
}
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }

# bench_source_report [DB [SCHEMA]] (src, bench): sets $source_db, $source_schema, $tables
# (largest first), count_sql/shape_sql/seq_sql and the source's figures (source_counts,
# source_shape, source_seqs), $table_bytes, $total_rows; prints the table report and keeps it
# in $work/table-report for the summary.
bench_source_report() {
  source_db="${1:-src}"; source_schema="${2:-bench}"
  local db="$source_db" s="$source_schema" t n size idx total_idx
  tables=($(value "$db" "SELECT tablename FROM pg_tables WHERE schemaname = '$s' ORDER BY pg_table_size(format('%I.%I', schemaname, tablename)::regclass) DESC, tablename"))
  count_sql="$(tenant_count_sql "$s")"
  shape_sql="$(tenant_shape_sql "$s")"
  seq_sql="$(tenant_seq_sql "$s")"
  source_counts="$(value "$db" "$count_sql")"
  source_seqs="$(value "$db" "$seq_sql")"
  source_shape="$(value "$db" "$shape_sql")"
  table_bytes="$(value "$db" "SELECT sum(pg_table_size(format('%I.%I', schemaname, tablename)::regclass)) FROM pg_tables WHERE schemaname = '$s'")"
  echo "source tenant $s (rows exact; table = heap + TOAST, as copied; indexes rebuilt by every method):"
  value "$db" "SELECT tablename, pg_table_size(format('%I.%I', schemaname, tablename)::regclass), pg_indexes_size(format('%I.%I', schemaname, tablename)::regclass)
             FROM pg_tables WHERE schemaname = '$s'" | sort >"$work/sizes"
  total_rows="$(awk -F'|' '{ s += $2 } END { print s }' <<<"$source_counts")"
  total_idx="$(awk -F'|' '{ s += $3 } END { print s }' "$work/sizes")"
  {
    printf '  %-12s %12s %12s %12s\n' table rows 'table MB' 'indexes MB'
    for t in "${tables[@]}"; do
      n="$(grep "^$t|" <<<"$source_counts" | cut -d'|' -f2)"
      IFS='|' read -r _ size idx < <(grep "^$t|" "$work/sizes")
      printf '  %-12s %12d %12s %12s\n' "$t" "$n" "$(mb "$size")" "$(mb "$idx")"
    done
    printf '  %-12s %12d %12s %12s   (%s; database %s)\n' total "$total_rows" "$(mb "$table_bytes")" \
      "$(mb "$total_idx")" "$source_shape" "$(value "$db" "SELECT pg_size_pretty(pg_database_size('$db'))")"
  } | tee "$work/table-report"
}

# check_target DB LABEL [SCHEMA]: the tenant in DB (the source's schema, or SCHEMA, compared
# with the same schema in the source database) must have the source's row counts, numbers of
# indexes and constraints, and sequence positions. Prints one line, or the differences.
check_target() {
  local db="$1" label="$2" s="${3:-$source_schema}" want_counts want_shape want_seqs q_counts q_shape q_seqs counts shape seqs
  if [ "$s" = "$source_schema" ]; then
    q_counts="$count_sql"; q_shape="$shape_sql"; q_seqs="$seq_sql"
    want_counts="$source_counts"; want_shape="$source_shape"; want_seqs="$source_seqs"
  else
    q_counts="$(tenant_count_sql "$s")"; q_shape="$(tenant_shape_sql "$s")"; q_seqs="$(tenant_seq_sql "$s")"
    want_counts="$(value "$source_db" "$q_counts")"; want_shape="$(value "$source_db" "$q_shape")"; want_seqs="$(value "$source_db" "$q_seqs")"
  fi
  counts="$(value "$db" "$q_counts" 2>&1)" || true
  shape="$(value "$db" "$q_shape" 2>&1)" || true
  seqs="$(value "$db" "$q_seqs" 2>&1)" || true
  if [ "$counts" = "$want_counts" ] && [ "$shape" = "$want_shape" ] && [ "$seqs" = "$want_seqs" ]; then
    echo "check: row counts of all ${#tables[@]} tables equal the source's; $shape and sequence positions as on the source"
    return 0
  fi
  echo "CHECK FAILED ($label): the target differs from the source (< source, > target)"
  diff <(echo "$want_counts"; echo "$want_shape"; echo "sequences: $want_seqs") \
       <(echo "$counts"; echo "$shape"; echo "sequences: $seqs") | sed 's/^/  /' || true
  return 1
}

# ---- CPU readers ----------------------------------------------------------------------------
clk_tck="$(getconf CLK_TCK)"
# CPU seconds of the PostgreSQL server: the postmaster (with the backends it reaped) plus its
# live children.
pg_cpu() {
  python3 - "$postmaster" "$clk_tck" <<'PY'
import os, sys
pm, tck, total = int(sys.argv[1]), int(sys.argv[2]), 0
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    except OSError:
        continue
    if int(pid) == pm:
        total += sum(int(x) for x in f[11:15])
    elif int(f[1]) == pm:
        total += int(f[11]) + int(f[12])
print(total / tck)
PY
}
# CPU seconds of one process with the children it reaped (ferryd).
proc_cpu() { awk -v t="$clk_tck" '{ sub(/.*\) /, ""); print ($12 + $13 + $14 + $15) / t }' "/proc/$1/stat"; }
# CPU seconds of this script's reaped children (the tools), read without forking.
shell_children_cpu() { local s; read -r s <"/proc/$$/stat"; s="${s##*) }"; local -a f=($s); CHILD_TICKS=$((f[13] + f[14])); }

# ---- one method -----------------------------------------------------------------------------
# run_method [-n] M LABEL FN: runs FN DB timed, where DB (dst_M) is a fresh database, then checks
# the tenant FN made there (check_target) and drops DB. With -n, FN makes no database (it writes
# an archive, say): it runs without an argument and nothing is checked. Sets wall[M] (seconds),
# tool_cpu[M] (this script's children: the tools), pg_cpu_s[M] (the whole cluster) and
# status[M] (ok, FAILED, MISMATCH); counts $failures.
run_method() {
  local target=1
  if [ "$1" = -n ]; then target=""; shift; fi
  local m="$1" label="$2" fn="$3" db="" t0 t1 pg0 pg1 c0 rc=0
  echo "== ($m) $label"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores; other work on the machine skews every figure)"
  if [ -n "$target" ]; then db="dst_$m"; createdb_ "$db"; fi
  sql "$source_db" -c "CHECKPOINT"
  pg0="$(pg_cpu)"; shell_children_cpu; c0=$CHILD_TICKS
  t0=$EPOCHREALTIME
  if [ -n "$target" ]; then "$fn" "$db" & else "$fn" & fi
  wait $! || rc=$?
  t1=$EPOCHREALTIME
  shell_children_cpu; pg1="$(pg_cpu)"
  wall[$m]="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')"
  tool_cpu[$m]="$(awk -v a="$c0" -v b="$CHILD_TICKS" -v t="$clk_tck" 'BEGIN {printf "%.1f", (b - a) / t}')"
  pg_cpu_s[$m]="$(awk -v a="$pg0" -v b="$pg1" 'BEGIN {printf "%.1f", b - a}')"
  if [ "$rc" -ne 0 ]; then
    echo "FAILED: ($m) exited $rc after ${wall[$m]} s"
    status[$m]=FAILED; failures=$((failures + 1))
  else
    printf 'wall %s s, %.1f MB/s; CPU: tool %s s, PostgreSQL %s s\n' "${wall[$m]}" \
      "$(awk -v b="$table_bytes" -v w="${wall[$m]}" 'BEGIN {print b / 1e6 / w}')" "${tool_cpu[$m]}" "${pg_cpu_s[$m]}"
    if [ -z "$target" ]; then status[$m]=ok
    elif check_target "$db" "$m"; then status[$m]=ok; else status[$m]=MISMATCH; failures=$((failures + 1)); fi
  fi
  if [ -n "$target" ]; then dropdb_ "$db"; fi
}

# ---- ferryd, ferry --------------------------------------------------------------------------
# bench_start_ferryd [ARGS...]: database ferry on the cluster as the control database, then
# `ferryd serve` (with ARGS, e.g. --artifact-dir DIR) until ready; sets $ferryd_pid and
# $ferry_connection (the ferry CLI's --address, --ca-file, --token-file); field NAME reads
# ferryd's ready file.
bench_start_ferryd() {
  createdb_ ferry
  "$bin/ferryd" serve --database-url "$(dsn ferry)" --listen 127.0.0.1:0 --ops-address 127.0.0.1:0 \
    --ready-file "$work/ready.json" --log-level warning "$@" 2>"$work/ferryd.log" &
  ferryd_pid=$!
  for _ in $(seq 1 300); do
    [ -s "$work/ready.json" ] && break
    if ! kill -0 "$ferryd_pid" 2>/dev/null; then cat "$work/ferryd.log"; echo "$bench_name: ferryd exited early" >&2; exit 1; fi
    sleep 0.1
  done
  [ -s "$work/ready.json" ] || { cat "$work/ferryd.log"; echo "$bench_name: ferryd not ready after 30 s" >&2; exit 1; }
  ferry_connection=(--address "$(field address)" --ca-file "$(field caFile)" --token-file "$(field tokenFile)")
  echo "ferryd $(field address) (pid $ferryd_pid), control database 'ferry' on the same cluster"
}
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/ready.json" "$1"; }
# result_field FILE KEY: one field of a `ferry bench …` result file.
result_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# bench_knob_args copy|index|split...: sets $knobs to the ferry bench flags of the knobs asked
# for that are set (BENCH_COPY_WIDTH, BENCH_INDEX_WIDTH, BENCH_SPLIT_BYTES).
bench_knob_args() {
  knobs=()
  local k
  for k in "$@"; do
    case "$k" in
      copy) [ -n "${BENCH_COPY_WIDTH:-}" ] && knobs+=(--copy-width "$BENCH_COPY_WIDTH") ;;
      index) [ -n "${BENCH_INDEX_WIDTH:-}" ] && knobs+=(--index-width "$BENCH_INDEX_WIDTH") ;;
      split) [ -n "${BENCH_SPLIT_BYTES:-}" ] && knobs+=(--split-table-bytes "$BENCH_SPLIT_BYTES") ;;
    esac
  done
  return 0
}
# "copy width N, index width N, split N" of the knobs asked for (default where unset).
bench_knob_text() {
  local k out=""
  for k in "$@"; do
    case "$k" in
      copy) out+="${out:+, }copy width ${BENCH_COPY_WIDTH:-default}" ;;
      index) out+="${out:+, }index width ${BENCH_INDEX_WIDTH:-default}" ;;
      split) out+="${out:+, }split ${BENCH_SPLIT_BYTES:-default}" ;;
    esac
  done
  echo "$out"
}

# run_ferry_method [-n] M LABEL FN RESULT_FILE: run_method of a `ferry bench …` job (FN runs it
# with --server-pid $ferryd_pid --result-file RESULT_FILE). The job's own wall (StartJob to
# terminal status, from RESULT_FILE) stands for wall[M]; tool CPU is ferryd's over the run plus
# the CLI's. Prints ferryd's log tail when it failed.
run_ferry_method() {
  local flag=()
  if [ "$1" = -n ]; then flag=(-n); shift; fi
  local m="$1" label="$2" fn="$3" result="$4" ferryd0 ferryd1 job_wall
  rm -f "$result"
  ferryd0="$(proc_cpu "$ferryd_pid")"
  run_method "${flag[@]}" "$m" "$label" "$fn"
  if [ "${status[$m]}" != FAILED ] && [ -s "$result" ]; then
    job_wall="$(python3 -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["wallSeconds"])' "$result")"
    echo "($m) wall: $job_wall s from StartJob to the terminal status (${wall[$m]} s with the CLI's start and PutInstance)"
    wall[$m]="$job_wall"
  fi
  ferryd1="$(proc_cpu "$ferryd_pid")"
  tool_cpu[$m]="$(awk -v a="$ferryd0" -v b="$ferryd1" -v c="${tool_cpu[$m]}" 'BEGIN {printf "%.1f", b - a + c}')"
  if [ "${status[$m]}" = FAILED ]; then echo "ferryd's log (last 40 lines):"; tail -n 40 "$work/ferryd.log" | sed 's/^/  /'; fi
}

# ---- summary --------------------------------------------------------------------------------
bench_summary_header() {
  echo
  echo "== summary: tenant $source_schema, $(mb "$table_bytes") MB of tables ($total_rows rows, $source_shape), scale $scale, $(nproc) cores"
  cat "$work/table-report"
}
# bench_summary_table LETTERS: one row per method asked for, named by method_names[M]; with
# summary_extra set (a column title), also the column extra_column[M] before the check.
declare -A method_names extra_column
summary_extra=""
bench_summary_table() {
  local m mbs fmt='  %-42s %9s %9s %12s %12s  %s\n'
  if [ -n "$summary_extra" ]; then
    fmt='  %-42s %9s %9s %12s %12s %12s  %s\n'
    printf "$fmt" method 'wall s' 'MB/s' 'tool CPU s' 'PG CPU s' "$summary_extra" check
  else
    printf "$fmt" method 'wall s' 'MB/s' 'tool CPU s' 'PG CPU s' check
  fi
  for m in $(sed 's/./& /g' <<<"$1"); do
    want "$m" || continue
    mbs="$(awk -v b="$table_bytes" -v w="${wall[$m]}" 'BEGIN {printf "%.1f", b / 1e6 / w}')"
    if [ -n "$summary_extra" ]; then
      printf "$fmt" "($m) ${method_names[$m]}" "${wall[$m]}" "$mbs" "${tool_cpu[$m]}" "${pg_cpu_s[$m]}" "${extra_column[$m]:--}" "${status[$m]}"
    else
      printf "$fmt" "($m) ${method_names[$m]}" "${wall[$m]}" "$mbs" "${tool_cpu[$m]}" "${pg_cpu_s[$m]}" "${status[$m]}"
    fi
  done
}
# print_ratio NUM DEN [MAX [NOTE]]: "  NUM/DEN = wall ratio  goal ≤ MAX: PASS|MISS NOTE", when
# both methods ran and are ok.
print_ratio() {
  local n="$1" d="$2" max="${3:-}" note="${4:-}" ratio goal=""
  want "$n" && want "$d" && [ "${status[$n]:-}" = ok ] && [ "${status[$d]:-}" = ok ] || return 0
  ratio="$(awk -v a="${wall[$n]}" -v b="${wall[$d]}" 'BEGIN {printf "%.2f", a / b}')"
  [ -n "$max" ] && goal="goal ≤ $max: $(awk -v r="$ratio" -v m="$max" 'BEGIN {print (r <= m + 0) ? "PASS" : "MISS"}')"
  echo "  $n/$d = $ratio  $goal$note"
}
# bench_finish WHAT: exit 1 when some method failed ("method(s) failed or WHAT").
bench_finish() {
  if [ "$failures" -gt 0 ]; then
    echo "$bench_name: $failures method(s) failed or $1 (see above)" >&2
    exit 1
  fi
}
