import ControlDatabase
import FerryProtocol
import FerryTestSupport
import Foundation
import JobStore
import Logging
import PostgresNIO
import Testing

/// `JobLifecycle.saveTenantResult`: one statement, guarded by the job's ownership, that records
/// a tenant as started and then as finished with the control database's clock, and never
/// writes over a tenant the lineage finished with SUCCEEDED.
@Suite struct TenantResultTests {
    let logger = testLogger()

    @Test func aTenantIsRecordedStartedThenFinishedOnlyWhileTheJobIsTheWritersAndSuccessStays() async throws {
        let control = try await TestPostgres.shared.freshDatabase("tenantresults")
        try await Migrator(url: control, migrations: try MigrationSet.builtIn(), leaseDuration: .seconds(30), logger: logger).run()
        let (first, second) = (UUID(), UUID())
        try await control.withConnection(logger: logger) { connection in
            try await connection.execute("""
                INSERT INTO jobs (id, kind, status, params, root_job_id, queued_at, started_at, finished_at, owner, attempt, error_code)
                VALUES (\(first), 'instance_replace', 'FAILED', '{}', \(first), now(), now(), now(), 'r1', 1, 'ABORTED')
                """, logger: logger)
            try await connection.execute("""
                INSERT INTO jobs (id, kind, status, params, root_job_id, rerun_of, queued_at, started_at, owner, attempt)
                VALUES (\(second), 'instance_replace', 'RUNNING', '{}', \(first), \(first), now(), now(), 'r1', 2)
                """, logger: logger)

            // The failed attempt cannot write; another replica cannot write for the running one.
            #expect(try await !JobLifecycle.saveTenantResult(TenantResult(tenant: "a", status: .running), job: first, owner: "r1", on: connection, logger: logger))
            #expect(try await !JobLifecycle.saveTenantResult(TenantResult(tenant: "a", status: .running), job: second, owner: "r2", on: connection, logger: logger))
            #expect(try await JobLifecycle.tenantResults(root: first, on: connection, logger: logger).isEmpty)

            // Started: the database's clock, no end yet.
            #expect(try await JobLifecycle.saveTenantResult(TenantResult(tenant: "a", status: .running), job: second, owner: "r1", on: connection, logger: logger))
            let started = try #require(try await JobLifecycle.tenantResults(root: first, on: connection, logger: logger).first)
            #expect(started.status == .running && started.startedAt != nil && started.finishedAt == nil && started.jobID == second)
            try await Task.sleep(for: .milliseconds(20))
            // Finished: keeps its start, gets its end.
            #expect(try await JobLifecycle.saveTenantResult(TenantResult(tenant: "a", status: .succeeded), job: second, owner: "r1", on: connection, logger: logger))
            let finished = try #require(try await JobLifecycle.tenantResults(root: first, on: connection, logger: logger).first)
            #expect(finished.status == .succeeded && finished.startedAt == started.startedAt && finished.jobID == second)
            #expect(try #require(finished.finishedAt) > started.startedAt!)
            // A SUCCEEDED tenant stays so (the write still reports the ownership it found).
            #expect(try await JobLifecycle.saveTenantResult(TenantResult(tenant: "a", status: .failed, error: "late"), job: second, owner: "r1", on: connection, logger: logger))
            let kept = try #require(try await JobLifecycle.tenantResults(root: first, on: connection, logger: logger).first)
            #expect(kept == finished)
            // A failure keeps its message.
            #expect(try await JobLifecycle.saveTenantResult(TenantResult(tenant: "b", status: .failed, error: "no"), job: second, owner: "r1", on: connection, logger: logger))
            let failed = try await JobLifecycle.tenantResults(root: first, on: connection, logger: logger).last
            #expect(failed?.tenant == "b" && failed?.status == .failed && failed?.error == "no" && failed?.startedAt != nil && failed?.finishedAt != nil)
        }
    }
}
