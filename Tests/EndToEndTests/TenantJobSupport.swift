import ControlDatabase
import FerryClient
import FerryProtocol
import FerryTestSupport
import Foundation
import PostgresNIO
import Testing

/// What the suites of the real data-moving kinds (clone, instance_replace) share: scripts and
/// single values on an instance, the replica running a job, a rerun after the leader failed a
/// job, the second cluster. A suite gets them by conforming.
protocol TenantJobTest {}

extension TenantJobTest {
    /// Runs a script on an instance with psql (several statements, dollar quotes).
    func run(_ url: DatabaseURL, _ sql: String) async throws {
        try await TenantInspection.runScript(url, sql)
    }

    /// The one value `sql` returns on `url`.
    func scalar<T: PostgresDecodable & Sendable>(_ url: DatabaseURL, _ sql: String, as type: T.Type = T.self) async throws -> T {
        do {
            return try await url.withConnection(logger: logger) { try await $0.execute(PostgresQuery(unsafeSQL: sql), logger: logger).first!.decode(T.self) }
        } catch {
            throw TenantInspection.DumpError(message: "\(sql): \(String(reflecting: error))")
        }
    }

    /// The index of the replica running `job`.
    func runningReplica(of job: Job, _ replicas: Replicas) async throws -> Int {
        try await ownerIndex(job, replicas)
    }

    /// Waits until the leader fails `job` (retryably: its replica is gone or frozen), reruns
    /// it, and returns the rerun once it ended.
    func rerunAfterTheLeaderFails(_ job: Job, _ client: FerryConnection) async throws -> Job {
        let failed = try await client.waitFor(job.id, timeout: .seconds(60)) { $0.status.isTerminal }
        #expect(failed.status == .failed && failed.error.retryable, "\(failed)")
        let rerun = try await client.rerun(job.id)
        return try await client.waitFor(rerun.id, timeout: .seconds(120)) { $0.status.isTerminal }
    }

    /// Registers a database of the second cluster as instance `far`.
    func registerFarInstance(_ replicas: Replicas) async throws -> DatabaseURL {
        let far = try await TestPostgres.second.freshDatabase("far")
        let client = try await replicas.client(0)
        defer { client.close() }
        _ = try await client.unary(FerryMethods.putInstance, .with { $0.id = "far"; $0.dsn = far.secretURLString })
        return far
    }
}
