import ControlDatabase
import FerryClient
import FerryProtocol
import FerryRPC
import FerryTestSupport
import Foundation
import Logging
import PostgresNIO
import SwiftProtobuf
import Testing

/// Several real `ferryd-test` replicas on one control database (directly, or through a
/// transaction-pooling PgBouncer), with registered instances and an operator/admin token.
final class Replicas: Sendable {
    let control: DatabaseURL
    let servers: [ServingFerryd]
    let token: String
    let caFile: String
    let instances: [String: DatabaseURL]
    let bouncer: PgBouncer?
    let files: String
    /// How replica `i` was started: its arguments and environment.
    let launches: [(arguments: [String], environment: [String: String])]

    private init(control: DatabaseURL, servers: [ServingFerryd], token: String, caFile: String, instances: [String: DatabaseURL], bouncer: PgBouncer?, files: String,
                 launches: [(arguments: [String], environment: [String: String])]) {
        self.control = control
        self.servers = servers
        self.token = token
        self.caFile = caFile
        self.instances = instances
        self.bouncer = bouncer
        self.files = files
        self.launches = launches
    }

    /// Starts another replica the way replica `index` was started, plus `extra` arguments
    /// (e.g. `--listen` on the port a stopped replica had). The caller stops it.
    func startReplica(like index: Int, extra: [String] = []) async throws -> ServingFerryd {
        let launch = launches[index % launches.count]
        return try await ServingFerryd.start(launch.arguments + extra, environment: launch.environment, binary: FerryBinaries.ferrydTest)
    }

    /// Starts replicas, runs `body`, and stops them whatever happens: no replica outlives
    /// the test that started it.
    static func with<T: Sendable>(
        count: Int = 3, throughPgBouncer: Bool = false, instances: Int = 2,
        jobMs: Int = 300, jobSteps: Int = 5, arguments: [String] = [], environments: [[String: String]] = [],
        _ body: (Replicas) async throws -> T
    ) async throws -> T {
        let replicas = try await start(count: count, throughPgBouncer: throughPgBouncer, instances: instances, jobMs: jobMs, jobSteps: jobSteps,
                                       arguments: arguments, environments: environments)
        do {
            let result = try await body(replicas)
            _ = await replicas.stop()
            return result
        } catch {
            _ = await replicas.stop()
            throw error
        }
    }

    /// Starts `count` replicas at once (they migrate together) and registers `instances`
    /// fresh databases as instances `i0`, `i1`, …. Callers stop them (see `with`).
    ///
    /// The control database is a fresh database of the shared test cluster, or `control` (a
    /// cluster of the test's own, which it may restart without disturbing other suites).
    static func start(
        count: Int = 3, throughPgBouncer: Bool = false, instances instanceCount: Int = 2, control given: DatabaseURL? = nil,
        jobMs: Int = 300, jobSteps: Int = 5, arguments: [String] = [], environments: [[String: String]] = []
    ) async throws -> Replicas {
        let control: DatabaseURL
        if let given { control = given } else { control = try await TestPostgres.shared.freshDatabase("engine") }
        var bouncer: PgBouncer?
        var serverURL = control
        var extra = arguments
        if throughPgBouncer {
            let started = try await PgBouncer.start(in: try await TestPostgres.shared.server(), poolMode: "transaction", poolSize: 20)
            bouncer = started
            serverURL = try started.url(database: control.database)
            // LISTEN cannot work through a transaction pooler: these replicas poll.
            extra += ["--listen-database-url", "none"]
        }
        let files = FileManager.default.temporaryDirectory.path + "/ferry-engine-\(UUID().uuidString.prefix(8))"
        let (certificate, key) = try SelfSignedCertificate.generate().write(to: files)
        let token = TokenStore.generateToken()
        let environment = [
            "FERRY_DATABASE_URL": serverURL.secretURLString,
            "FERRY_TOKENS": TokenStore.line(token: token, principal: Principal(name: "tester", role: .admin)),
            "FERRY_TEST_JOB_MS": String(jobMs),
            "FERRY_TEST_JOB_STEPS": String(jobSteps),
            "FERRY_LOG_LEVEL": "notice",
        ]
        let arguments = ["--tls-cert", certificate, "--tls-key", key,
                         "--heartbeat-interval", "0.3", "--heartbeat-timeout", "2", "--leader-lease", "2"] + extra
        // Replica `index` also gets `environments[index]`, when given.
        let launches = (0..<count).map { index in
            (arguments: arguments, environment: environment.merging(index < environments.count ? environments[index] : [:]) { $1 })
        }
        // Every start is awaited, so that a failure leaves no replica running.
        let started = await withTaskGroup(of: (Int, Result<ServingFerryd, any Error>).self) { group in
            for index in 0..<count {
                let environment = launches[index].environment
                group.addTask {
                    do {
                        return (index, .success(try await ServingFerryd.start(arguments, environment: environment, binary: FerryBinaries.ferrydTest)))
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            // In index order, so `servers[i]` is the replica started with `environments[i]`.
            return await group.reduce(into: []) { $0.append($1) }.sorted { $0.0 < $1.0 }.map(\.1)
        }
        let servers = started.compactMap { try? $0.get() }
        if servers.count < count {
            for server in servers { _ = await server.stop() }
            await bouncer?.stop()
            try? FileManager.default.removeItem(atPath: files)
            for result in started { _ = try result.get() }
        }
        var instances: [String: DatabaseURL] = [:]
        for index in 0..<instanceCount {
            instances["i\(index)"] = try await TestPostgres.shared.freshDatabase("inst")
        }
        let replicas = Replicas(control: control, servers: servers, token: token, caFile: certificate, instances: instances, bouncer: bouncer, files: files, launches: launches)
        do {
            let client = try await replicas.client(0)
            defer { client.close() }
            for (id, url) in instances.sorted(by: { $0.key < $1.key }) {
                _ = try await client.unary(FerryMethods.putInstance, .with { $0.id = id; $0.dsn = url.secretURLString })
            }
        } catch {
            _ = await replicas.stop()
            throw error
        }
        return replicas
    }

    func client(_ index: Int) async throws -> FerryConnection {
        let server = servers[index % servers.count]
        do {
            return try await FerryConnection.connect(FerryClientConfiguration(host: server.host, port: server.port, trustRootsFile: caFile, token: token))
        } catch {
            // A replica that died says why in its output.
            if !server.process.child.isRunning {
                Issue.record("replica \(index % servers.count) is not running: \(server.process.output.suffix(4000))")
            }
            throw error
        }
    }

    /// Stops every replica (SIGTERM; those already killed are just reaped) and PgBouncer.
    func stop() async -> [ProcessResult] {
        var results: [ProcessResult] = []
        for server in servers { results.append(await server.stop()) }
        // FERRY_TEST_REPLICA_OUTPUT=1 prints what the replicas logged, for debugging a test.
        if ProcessInfo.processInfo.environment["FERRY_TEST_REPLICA_OUTPUT"] == "1" {
            for (index, result) in results.enumerated() { print("--- replica \(index)\n\(result.output)") }
        }
        await bouncer?.stop()
        try? FileManager.default.removeItem(atPath: files)
        return results
    }

    /// The replica whose pid appears in `owner` ("host:pid:tag").
    func index(ofOwner owner: String) -> Int? {
        let parts = owner.split(separator: ":")
        guard parts.count >= 2, let pid = Int32(parts[parts.count - 2]) else { return nil }
        return servers.firstIndex { $0.process.child.pid == pid }
    }

    func query<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await control.withConnection(logger: logger, body)
    }
}

/// A StartJob request for a test clone on one instance.
func cloneRequest(instance: String, source: String = "src", target: String, queue: Bool = false, requestID: String? = nil) -> StartJobRequest {
    var request = StartJobRequest()
    request.clone = .clone(from: instance, source, to: instance, target)
    request.queue = queue
    request.requestID = requestID ?? ""
    return request
}

extension FerryConnection {
    func job(_ id: String) async throws -> Job { try await getJob(id) }

    func rerun(_ id: String, requestID: String? = nil) async throws -> Job { try await rerunJob(id, requestID: requestID) }

    func cancel(_ id: String) async throws -> Job { try await cancelJob(id) }

    /// Polls GetJob until `condition` holds (or fails the test after `timeout`).
    func waitFor(_ id: String, timeout: Duration = .seconds(60), sourceLocation: SourceLocation = #_sourceLocation, _ condition: (Job) -> Bool) async throws -> Job {
        let deadline = ContinuousClock.now + timeout
        var job = try await self.job(id)
        while !condition(job) {
            guard ContinuousClock.now < deadline else {
                Issue.record("job \(id) did not reach the expected state in \(timeout): \(job)", sourceLocation: sourceLocation)
                return job
            }
            try await Task.sleep(for: .milliseconds(100))
            job = try await self.job(id)
        }
        return job
    }
}

/// The status code a call ends with (OK when it succeeds).
func statusCode(_ call: () async throws -> Void) async -> StatusCode {
    do {
        try await call()
        return .ok
    } catch let error as RPCError {
        return error.code
    } catch {
        return .unknown
    }
}
