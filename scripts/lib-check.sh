# Checking a copied tenant against its source, shared by scripts/demo and scripts/soak. Sourced
# by a script that defines `value DB SQL` (one psql -At query on database DB of its cluster).

# fingerprint DB SCHEMA TABLES...: one line per table (rows and the sum of a hash of every row's
# text), then the schema's numbers of indexes, constraints and views, and its sequences' positions.
fingerprint() {
  local db="$1" s="$2" q="" t; shift 2
  for t in "$@"; do
    q+="${q:+ UNION ALL }SELECT '$t', count(*), coalesce(sum(hashtext(r::text)::bigint), 0) FROM $s.$t r"
  done
  value "$db" "SELECT * FROM ($q) f ORDER BY 1"
  value "$db" "SELECT (SELECT count(*) FROM pg_indexes WHERE schemaname = '$s') || ' indexes, '
    || (SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = '$s') || ' constraints, '
    || (SELECT count(*) FROM pg_views WHERE schemaname = '$s') || ' view(s)'"
  value "$db" "SELECT 'sequences: ' || coalesce(string_agg(sequencename || ' at ' || coalesce(last_value::text, 'start'), ', ' ORDER BY sequencename), 'none')
    FROM pg_sequences WHERE schemaname = '$s'"
}

# compare_tenant SOURCE_DB SOURCE_SCHEMA TARGET_DB TARGET_SCHEMA: whether the target has the
# source's tables, row counts, row hashes, numbers of indexes, constraints and views, and sequence
# positions. Sets tenant_tables (the source's tables), tenant_want and tenant_got (both
# fingerprints; a target that cannot be read has psql's error in tenant_got).
compare_tenant() {
  local sdb="$1" s="$2" db="$3" target="$4"
  tenant_tables=($(value "$sdb" "SELECT tablename FROM pg_tables WHERE schemaname = '$s' ORDER BY 1"))
  tenant_want="$(fingerprint "$sdb" "$s" "${tenant_tables[@]}")"
  tenant_got="$(fingerprint "$db" "$target" "${tenant_tables[@]}" 2>&1)" || true
  [ "$tenant_want" = "$tenant_got" ]
}
