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

/// The tenant the hold-and-strike tests copy (a fault strikes while `slow` is held before its
/// checksum by the `FERRY_TEST_CLONE_BEFORE_VERIFY` hook and the others are verified): four
/// tables, a foreign key and an identity column, so the constraints step has work.
enum HeldTenant {
    static let script = """
        CREATE SCHEMA app;
        CREATE TABLE app.slow (id int PRIMARY KEY, v text);
        CREATE TABLE app.a (id int PRIMARY KEY, v text);
        CREATE TABLE app.b (id int PRIMARY KEY, a int REFERENCES app.a);
        CREATE TABLE app.c (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v numeric);
        INSERT INTO app.slow SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
        INSERT INTO app.a SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 40000) g;
        INSERT INTO app.b SELECT g, g FROM generate_series(1, 40000) g;
        INSERT INTO app.c (v) SELECT g / 7.0 FROM generate_series(1, 40000) g;
        """

    /// The tables verified before the tests strike.
    static let verifiedFirst = ["a", "b", "c"]

    /// The replica environment that holds `slow` for a minute before its checksum, in attempt 1.
    static let hold = CloneTests.kinds.merging(["FERRY_TEST_CLONE_BEFORE_VERIFY": "slow@1:SELECT pg_sleep(60)"]) { $1 }

    /// Waits until exactly the tables of `verifiedFirst` are VERIFIED in the control database.
    static func waitForVerifiedFirst(_ replicas: Replicas) async throws {
        var verified: [String] = []
        try await waitUntil("\(verifiedFirst) verified while slow is held") {
            verified = try await replicas.query {
                try await $0.execute("SELECT table_name FROM job_tables WHERE status = 'VERIFIED' ORDER BY 1", logger: logger).map { try $0.decode(String.self) }
            }
            return verified == verifiedFirst
        }
    }
}

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
