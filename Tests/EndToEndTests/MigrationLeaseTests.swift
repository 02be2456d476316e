import ControlDatabase
import FerryTestSupport
import Foundation
import Testing

/// A `ferryd migrate` killed with SIGKILL while it holds the migration lease: another
/// migrator waits for the lease to expire, takes it over and completes the migration.
@Suite struct MigrationLeaseTests {
    @Test func aKilledLeaseHolderIsTakenOverAfterExpiry() async throws {
        let url = try await TestPostgres.shared.freshDatabase("lease_kill")
        // A non-transactional migration that sleeps until the test opens the gate table.
        let slow = """
            -- ferry:no-transaction
            CREATE TABLE IF NOT EXISTS slow_gate (opened boolean);
            SELECT pg_sleep(CASE WHEN EXISTS (SELECT 1 FROM slow_gate) THEN 0 ELSE 600 END);
            CREATE TABLE IF NOT EXISTS slow_done (x int);
            """
        let directory = try migrationsDirectory(extra: ["0099_slow.sql": slow])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let environment = ["FERRY_DATABASE_URL": url.secretURLString]
        let arguments = [FerryBinaries.ferryd, "migrate", "--migrations-dir", directory, "--migration-lease-seconds", "3"]

        let holder = try RunningProcess.start(arguments, environment: environment)
        // Wait until it holds the lease and sleeps inside the migration.
        var holderSleeping = false
        for _ in 0..<200 {
            holderSleeping = try await scalar(url, "SELECT count(*)::int FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'SELECT pg_sleep(CASE%' AND state = 'active'") == 1
            if holderSleeping { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(holderSleeping, "the first migrator never reached the slow migration: \(holder.output)")
        let leaseOwner = try await scalar(url, "SELECT count(*)::int FROM ferry_migration_lease WHERE name = 'migrations' AND expires_at > now()")
        #expect(leaseOwner == 1)
        // Recorded in the database, so that the takeover time can be checked against it.
        _ = try await scalar(url, "CREATE TABLE lease_before_kill AS SELECT expires_at FROM ferry_migration_lease")

        holder.child.signal(SIGKILL)
        let killed = await holder.finish()
        #expect(killed.status == 128 + SIGKILL)
        #expect(try await scalar(url, "SELECT count(*)::int FROM ferry_schema_migrations WHERE version = 99") == 0)

        _ = try await scalar(url, "INSERT INTO slow_gate VALUES (true) RETURNING 1")
        let started = ContinuousClock.now
        let successor = try await RunningProcess.run(arguments, environment: environment, timeout: .seconds(60))
        let waited = ContinuousClock.now - started

        #expect(successor.status == 0, "\(successor.output)")
        #expect(successor.output.contains("waiting for the migration lease"), "\(successor.output)")
        #expect(successor.output.contains("0099_slow"))
        var expected = Dictionary(uniqueKeysWithValues: try MigrationSet.builtIn().migrations.map { ($0.version, 1) })
        expected[99] = 1
        #expect(try await recordedVersions(url) == expected)
        #expect(try await scalar(url, "SELECT (to_regclass('slow_done') IS NOT NULL)::int") == 1)
        #expect(waited < .seconds(30))
        // It did not run 0099 before the dead holder's lease expired, however it was renewed
        // (the last expiry seen before the kill is a lower bound).
        #expect(try await scalar(url, "SELECT (applied_at >= (SELECT expires_at FROM lease_before_kill))::int FROM ferry_schema_migrations WHERE version = 99") == 1)
        #expect(try await scalar(url, "SELECT count(*)::int FROM ferry_migration_lease") == 0)
        // The successor ended the dead holder's statement, which was still sleeping on the server
        // (termination is a signal: give the backend a moment to exit).
        var sleeping = -1
        for _ in 0..<50 where sleeping != 0 {
            sleeping = try await scalar(url, "SELECT count(*)::int FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%SELECT pg_sleep(CASE%' AND pid <> pg_backend_pid()")
            if sleeping != 0 { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(sleeping == 0, "the dead holder's statement still runs")
    }

    /// A holder paused (SIGSTOP: a VM pause, a long GC) while its worker sits idle between two
    /// statements must not run its next statement when it resumes after a successor took the
    /// lease over and completed the migration.
    @Test func aPausedHolderRunsNoStatementAfterATakeover() async throws {
        let url = try await TestPostgres.shared.freshDatabase("lease_pause")
        // The DO statement waits for the test's gate; the INSERT after it logs which session ran it.
        let fenced = """
            -- ferry:no-transaction
            CREATE TABLE IF NOT EXISTS fence_gate (opened boolean);
            CREATE TABLE IF NOT EXISTS fence_log (pid int, at timestamptz);
            DO $$ BEGIN WHILE NOT EXISTS (SELECT 1 FROM fence_gate) LOOP PERFORM pg_sleep(0.05); END LOOP; END $$;
            INSERT INTO fence_log VALUES (pg_backend_pid(), clock_timestamp());
            """
        let directory = try migrationsDirectory(extra: ["0099_fenced.sql": fenced])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let environment = ["FERRY_DATABASE_URL": url.secretURLString]
        let arguments = [FerryBinaries.ferryd, "migrate", "--migrations-dir", directory, "--migration-lease-seconds", "3"]

        let holder = try RunningProcess.start(arguments, environment: environment)
        // However the test ends, the holder must not stay stopped (finish kills it at worst).
        defer { holder.child.signal(SIGCONT) }
        var worker = 0
        for _ in 0..<300 where worker == 0 {
            worker = (try? await scalar(url, "SELECT coalesce(max(pid), 0)::int FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'DO $$ BEGIN WHILE%' AND state = 'active'")) ?? 0
            if worker == 0 { try await Task.sleep(for: .milliseconds(100)) }
        }
        try #require(worker != 0, "the holder never reached the gated statement: \(holder.output)")

        // Pause the holder, then let its statement end on the server: its worker session is
        // now idle between two statements, with the next one still to send.
        holder.child.signal(SIGSTOP)
        _ = try await scalar(url, "INSERT INTO fence_gate VALUES (true) RETURNING 1")
        var idle = false
        for _ in 0..<100 where !idle {
            idle = try await scalar(url, "SELECT count(*)::int FROM pg_stat_activity WHERE pid = \(worker) AND state = 'idle'") == 1
            if !idle { try await Task.sleep(for: .milliseconds(50)) }
        }
        try #require(idle, "the paused holder's worker did not become idle")

        // Its lease expires (it cannot renew while stopped); a successor takes over and finishes.
        let successor = try await RunningProcess.run(arguments, environment: environment, timeout: .seconds(60))
        #expect(successor.status == 0, "\(successor.output)")
        #expect(try await scalar(url, "SELECT count(*)::int FROM ferry_schema_migrations WHERE version = 99") == 1)
        #expect(try await scalar(url, "SELECT count(*)::int FROM fence_log") == 1)

        // The holder resumes: it must find its session gone or its lease lost, and run nothing.
        holder.child.signal(SIGCONT)
        let resumed = await holder.finish(timeout: .seconds(60))
        #expect(resumed.status == 1, "\(resumed.output)")
        #expect(resumed.output.contains("lost the migration lease"), "\(resumed.output)")
        #expect(try await scalar(url, "SELECT count(*)::int FROM fence_log WHERE pid = \(worker)") == 0, "the paused holder ran its next statement after the takeover")
        #expect(try await scalar(url, "SELECT count(*)::int FROM fence_log") == 1)
        #expect(try await scalar(url, "SELECT count(*)::int FROM ferry_schema_migrations WHERE version = 99") == 1)
    }
}
