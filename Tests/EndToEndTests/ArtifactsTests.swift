import ControlDatabase
import FerryClient
import FerryProtocol
import FerryRPC
import FerryTestSupport
import Foundation
import PostgresNIO
import Testing

/// `ferry.v1.Artifacts` end to end: a real `ferryd-test` replica with a real artifact
/// directory, and artifacts made by hand (rows in job_artifacts, folders on disk), so every
/// state can be set up: expired, in use by imports, of another store.
@Suite(.serialized) struct ArtifactsTests {
    /// Starts one replica on `store`, with an admin client and a viewer client, once the
    /// replica's first retention sweep (which runs at start-up) is over: the next is an hour
    /// away, so the expired artifacts the test makes stay until the test deletes them.
    private func withServer(_ store: TestArtifactStore, _ body: (Replicas, FerryConnection, FerryConnection) async throws -> Void) async throws {
        let viewerToken = TokenStore.generateToken()
        let tokensFile = store.directory + "-viewer.tokens"
        try (TokenStore.line(token: viewerToken, principal: Principal(name: "watcher", role: .viewer)) + "\n").write(toFile: tokensFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: tokensFile) }
        try await Replicas.with(count: 1, instances: 0, arguments: ["--artifact-dir", store.directory, "--tokens-file", tokensFile]) { replicas in
            try await waitForFirstSweep(replicas.control)
            let admin = try await replicas.client(0)
            defer { admin.close() }
            let server = replicas.servers[0]
            let viewer = try await FerryConnection.connect(FerryClientConfiguration(host: server.host, port: server.port, trustRootsFile: replicas.caFile, token: viewerToken))
            defer { viewer.close() }
            try await body(replicas, admin, viewer)
        }
    }

    @Test func viewersListAndGetAdminsDeleteFilesThenRow() async throws {
        let store = try TestArtifactStore.make()
        defer { store.remove() }
        try await withServer(store) { replicas, admin, viewer in
            let control = replicas.control
            let export = try await ControlRows.job(control, kind: "export", status: "SUCCEEDED")
            let id = try await ControlRows.artifact(control, job: export, storeID: store.storeID, instance: "i0", tenant: "billing", tables: 3, rows: 42)
            try store.folder(id, manifestJob: export)

            let listed = try await viewer.unary(FerryMethods.listArtifacts, ListArtifactsRequest())
            #expect(listed.artifacts.map(\.id) == [id.lowercased])
            let got = try await viewer.unary(FerryMethods.getArtifact, .with { $0.artifactID = id.uuidString })
            #expect(got.id == id.lowercased && got.jobID == export.lowercased)
            #expect(got.sourceInstance == "i0" && got.sourceTenant == "billing" && got.tables == 3 && got.rows == 42)
            #expect(got.sizeBytes == 1234 && got.sha256 == String(repeating: "ab", count: 32) && got.formatVersion == 1)
            #expect(got.expiresAt.date.timeIntervalSince(got.createdAt.date) > 6 * 86_400)

            // A viewer may not delete; nothing is touched.
            let denied = await statusCode { _ = try await viewer.unary(FerryMethods.deleteArtifact, .with { $0.artifactID = id.lowercased }) }
            #expect(denied == .permissionDenied)
            #expect(store.exists(id))
            #expect(try await ControlRows.artifactCount(control) == 1)

            let deleted = try await admin.unary(FerryMethods.deleteArtifact, .with { $0.artifactID = id.lowercased })
            #expect(deleted.id == id.lowercased && deleted.rows == 42)
            #expect(!store.exists(id), "the folder is deleted")
            #expect(try await ControlRows.artifactCount(control) == 0, "the row is deleted")
            #expect(await statusCode { _ = try await viewer.unary(FerryMethods.getArtifact, .with { $0.artifactID = id.lowercased }) } == .notFound)
            #expect(await statusCode { _ = try await admin.unary(FerryMethods.deleteArtifact, .with { $0.artifactID = id.lowercased }) } == .notFound)
            // The export job itself is untouched.
            #expect(try await scalar(control, "SELECT count(*)::int FROM jobs WHERE id = '\(export.lowercased)'") == 1)
        }
    }

    @Test func listFiltersHidesExpiredAndPages() async throws {
        let store = try TestArtifactStore.make()
        defer { store.remove() }
        try await withServer(store) { replicas, _, viewer in
            let control = replicas.control
            let export = try await ControlRows.job(control, kind: "export", status: "SUCCEEDED")
            // Seven artifacts, one minute apart (newest last), two of them expired.
            var made: [(id: UUID, instance: String, tenant: String, expired: Bool)] = []
            for k in 0..<7 {
                let instance = k % 2 == 0 ? "i0" : "i1"
                let tenant = k < 4 ? "alpha" : "beta"
                let expired = k == 1 || k == 4
                let id = try await ControlRows.artifact(control, job: export, storeID: store.storeID, instance: instance, tenant: tenant,
                                                        createdAgo: "\(10 - k) minutes", expiresIn: expired ? "-1 minute" : "7 days")
                made.append((id, instance, tenant, expired))
            }
            let newestFirst = made.reversed()
            func list(_ request: ListArtifactsRequest) async throws -> [String] {
                try await viewer.unary(FerryMethods.listArtifacts, request).artifacts.map(\.id)
            }
            #expect(try await list(.init()) == newestFirst.filter { !$0.expired }.map(\.id.lowercased))
            #expect(try await list(.with { $0.includeExpired = true }) == newestFirst.map(\.id.lowercased))
            #expect(try await list(.with { $0.sourceInstance = "i1" }) == newestFirst.filter { !$0.expired && $0.instance == "i1" }.map(\.id.lowercased))
            #expect(try await list(.with { $0.sourceTenant = "beta"; $0.includeExpired = true }) == newestFirst.filter { $0.tenant == "beta" }.map(\.id.lowercased))
            #expect(try await list(.with { $0.sourceInstance = "i0"; $0.sourceTenant = "alpha" }) == newestFirst.filter { !$0.expired && $0.instance == "i0" && $0.tenant == "alpha" }.map(\.id.lowercased))
            #expect(try await list(.with { $0.sourceInstance = "i9" }).isEmpty)

            // Pages of two, expired included: every artifact once, in order, then no token.
            var pages: [[String]] = []
            var token = ""
            repeat {
                let page = try await viewer.unary(FerryMethods.listArtifacts, .with { $0.includeExpired = true; $0.pageSize = 2; $0.pageToken = token })
                pages.append(page.artifacts.map(\.id))
                token = page.nextPageToken
            } while !token.isEmpty && pages.count < 10
            #expect(pages.map(\.count) == [2, 2, 2, 1])
            #expect(pages.flatMap { $0 } == newestFirst.map(\.id.lowercased))
            // A page of exactly the rest has no token.
            let all = try await viewer.unary(FerryMethods.listArtifacts, .with { $0.includeExpired = true; $0.pageSize = 7 })
            #expect(all.artifacts.count == 7 && all.nextPageToken.isEmpty)
            // More than 500 is served as 500.
            #expect(try await list(.with { $0.pageSize = 100_000 }).count == 5)

            var negative = ListArtifactsRequest()
            negative.pageSize = -1
            var badTokens = [ListArtifactsRequest(), ListArtifactsRequest()]
            badTokens[0].pageToken = "not a token"
            badTokens[1].pageToken = "Zm9vOmJhcg"
            var badInstance = ListArtifactsRequest()
            badInstance.sourceInstance = "Not An Id"
            var badTenant = ListArtifactsRequest()
            badTenant.sourceTenant = "pg_catalog"
            for bad in badTokens + [negative, badInstance, badTenant] {
                let code = await statusCode { _ = try await viewer.unary(FerryMethods.listArtifacts, bad) }
                #expect(code == .invalidArgument, "\(bad)")
            }
        }
    }

    @Test func malformedAndUnknownIDs() async throws {
        let store = try TestArtifactStore.make()
        defer { store.remove() }
        try await withServer(store) { _, admin, viewer in
            for bad in ["", "nope", "12345678-1234-1234-1234-12345678901"] {
                #expect(await statusCode { _ = try await viewer.unary(FerryMethods.getArtifact, .with { $0.artifactID = bad }) } == .invalidArgument)
                #expect(await statusCode { _ = try await admin.unary(FerryMethods.deleteArtifact, .with { $0.artifactID = bad }) } == .invalidArgument)
            }
            let unknown = UUID().uuidString
            do {
                _ = try await viewer.unary(FerryMethods.getArtifact, .with { $0.artifactID = unknown })
                Issue.record("an unknown artifact was found")
            } catch let error as RPCError {
                #expect(error.code == .notFound && error.message.contains(unknown.lowercased()), "\(error)")
            }
            #expect(await statusCode { _ = try await admin.unary(FerryMethods.deleteArtifact, .with { $0.artifactID = unknown }) } == .notFound)
        }
    }

    @Test func deleteIsRefusedWhileAQueuedOrRunningImportReadsIt() async throws {
        let store = try TestArtifactStore.make()
        defer { store.remove() }
        try await withServer(store) { replicas, admin, _ in
            let control = replicas.control
            let export = try await ControlRows.job(control, kind: "export", status: "SUCCEEDED")
            let id = try await ControlRows.artifact(control, job: export, storeID: store.storeID)
            try store.folder(id, manifestJob: export)
            // The imports name it as the client wrote it (upper case here); finished ones do not count.
            let queued = try await ControlRows.job(control, kind: "import", status: "QUEUED", params: .importing(id.uuidString))
            let running = try await ControlRows.job(control, kind: "import", status: "RUNNING", params: .importing(id.uuidString))
            _ = try await ControlRows.job(control, kind: "import", status: "FAILED", params: .importing(id.lowercased))
            _ = try await ControlRows.job(control, kind: "import", status: "QUEUED", params: .importing(UUID().lowercased))

            func refusal() async throws -> RPCError? {
                do {
                    _ = try await admin.unary(FerryMethods.deleteArtifact, .with { $0.artifactID = id.lowercased })
                    return nil
                } catch let error as RPCError {
                    return error
                }
            }
            let both = try #require(try await refusal())
            #expect(both.code == .failedPrecondition, "\(both)")
            #expect(both.details?["importJobIds"] == .array([.string(queued.lowercased), .string(running.lowercased)]) ||
                    both.details?["importJobIds"] == .array([.string(running.lowercased), .string(queued.lowercased)]), "\(both)")
            #expect(store.exists(id), "nothing is deleted")
            #expect(try await ControlRows.artifactCount(control) == 1, "nothing is deleted")
            // Refused too while only the running one is left.
            try await ControlRows.setStatus(control, queued, "CANCELLED")
            let one = try #require(try await refusal())
            #expect(one.code == .failedPrecondition && one.details?["importJobIds"] == .array([.string(running.lowercased)]), "\(one)")
            #expect(store.exists(id))

            try await ControlRows.setStatus(control, running, "SUCCEEDED")
            #expect(try await refusal() == nil)
            #expect(!store.exists(id))
            #expect(try await ControlRows.artifactCount(control) == 0)
        }
    }

    @Test func deleteRefusesAnArtifactOfAnotherStoreAndTouchesNothing() async throws {
        let store = try TestArtifactStore.make()
        defer { store.remove() }
        try await withServer(store) { replicas, admin, _ in
            let control = replicas.control
            let export = try await ControlRows.job(control, kind: "export", status: "SUCCEEDED")
            let foreign = UUID().uuidString.lowercased()
            let id = try await ControlRows.artifact(control, job: export, storeID: foreign)
            try store.folder(id, manifestJob: export)
            do {
                _ = try await admin.unary(FerryMethods.deleteArtifact, .with { $0.artifactID = id.lowercased })
                Issue.record("an artifact of another store was deleted")
            } catch let error as RPCError {
                #expect(error.code == .failedPrecondition && error.message.contains(foreign) && error.message.contains(store.storeID), "\(error)")
            }
            #expect(store.exists(id))
            #expect(try await ControlRows.artifactCount(control) == 1)
            // Its expiry is untouched too (the refusal comes before anything is written).
            #expect(try await scalar(control, "SELECT count(*)::int FROM job_artifacts WHERE expires_at > now() + interval '1 day'") == 1)
        }
    }

    @Test func startupRefusesAnArtifactDirectoryItCannotUseAndBadRetentionSettings() async throws {
        let control = try await TestPostgres.shared.freshDatabase("artifactflags")
        let scratch = FileManager.default.temporaryDirectory.path + "/ferry-badstore-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let file = scratch + "/plain-file"
        try "x".write(toFile: file, atomically: true, encoding: .utf8)
        let damaged = scratch + "/damaged"
        try FileManager.default.createDirectory(atPath: damaged, withIntermediateDirectories: true)
        try "not a uuid\n".write(toFile: damaged + "/.ferry-store-id", atomically: true, encoding: .utf8)

        let cases: [(arguments: [String], environment: [String: String], expected: String)] = [
            (["--artifact-dir", file], [:], "cannot open the artifact store (--artifact-dir \(file)): the artifact directory \(file) exists and is not a directory"),
            (["--artifact-dir", file + "/store"], [:], "cannot open the artifact store (--artifact-dir \(file)/store): cannot create the artifact directory \(file)/store"),
            ([], ["FERRY_ARTIFACT_DIR": damaged], "the store id file \(damaged)/.ferry-store-id does not hold a UUID"),
            (["--artifact-ttl", "0"], [:], "invalid --artifact-ttl: 0 is not a whole number of seconds from 1 to 315360000"),
            ([], ["FERRY_EVENT_RETENTION": "soon"], "invalid FERRY_EVENT_RETENTION: 'soon' is not a whole number of seconds"),
            (["--retention-interval", "604801"], [:], "invalid --retention-interval: 604801 is not a whole number of seconds from 1 to 604800"),
            (["--tenant-width", "65"], [:], "invalid --tenant-width: 65 is more than 64"),
            ([], ["FERRY_TENANT_WIDTH": "0"], "invalid FERRY_TENANT_WIDTH: '0' is not a whole number ≥ 1"),
        ]
        for (arguments, environment, expected) in cases {
            let result = try await RunningProcess.run([FerryBinaries.ferryd, "serve", "--database-url", control.secretURLString, "--listen", "127.0.0.1:0",
                                                       "--ops-address", "127.0.0.1:0"] + arguments, environment: environment, timeout: .seconds(60))
            #expect(result.status == 1, "\(arguments) \(environment): \(result.output)")
            #expect(result.output.contains("ferryd: error: ") && result.output.contains(expected), "\(arguments) \(environment): \(result.output)")
        }
    }
}

// MARK: Shared by the artifact and retention tests

/// A fresh artifact directory whose store id the test writes itself (ferryd reads it), and
/// folders made by hand.
struct TestArtifactStore {
    let directory: String
    let storeID: String

    static func make() throws -> TestArtifactStore {
        let directory = FileManager.default.temporaryDirectory.path + "/ferry-store-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory + "/.staging", withIntermediateDirectories: true)
        let id = UUID().uuidString.lowercased()
        try (id + "\n").write(toFile: directory + "/.ferry-store-id", atomically: true, encoding: .utf8)
        return TestArtifactStore(directory: directory, storeID: id)
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }

    /// A published folder `<dir>/<id>` holding a data file and, with `manifestJob`, a
    /// `manifest.json` naming that job. `modifiedAgo` backdates the folder.
    @discardableResult
    func folder(_ id: UUID, manifestJob: UUID?, modifiedAgo: TimeInterval = 0) throws -> String {
        try folder(named: id.lowercased, manifestJob: manifestJob, modifiedAgo: modifiedAgo)
    }

    @discardableResult
    func folder(named name: String, under parent: String? = nil, manifestJob: UUID?, modifiedAgo: TimeInterval = 0) throws -> String {
        let path = (parent.map { directory + "/" + $0 } ?? directory) + "/" + name
        try FileManager.default.createDirectory(atPath: path + "/data", withIntermediateDirectories: true)
        try Data(repeating: 7, count: 1000).write(to: URL(fileURLWithPath: path + "/data/t.copy.zst"))
        if let manifestJob {
            try #"{"format":"ferry-archive","formatVersion":1,"jobId":"\#(manifestJob.lowercased)"}"#.write(toFile: path + "/manifest.json", atomically: true, encoding: .utf8)
        }
        if modifiedAgo > 0 {
            try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-modifiedAgo)], ofItemAtPath: path)
        }
        return path
    }

    func exists(_ id: UUID) -> Bool { exists(named: id.lowercased) }
    func exists(named name: String, under parent: String? = nil) -> Bool {
        FileManager.default.fileExists(atPath: (parent.map { directory + "/" + $0 } ?? directory) + "/" + name)
    }
}

extension UUID {
    var lowercased: String { uuidString.lowercased() }
}

extension JobParams {
    static func importing(_ artifactID: String) -> JobParams {
        .with { $0.import = .with { $0.artifactID = artifactID; $0.targetInstance = "i0"; $0.targetTenant = "restored" } }
    }

    static let exporting = JobParams.with { $0.export = .with { $0.sourceInstance = "i0"; $0.sourceTenant = "billing" } }
}

/// Rows written straight into a control database, in any state a test needs. Times are
/// PostgreSQL intervals relative to now(), e.g. "40 days".
enum ControlRows {
    @discardableResult
    static func job(_ url: DatabaseURL, id: UUID = UUID(), kind: String, status: String, params: JobParams = .exporting,
                    createdAgo: String = "1 minute", finishedAgo: String = "0 seconds") async throws -> UUID {
        let text = try params.jsonValue().jsonText
        let terminal = ["SUCCEEDED", "FAILED", "CANCELLED"].contains(status)
        _ = try await url.withConnection(logger: logger) { connection in
            try await connection.execute("""
                INSERT INTO jobs (id, kind, status, params, root_job_id, owner, heartbeat_at, created_at, queued_at, started_at, finished_at, updated_at)
                VALUES (\(id), \(kind), \(status), \(text)::jsonb, \(id), CASE WHEN \(status) = 'RUNNING' THEN 'test:1:abcd' END,
                        CASE WHEN \(status) = 'RUNNING' THEN now() END,
                        now() - \(createdAgo)::interval, now() - \(createdAgo)::interval,
                        CASE WHEN \(status) <> 'QUEUED' THEN now() - \(createdAgo)::interval END,
                        CASE WHEN \(terminal) THEN now() - \(finishedAgo)::interval END, now())
                """, logger: logger)
        }
        return id
    }

    static func setStatus(_ url: DatabaseURL, _ id: UUID, _ status: String) async throws {
        _ = try await url.withConnection(logger: logger) { connection in
            try await connection.execute("""
                UPDATE jobs SET status = \(status),
                       finished_at = CASE WHEN \(status) IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN now() END
                 WHERE id = \(id)
                """, logger: logger)
        }
    }

    /// `count` events (PROGRESS, then a last STATUS), `ago` old; sets the job's last_seq.
    static func events(_ url: DatabaseURL, job: UUID, count: Int, ago: String) async throws {
        _ = try await url.withConnection(logger: logger) { connection in
            try await connection.execute("""
                INSERT INTO job_events (job_id, seq, type, payload, created_at)
                SELECT \(job), g, CASE WHEN g = \(count) THEN 'STATUS' ELSE 'PROGRESS' END, jsonb_build_object('n', g), now() - \(ago)::interval
                  FROM generate_series(1, \(count)) g
                """, logger: logger)
            try await connection.execute("UPDATE jobs SET last_seq = \(Int64(count)) WHERE id = \(job)", logger: logger)
        }
    }

    @discardableResult
    static func artifact(_ url: DatabaseURL, id: UUID = UUID(), job: UUID, storeID: String, path: String? = nil, instance: String = "i0", tenant: String = "billing",
                         tables: Int64 = 2, rows: Int64 = 10, createdAgo: String = "1 minute", expiresIn: String = "7 days") async throws -> UUID {
        _ = try await url.withConnection(logger: logger) { connection in
            try await connection.execute("""
                INSERT INTO job_artifacts (id, job_id, store_id, path, source_instance, source_tenant, size_bytes, sha256, tables, rows, format_version, created_at, expires_at)
                VALUES (\(id), \(job), \(storeID), \(path ?? id.lowercased), \(instance), \(tenant), 1234, \(String(repeating: "ab", count: 32)),
                        \(tables), \(rows), 1, now() - \(createdAgo)::interval, now() + \(expiresIn)::interval)
                """, logger: logger)
        }
        return id
    }

    static func artifactCount(_ url: DatabaseURL) async throws -> Int {
        try await scalar(url, "SELECT count(*)::int FROM job_artifacts")
    }
}

/// Waits until a serving replica's first retention sweep (at start-up) has finished.
func waitForFirstSweep(_ control: DatabaseURL) async throws {
    let deadline = ContinuousClock.now + .seconds(60)
    while ContinuousClock.now < deadline {
        if try await scalar(control, "SELECT count(*)::int FROM leases WHERE name = 'retention' AND expires_at <= now()") == 1 { return }
        try await Task.sleep(for: .milliseconds(100))
    }
    Issue.record("the replica's first retention sweep did not finish within 60 s")
}
